"""ConceptAttention for MM-DiTs (diffusers SD3 and FLUX joint blocks, so also the ShapeWorld MM-DiT).

Concept words are encoded by the model's own text encoder, embedded by its ``context_embedder``, and carried
through the *text-stream* weights of every joint block as an extra token stream:

- in each block the concept tokens are normalised with the block's ``norm1_context`` (same timestep
  embedding as the text), projected with the attention's ``add_q/k/v`` projections, and attend to
  [concepts + image] keys; their output goes through ``to_add_out``, then the block's gated residual and
  ``ff_context`` update, exactly as the text stream;
- image and text tokens never attend to the concept tokens, so the image generation is untouched: the
  original processor computes the real attention, and the concept stream is computed beside it.

Concept maps (per block, then averaged over the chosen blocks and timesteps, then a softmax over concepts):

- ``output``: dot products between the concept attention outputs and the image attention outputs (both after
  their output projections), the ConceptAttention method;
- ``cross``:  image queries against concept keys (scaled dot products, averaged over heads), the
  cross-attention baseline.

Implemented with attention processors installed through ``set_attn_processor`` (each wraps the model's own
processor and calls it first), plus forward hooks on the blocks for the concept stream's norm and residual
update. State is held by the processors, so no extra ``joint_attention_kwargs`` have to reach them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from probekit.errors import ProbekitError
from probekit.extractors.base import Extractor

MODES = ("output", "cross")


class _StopAfterLastBlock(Exception):
    pass


class ConceptRun:
    """The concept stream of one forward pass and the maps it produced."""

    def __init__(self, concept_tokens: torch.Tensor, record_layers: set[int], last_layer: int):
        self.states = concept_tokens  # (B, C, dim)
        self.record_layers, self.last_layer = record_layers, last_layer
        self.normed: torch.Tensor | None = None
        self.gates: tuple[torch.Tensor, ...] | None = None
        self.attn_out: torch.Tensor | None = None
        self.maps: dict[str, dict[int, torch.Tensor]] = {m: {} for m in MODES}


class _Holder:
    run: ConceptRun | None = None


class ConceptAttnProcessor:
    """Calls the model's own processor, then (during a concept run) the concept tokens' attention."""

    def __init__(self, inner, holder: _Holder, layer: int):
        self.inner, self.holder, self.layer = inner, holder, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 **kwargs):
        extra = {"image_rotary_emb": image_rotary_emb} if image_rotary_emb is not None else {}
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **extra, **kwargs)
        run = self.holder.run
        if run is not None and run.normed is not None and self.layer <= run.last_layer:
            image_out = out[0] if isinstance(out, tuple) else out
            _concept_attention(run, self.layer, attn, hidden_states, image_out, image_rotary_emb)
        return out


def _heads(attn) -> tuple[int, int]:
    heads = int(attn.heads)
    return heads, attn.to_q.out_features // heads


def _split(x: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, heads, dim).transpose(1, 2)  # (B, H, S, D)


def _qkv(attn, x, projections: tuple[str, str, str], norms: tuple[str, str]) -> tuple[torch.Tensor, ...]:
    """Multi-head q, k, v of tokens ``x`` through the named projections, with the named q/k norms (if any)."""
    heads, dim = _heads(attn)
    q, k, v = (_split(getattr(attn, name)(x), heads, dim) for name in projections)
    norm_q, norm_k = (getattr(attn, name, None) for name in norms)
    return (norm_q(q) if norm_q is not None else q), (norm_k(k) if norm_k is not None else k), v


def _concept_attention(run: ConceptRun, layer: int, attn, image_normed, image_out, rotary) -> None:
    heads, dim = _heads(attn)
    q_x, k_x, v_x = _qkv(attn, image_normed, ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"))
    if rotary is not None:  # FLUX: rotate the image tokens by their positions (the last N rows of the table)
        from diffusers.models.embeddings import apply_rotary_emb

        n = q_x.shape[2]
        table = tuple(t[-n:] for t in rotary)
        q_x, k_x = apply_rotary_emb(q_x, table, sequence_dim=2), apply_rotary_emb(k_x, table, sequence_dim=2)
    c = run.normed
    q_c, k_c, v_c = _qkv(attn, c, ("add_q_proj", "add_k_proj", "add_v_proj"), ("norm_added_q", "norm_added_k"))
    # Concept tokens sit at position 0 like text tokens: rotary is the identity for them.
    o_c = F.scaled_dot_product_attention(q_c, torch.cat([k_c, k_x], 2), torch.cat([v_c, v_x], 2))
    o_c = o_c.transpose(1, 2).reshape(c.shape[0], -1, heads * dim).to(c.dtype)
    if getattr(attn, "to_add_out", None) is None:
        raise ProbekitError(f"block {layer} has no text output projection (a context-pre-only last block); "
                            "choose earlier concept layers")
    run.attn_out = attn.to_add_out(o_c)
    if layer in run.record_layers:
        run.maps["output"][layer] = torch.einsum("bcd,bnd->bcn", run.attn_out.float(), image_out.float())
        run.maps["cross"][layer] = (torch.einsum("bhnd,bhcd->bcn", q_x.float(), k_c.float()) / math.sqrt(dim)) / heads


class ConceptAttention:
    """Installs the processors and block hooks on an MM-DiT transformer; use ``with ca.running(tokens):``."""

    def __init__(self, transformer, blocks: Sequence[torch.nn.Module], layers: Sequence[int]):
        self.transformer, self.blocks, self.layers = transformer, list(blocks), sorted(set(int(x) for x in layers))
        for layer in self.layers:
            if not 0 <= layer < len(self.blocks):
                raise ProbekitError(f"concept layer {layer} is out of range (0..{len(self.blocks) - 1})")
            if getattr(self.blocks[layer], "context_pre_only", False):
                raise ProbekitError(f"block {layer} is context-pre-only (no text stream after it); "
                                    "choose earlier concept layers")
        self.holder = _Holder()
        self._original = dict(transformer.attn_processors)
        procs = {}
        for name, proc in self._original.items():
            layer = _block_index(name, self.blocks, transformer)
            procs[name] = ConceptAttnProcessor(proc, self.holder, layer) if layer is not None else proc
        transformer.set_attn_processor(procs)
        self._hooks = []
        for i, block in enumerate(self.blocks[: max(self.layers) + 1]):
            self._hooks.append(block.register_forward_pre_hook(self._pre_hook(i), with_kwargs=True))
            self._hooks.append(block.register_forward_hook(self._post_hook(i), with_kwargs=True))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self.transformer.set_attn_processor(self._original)

    def _pre_hook(self, layer: int):
        def hook(block, args, kwargs):
            run = self.holder.run
            if run is None:
                return
            temb = kwargs.get("temb", args[2] if len(args) > 2 else None)
            normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(run.states, emb=temb)
            run.normed, run.gates = normed, (gate_msa, shift_mlp, scale_mlp, gate_mlp)
        return hook

    def _post_hook(self, layer: int):
        def hook(block, args, kwargs, output):
            run = self.holder.run
            if run is None:
                return
            gate_msa, shift_mlp, scale_mlp, gate_mlp = run.gates
            states = run.states + gate_msa.unsqueeze(1) * run.attn_out
            normed = block.norm2_context(states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            run.states = states + gate_mlp.unsqueeze(1) * block.ff_context(normed)
            run.normed = None
            if layer == run.last_layer and getattr(run, "stop_early", False):
                raise _StopAfterLastBlock
        return hook

    def run(self, concept_tokens: torch.Tensor, forward, stop_early: bool = True) -> ConceptRun:
        """Run ``forward()`` with the concept stream; returns the run with its per-layer maps."""
        run = ConceptRun(concept_tokens, set(self.layers), max(self.layers))
        run.stop_early = stop_early
        self.holder.run = run
        try:
            forward()
        except _StopAfterLastBlock:
            pass
        finally:
            self.holder.run = None
        return run


def _block_index(processor_name: str, blocks, transformer) -> int | None:
    """'transformer_blocks.3.attn.processor' -> 3 (only the joint blocks' own attention)."""
    parts = processor_name.split(".")
    if len(parts) >= 3 and parts[0] == "transformer_blocks" and parts[2] == "attn":
        return int(parts[1])
    return None


class ConceptAttentionExtractor(Extractor):
    """Concept maps of an MM-DiT as feature maps: keys ``concepts=output`` and ``concepts=cross``,
    each (num_concepts, h, w), softmax over concepts, averaged over ``concept_layers`` and the timesteps."""

    def __init__(self, base, concepts: Sequence[str], concept_layers: Sequence[int] | None = None):
        from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

        if not isinstance(base, DiffusersDiTExtractor) or not base.family.concept_attention:
            raise ProbekitError("concept attention needs an MM-DiT with a joint text stream (see `probekit ls "
                                "families`)")
        if not base.has_text_encoder:
            raise ProbekitError(f"concept attention needs the model's text encoder; {base.root} has none")
        if not concepts:
            raise ProbekitError("no concepts given")
        self.base, self.concepts = base, list(concepts)
        self.name = f"{base.name}-concepts"
        blocks = list(base.transformer.transformer_blocks)  # joint (double-stream) blocks only
        layers = list(concept_layers) if concept_layers else [
            i for i, b in enumerate(blocks) if not getattr(b, "context_pre_only", False)]
        self.concept_layers = sorted(set(int(x) for x in layers))
        self.attention = ConceptAttention(base.transformer, blocks, self.concept_layers)
        self._tokens = self._concept_tokens()

    def _concept_tokens(self) -> torch.Tensor:
        """(num_concepts, inner_dim): each concept word through the text encoder and the context embedder."""
        base = self.base
        rows = []
        with torch.inference_mode():
            for concept in self.concepts:
                if base.text_source == "encoder":
                    enc = base._text_encoder()
                    tok = enc.tokenize([concept])
                    hidden = enc([concept])["encoder_hidden_states"][0]
                    mask = tok["attention_mask"][0].bool().clone()
                    ids = tok["input_ids"][0]
                    special = torch.tensor([i in (enc.tokenizer.bos_token_id, enc.tokenizer.eos_token_id,
                                                  enc.tokenizer.pad_token_id) for i in ids.tolist()])
                    mask &= ~special
                    rows.append(hidden[mask.to(hidden.device)].mean(0))
                else:  # pipeline encoders: the first token after the start token
                    rows.append(base._condition(concept)["encoder_hidden_states"][0, 1])
            emb = torch.stack(rows).to(base.device, base.dtype)
            return base.transformer.context_embedder(emb)

    # -- contract ---------------------------------------------------------------------------
    @property
    def timesteps(self) -> list[int]:
        return self.base.timesteps

    @property
    def layers(self) -> list[int]:
        return self.concept_layers

    def feature_keys(self) -> list[str]:
        return [f"concepts={m}" for m in MODES]

    def config(self) -> dict[str, Any]:
        return {**self.base.config(), "extractor": self.name, "concepts": self.concepts,
                "concept_layers": self.concept_layers, "concept_modes": list(MODES),
                "concept_maps": "mean over concept layers and timesteps of per-block maps, then softmax over concepts"}

    def weights_identity(self) -> dict[str, Any]:
        return self.base.weights_identity()

    def notes(self) -> list[str]:
        return self.base.notes()

    @property
    def uses_captions(self) -> bool:
        return self.base.uses_captions

    def memory_plan(self) -> list[str]:
        return self.base.memory_plan()

    def prepare(self, captions=()) -> None:
        self.base.prepare(captions)

    @torch.inference_mode()
    def extract(self, images, captions, indices) -> dict[str, torch.Tensor]:
        base = self.base
        b, n_t = images.shape[0], len(base.timesteps)
        sums = {m: None for m in MODES}
        for draw in range(base.ensemble):
            inputs = base.model_inputs(images, captions, indices, draw)
            gh, gw = inputs.grid
            tokens = self._tokens.unsqueeze(0).expand(inputs.x_t.shape[0], -1, -1)
            run = self.attention.run(tokens, lambda: base.run_forward(inputs))
            for mode in MODES:
                per_layer = torch.stack([run.maps[mode][layer] for layer in self.concept_layers])  # (L, B*T, C, N)
                mean = per_layer.mean(0).view(b, n_t, len(self.concepts), -1).mean(1)  # over layers, timesteps
                sums[mode] = mean if sums[mode] is None else sums[mode] + mean
        return {f"concepts={m}": torch.softmax(sums[m] / base.ensemble, dim=1).view(b, -1, gh, gw)
                for m in MODES}

    def close(self) -> None:
        self.attention.remove()
