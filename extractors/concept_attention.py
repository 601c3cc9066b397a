"""ConceptAttention for MM-DiTs, as its reference implementation computes it (github helblazer811/ConceptAttention).

Concept words are encoded by the model's own text encoder, embedded by its ``context_embedder`` and carried
through the *text-stream* weights of every joint block as an extra token stream: normalised and modulated by the
block's ``norm1_context``, projected by the attention's ``add_q/k/v`` projections, attending to [concepts; image]
(never to the prompt), then updated with the block's gated residual and ``ff_context`` exactly as the text stream
is. Image and text tokens never attend to the concepts: the model's own processor computes the real attention
first and the concept stream is computed beside it, so the features are untouched.

The references differ between model families (which token stands for a concept, which embedding modulates the
stream, which vectors are multiplied, where the softmax goes); each family states its choices as a
``ConceptDefinition`` naming the reference file it follows, recorded in the feature file:

- ``output`` maps: concept attention outputs dotted with image attention outputs, per block;
- ``cross`` maps: concept queries dotted with image keys (before rotary embeddings), summed over heads: the
  cross-attention baseline as the reference's FLUX.2 code computes it;
- then a softmax over concepts per (timestep, block) and the mean over blocks and timesteps, or the mean first
  and the softmax after, with the definition's temperature.

A concept of several sub-tokens is represented by the mean of their hidden states (the references take one
position; for one-token concepts the two agree); the number of sub-tokens per concept is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from probekit.errors import ProbekitError
from probekit.extractors.base import Extractor
from probekit.extractors.dit_family import ConceptDefinition

MODES = ("output", "cross")


@dataclass
class ConceptText:
    """What enters the concept stream: ``stream`` (S, D) text-encoder states, the positions of the concepts in it
    (a joined prompt keeps its start token), the pooled embedding of the joined concepts (for "concepts"
    modulation), how many sub-tokens each concept's state averages, and where rotary embeddings place them."""

    stream: torch.Tensor
    index: list[int]
    pooled: torch.Tensor | None = None
    token_counts: list[int] = field(default_factory=list)
    positions: torch.Tensor | None = None  # (S, axes) rotary position ids of the stream (None: the identity)


def concept_spans(tokenizer, concepts: Sequence[str], joined_ids: Sequence[int], start: int) -> list[range]:
    """The token positions of each concept in the tokenised space-joined concepts, whose first concept token is
    at ``start``: each concept's own tokens, in order (tokens of the separating space itself, where a tokenizer
    makes them, are skipped). Refused when the joined tokenisation is not the concatenation of the concepts' (a
    tokenizer that merges across words)."""
    spans, at = [], start
    for concept in concepts:
        ids = tokenizer(concept, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ProbekitError(f"concept {concept!r} tokenises to nothing")
        while spans and at < len(joined_ids) and not tokenizer.decode([joined_ids[at]]).strip():
            at += 1
        if list(joined_ids[at:at + len(ids)]) != list(ids):
            raise ProbekitError(f"the tokenizer does not tokenise the joined concepts word by word (at {concept!r}); "
                                "give concepts without spaces or punctuation that merge")
        spans.append(range(at, at + len(ids)))
        at += len(ids)
    return spans


def encoded_concepts(pipe, encode, concepts: Sequence[str]) -> tuple[list[torch.Tensor], list[range]]:
    """Each concept alone through a pipeline's own prompt encoding ``encode([concept])`` (chat templates and
    all): its hidden states and the positions of the concept's own tokens in them (the last occurrence of its
    token ids among the ids the text encoder received)."""
    tokenizer = getattr(pipe.tokenizer, "tokenizer", pipe.tokenizer)  # a processor wraps its tokenizer
    seen: dict[str, torch.Tensor] = {}
    hook = pipe.text_encoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.__setitem__("ids", kwargs.get("input_ids", args[0] if args else None)),
        with_kwargs=True)
    states, spans = [], []
    try:
        for concept in concepts:
            hidden = encode([concept])
            ids = seen["ids"][0].tolist()
            own = tokenizer(concept, add_special_tokens=False)["input_ids"]
            starts = [i for i in range(len(ids) - len(own) + 1) if ids[i:i + len(own)] == own]
            if not starts:
                raise ProbekitError(f"concept {concept!r}: its tokens are not found in its own encoded prompt")
            states.append(hidden[0])
            spans.append(range(starts[-1], starts[-1] + len(own)))
    finally:
        hook.remove()
    return states, spans


def mean_over_spans(hidden: torch.Tensor, spans: Sequence[range]) -> torch.Tensor:
    """(L, D) states -> (C, D): the mean over each span."""
    return torch.stack([hidden[span.start:span.stop].mean(0) for span in spans])


class ConceptRun:
    """The concept stream of one forward pass and the maps it produced."""

    def __init__(self, tokens: torch.Tensor, pooled: torch.Tensor | None, record_layers: set[int], last_layer: int,
                 stop_early: bool, rotary=None):
        self.states = tokens  # (B, S, dim)
        self.pooled = pooled  # (B, pooled dim) or None
        self.rotary = rotary  # the concept tokens' rotary table, or None: the identity
        self.rotary_style = "table"
        self.concept_temb: torch.Tensor | None = None
        self.record_layers, self.last_layer, self.stop_early = record_layers, last_layer, stop_early
        self.normed: torch.Tensor | None = None
        self.gates: tuple[torch.Tensor, ...] | None = None
        self.attn_out: torch.Tensor | None = None
        self.image_pre: torch.Tensor | None = None  # the real image attention before its output projection
        self.maps: dict[str, dict[int, torch.Tensor]] = {m: {} for m in MODES}


class AdaLNZeroStream:
    """SD3 and FLUX.1 joint blocks: the text stream is modulated by the block's own ``norm1_context``
    (AdaLayerNormZero over the conditioning embedding ``temb``) and updated through its gates, ``norm2_context``
    and ``ff_context``."""

    def modulate(self, block, states, temb, kwargs):
        if getattr(block, "context_pre_only", False):  # AdaLayerNormContinuous(x, conditioning): no update after
            return block.norm1_context(states, temb), None
        out = block.norm1_context(states, emb=temb)
        return out[0], out[1:]  # (normed, (gate_msa, shift_mlp, scale_mlp, gate_mlp))

    def embedding(self, args, kwargs):
        return kwargs.get("temb", args[2] if len(args) > 2 else None)

    def update(self, block, states, attn_out, gates):
        gate_msa, shift_mlp, scale_mlp, gate_mlp = gates
        states = states + gate_msa.unsqueeze(1) * attn_out
        normed = block.norm2_context(states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return states + gate_mlp.unsqueeze(1) * block.ff_context(normed)


class SharedModulationStream:
    """FLUX.2 joint blocks: the text stream's shift, scale and gate come from one modulation shared by every
    block (``temb_mod_txt``), applied around plain LayerNorms (``norm1_context``, ``norm2_context``)."""

    def embedding(self, args, kwargs):
        return kwargs.get("temb_mod_txt", args[3] if len(args) > 3 else None)

    def modulate(self, block, states, temb_mod, kwargs):
        from diffusers.models.transformers.transformer_flux2 import Flux2Modulation

        (shift, scale, gate), mlp = Flux2Modulation.split(temb_mod, 2)
        return (1 + scale) * block.norm1_context(states) + shift, (gate, *mlp)

    def update(self, block, states, attn_out, gates):
        gate_msa, shift_mlp, scale_mlp, gate_mlp = gates
        states = states + gate_msa * attn_out
        normed = block.norm2_context(states) * (1 + scale_mlp) + shift_mlp
        return states + gate_mlp * block.ff_context(normed)


class TextModulationStream:
    """Qwen-Image joint blocks: the text stream's shift, scale and gate come from the block's ``txt_mod`` of the
    conditioning embedding, applied by its ``_modulate`` around ``txt_norm1`` / ``txt_norm2``, then ``txt_mlp``."""

    def embedding(self, args, kwargs):
        temb = kwargs.get("temb", args[3] if len(args) > 3 else None)
        return temb

    def modulate(self, block, states, temb, kwargs):
        if getattr(block, "zero_cond_t", False):
            temb = temb.chunk(2, dim=0)[0]
        mod1, mod2 = block.txt_mod(temb).chunk(2, dim=-1)
        normed, gate = block._modulate(block.txt_norm1(states), mod1)
        return normed, (gate, mod2)

    def update(self, block, states, attn_out, gates):
        gate, mod2 = gates
        states = states + gate * attn_out
        normed, gate2 = block._modulate(block.txt_norm2(states), mod2)
        return states + gate2 * block.txt_mlp(normed)


#: ``DiTFamily.concept_stream`` -> how the family's joint blocks treat their text stream
STREAMS = {"adaln-zero": AdaLNZeroStream(), "shared-modulation": SharedModulationStream(),
           "text-modulation": TextModulationStream()}


class TableRotary:
    """FLUX.1 / FLUX.2: one real (cos, sin) table over [text; image]; the image tokens are its last rows."""

    def image(self, rotary, n: int):
        return tuple(t[-n:] for t in rotary)

    def apply(self, x: torch.Tensor, table) -> torch.Tensor:  # x: (B, H, S, D)
        from diffusers.models.embeddings import apply_rotary_emb

        return apply_rotary_emb(x, table, sequence_dim=2)


class ComplexRotary:
    """Qwen-Image: complex frequencies, (image, text) apart."""

    def image(self, rotary, n: int):
        return rotary[0]

    def apply(self, x: torch.Tensor, freqs) -> torch.Tensor:
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        return apply_rotary_emb_qwen(x.transpose(1, 2), freqs, use_real=False).transpose(1, 2)


ROTARY = {"table": TableRotary(), "complex": ComplexRotary()}


class _StopAfterLastBlock(Exception):
    pass


class _Holder:
    run: ConceptRun | None = None


def _heads(attn) -> tuple[int, int]:
    heads = int(attn.heads)
    return heads, attn.to_q.out_features // heads


def _split(x: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, heads, dim).transpose(1, 2)  # (B, H, S, D)


def _merge(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)  # (B, S, H*D)


def _qkv(attn, x, projections: tuple[str, str, str], norms: tuple[str, str]) -> tuple[torch.Tensor, ...]:
    """Multi-head q, k, v of tokens ``x`` through the named projections, with the named q/k norms (if any)."""
    heads, dim = _heads(attn)
    q, k, v = (_split(getattr(attn, name)(x), heads, dim) for name in projections)
    norm_q, norm_k = (getattr(attn, name, None) for name in norms)
    return (norm_q(q) if norm_q is not None else q), (norm_k(k) if norm_k is not None else k), v


class ConceptAttnProcessor:
    """Calls the model's own processor, then (during a concept run) the concept tokens' attention."""

    def __init__(self, inner, holder: _Holder, layer: int, definition: ConceptDefinition, rotary: str):
        self.inner, self.holder, self.layer, self.definition = inner, holder, layer, definition
        self.rotary = ROTARY[rotary]

    # diffusers hands a processor only the keyword arguments its __call__ names, so every one a wrapped processor
    # takes is named here (Qwen-Image's text mask among them)
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 encoder_hidden_states_mask=None, **kwargs):
        given = {"encoder_hidden_states": encoder_hidden_states, "attention_mask": attention_mask,
                 "image_rotary_emb": image_rotary_emb, "encoder_hidden_states_mask": encoder_hidden_states_mask}
        out = self.inner(attn, hidden_states, **{k: v for k, v in given.items() if v is not None}, **kwargs)
        run = self.holder.run
        if run is not None and run.normed is not None and self.layer <= run.last_layer:
            image_out = out[0] if isinstance(out, tuple) else out
            rotary = None if image_rotary_emb is None else (self.rotary, image_rotary_emb)
            _concept_attention(run, self.layer, attn, hidden_states, image_out, rotary, self.definition)
        return out


def _concept_attention(run: ConceptRun, layer: int, attn, image_normed, image_out, rotary,
                       definition: ConceptDefinition) -> None:
    q_x, k_x, v_x = _qkv(attn, image_normed, ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"))
    q_x0, k_x0 = q_x, k_x  # before rotary: what the cross-attention baseline reads
    if rotary is not None:  # rotate the image tokens by their positions, as the model's own attention does
        style, table = rotary
        image_table = style.image(table, q_x.shape[2])
        q_x, k_x = style.apply(q_x, image_table), style.apply(k_x, image_table)
    c = run.normed
    q_c, k_c, v_c = _qkv(attn, c, ("add_q_proj", "add_k_proj", "add_v_proj"), ("norm_added_q", "norm_added_k"))
    q_c0 = q_c  # before rotary, for the cross-attention baseline
    if run.rotary is not None:  # FLUX.2 and Qwen-Image place text tokens by position; FLUX.1's sit at 0
        style = ROTARY[run.rotary_style]
        q_c, k_c = style.apply(q_c, run.rotary), style.apply(k_c, run.rotary)
    o_c = _merge(F.scaled_dot_product_attention(q_c, torch.cat([k_c, k_x], 2), torch.cat([v_c, v_x], 2))).to(c.dtype)
    to_add_out = getattr(attn, "to_add_out", None)
    run.attn_out = to_add_out(o_c) if to_add_out is not None else None  # None: context-pre-only, no update
    if layer not in run.record_layers:
        return
    if definition.vectors == "projected":
        if run.attn_out is None:
            raise ProbekitError(f"block {layer} has no text output projection (context-pre-only); this family's "
                                "concept maps read projected vectors: choose earlier concept layers")
        concept_vec, image_vec = run.attn_out, image_out
    elif definition.image_vectors == "concept-pass":
        image_vec = _merge(F.scaled_dot_product_attention(q_x, torch.cat([k_x, k_c], 2), torch.cat([v_x, v_c], 2)))
        concept_vec = o_c
    else:
        concept_vec, image_vec = o_c, run.image_pre
    concept_vec = concept_vec.float()
    if definition.normalise_concepts:
        concept_vec = concept_vec / (concept_vec.norm(dim=-1, keepdim=True) + 1e-8)
    run.maps["output"][layer] = torch.einsum("bcd,bnd->bcn", concept_vec, image_vec.float())
    run.maps["cross"][layer] = torch.einsum("bhcd,bhnd->bcn", q_c0.float(), k_x0.float())


class ConceptAttention:
    """Installs the processors and hooks on an MM-DiT transformer; ``run`` one forward with a concept stream."""

    def __init__(self, transformer, blocks: Sequence[torch.nn.Module], layers: Sequence[int],
                 definition: ConceptDefinition, stream: str = "adaln-zero", rotary: str = "table"):
        self.transformer, self.blocks = transformer, list(blocks)
        self.layers, self.definition = sorted(set(int(x) for x in layers)), definition
        self.stream, self.rotary_style = STREAMS[stream], rotary
        for layer in self.layers:
            if not 0 <= layer < len(self.blocks):
                raise ProbekitError(f"concept layer {layer} is out of range (0..{len(self.blocks) - 1})")
            if definition.vectors == "projected" and getattr(self.blocks[layer], "context_pre_only", False):
                raise ProbekitError(f"block {layer} is context-pre-only (no text output projection); "
                                    "choose earlier concept layers")
        self.holder = _Holder()
        self._original = dict(transformer.attn_processors)
        procs = {}
        for name, proc in self._original.items():
            layer = _block_index(name)
            procs[name] = (ConceptAttnProcessor(proc, self.holder, layer, definition, rotary) if layer is not None
                           else proc)
        transformer.set_attn_processor(procs)
        self._hooks = []
        for i, block in enumerate(self.blocks[: max(self.layers) + 1]):
            self._hooks.append(block.register_forward_pre_hook(self._pre_hook(), with_kwargs=True))
            self._hooks.append(block.register_forward_hook(self._post_hook(i), with_kwargs=True))
            self._hooks.append(block.attn.to_out[0].register_forward_pre_hook(self._image_pre_hook()))
        if definition.modulation == "concepts":
            self._hooks.append(transformer.time_text_embed.register_forward_hook(self._temb_hook()))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self.transformer.set_attn_processor(self._original)

    def _temb_hook(self):
        """The concept stream's own modulation: the same embedding of timestep (and guidance) with the
        concepts' pooled embedding in place of the prompt's."""
        def hook(module, args, output):
            run = self.holder.run
            if run is None or run.concept_temb is not None:
                return
            run.concept_temb = output  # a placeholder, so that the call below does not recurse
            pooled = run.pooled.to(output.dtype).expand(output.shape[0], -1)
            run.concept_temb = module(*args[:-1], pooled)
        return hook

    def _image_pre_hook(self):
        def hook(module, args):
            run = self.holder.run
            if run is not None and run.normed is not None:
                run.image_pre = args[0]
        return hook

    def _pre_hook(self):
        def hook(block, args, kwargs):
            run = self.holder.run
            if run is None:
                return
            embedding = (run.concept_temb if self.definition.modulation == "concepts"
                         else self.stream.embedding(args, kwargs))
            run.normed, run.gates = self.stream.modulate(block, run.states, embedding, kwargs)
        return hook

    def _post_hook(self, layer: int):
        def hook(block, args, kwargs, output):
            run = self.holder.run
            if run is None:
                return
            if run.gates is not None and run.attn_out is not None:
                run.states = self.stream.update(block, run.states, run.attn_out, run.gates)
            run.normed = run.image_pre = None
            if layer == run.last_layer and run.stop_early:
                raise _StopAfterLastBlock
        return hook

    def run(self, tokens: torch.Tensor, forward, pooled: torch.Tensor | None = None, stop_early: bool = True,
            rotary=None) -> ConceptRun:
        """Run ``forward()`` with the concept stream; returns the run with its per-layer maps."""
        if self.definition.modulation == "concepts" and pooled is None:
            raise ProbekitError("this family's concept stream is modulated by the concepts' pooled embedding")
        run = ConceptRun(tokens, pooled, set(self.layers), max(self.layers), stop_early, rotary)
        run.rotary_style = self.rotary_style
        self.holder.run = run
        try:
            forward()
        except _StopAfterLastBlock:
            pass
        finally:
            self.holder.run = None
        return run


def _block_index(processor_name: str) -> int | None:
    """'transformer_blocks.3.attn.processor' -> 3 (only the joint blocks' own attention)."""
    parts = processor_name.split(".")
    if len(parts) >= 3 and parts[0] == "transformer_blocks" and parts[2] == "attn":
        return int(parts[1])
    return None


def _encoder_concepts(encoder, concepts: Sequence[str], definition: ConceptDefinition) -> ConceptText:
    """Concepts through a plain text encoder folder (TextConditioner), as the definition's tokens say."""
    tok = encoder.tokenizer
    pooled = encoder([" ".join(concepts)])["pooled_projections"]  # read only where the definition modulates by it
    if definition.tokens == "joined":
        joined = " ".join(concepts)
        ids = encoder.tokenize([joined])["input_ids"][0].tolist()
        start = 1 if tok.bos_token_id is not None and ids[0] == tok.bos_token_id else 0
        spans = concept_spans(tok, concepts, ids, start)
        hidden = encoder([joined])["encoder_hidden_states"][0]
        head = hidden[:start]
        stream = torch.cat([head, mean_over_spans(hidden, spans)])
        return ConceptText(stream, list(range(start, start + len(concepts))), pooled, [len(s) for s in spans])
    rows, counts = [], []
    for concept in concepts:
        ids = encoder.tokenize([concept])["input_ids"][0].tolist()
        start = 1 if tok.bos_token_id is not None and ids[0] == tok.bos_token_id else 0
        span = concept_spans(tok, [concept], ids, start)
        rows.append(mean_over_spans(encoder([concept])["encoder_hidden_states"][0], span)[0])
        counts.append(len(span[0]))
    return ConceptText(torch.stack(rows), list(range(len(concepts))), pooled, counts)


class ConceptAttentionExtractor(Extractor):
    """Concept maps of an MM-DiT as feature maps: keys ``concepts=output`` and ``concepts=cross``, each
    (num_concepts, h, w), probabilities over concepts at every location."""

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
        self.definition: ConceptDefinition = base.family.concept_definition
        self.name = f"{base.name}-concepts"
        self._layers_asked = concept_layers
        self._attention: ConceptAttention | None = None
        self._text: ConceptText | None = None

    def _encode_concepts(self) -> ConceptText:
        base = self.base
        with torch.inference_mode():
            if base.text_source == "encoder":
                return _encoder_concepts(base._text_encoder(), self.concepts, self.definition)
            return base.family.encode_concepts(base._text_pipeline(), self.concepts, base.device)

    @property
    def text(self) -> ConceptText:
        if self._text is None:
            self._text = self._encode_concepts()
        return self._text

    @property
    def attention(self) -> ConceptAttention:
        """The hooks, installed once the transformer is loaded (after the text encoders are freed)."""
        if self._attention is None:
            blocks = list(self.base.transformer.transformer_blocks)  # joint (double-stream) blocks only
            family = self.base.family
            self._attention = ConceptAttention(self.base.transformer, blocks, self.concept_layers, self.definition,
                                               family.concept_stream, family.concept_rotary_style)
        return self._attention

    @property
    def concept_layers(self) -> list[int]:
        if self._layers_asked:
            return sorted(set(int(x) for x in self._layers_asked))
        n = self.base.family.config["num_layers"]  # joint blocks
        return list(range(max(0, n - (self.definition.last_blocks or n)), n))

    # -- contract ---------------------------------------------------------------------------
    @property
    def timesteps(self) -> list[int]:
        return self.base.timesteps

    @property
    def layers(self) -> list[int]:
        return self.concept_layers

    def feature_keys(self) -> list[str]:
        return [f"concepts={m}" for m in MODES]

    def feature_shapes(self, image_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        (_, h, w), = set(self.base.feature_shapes(image_size).values())
        return {k: (len(self.concepts), h, w) for k in self.feature_keys()}

    def config(self) -> dict[str, Any]:
        text = self.text
        return {**self.base.config(), "extractor": self.name, "concepts": self.concepts,
                "concept_layers": self.concept_layers, "concept_modes": list(MODES),
                "concept_definition": asdict(self.definition), "concept_token_counts": text.token_counts,
                "concept_maps": f"softmax over concepts ({self.definition.softmax}, temperature "
                                f"{self.definition.temperature:g}), mean over concept layers and timesteps"}

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
        self.text  # noqa: B018 - the concepts are encoded with the prompts, before the text encoders leave
        self.base.prepare(captions)

    @torch.inference_mode()
    def extract(self, images, captions, indices) -> dict[str, torch.Tensor]:
        base, text, d = self.base, self.text, self.definition
        b, n_t = images.shape[0], len(base.timesteps)
        base.transformer  # noqa: B018 - loaded here, after the text encoders were freed
        tokens = base.family.embed_text(text.stream.to(base.device, base.dtype))
        pooled = text.pooled.to(base.device, base.dtype) if text.pooled is not None else None
        index = torch.tensor(text.index, device=base.device)
        sums = {m: None for m in MODES}
        for draw in range(base.ensemble):
            inputs = base.model_inputs(images, captions, indices, draw)
            gh, gw = inputs.grid
            rotary = (None if text.positions is None
                      else base.family.concept_rotary(text.positions.to(base.device), inputs.grid))
            stream = tokens.unsqueeze(0).expand(inputs.x_t.shape[0], -1, -1)
            run = self.attention.run(stream, lambda: base.run_forward(inputs), pooled=pooled, rotary=rotary)
            for mode in MODES:
                per_layer = torch.stack([run.maps[mode][layer].index_select(1, index)
                                         for layer in self.concept_layers])  # (L, B*T, C, N)
                if d.softmax == "per-block":
                    per_layer = torch.softmax(per_layer / d.temperature, dim=2)
                mean = per_layer.mean(0).view(b, n_t, len(self.concepts), -1).mean(1)  # over layers, timesteps
                sums[mode] = mean if sums[mode] is None else sums[mode] + mean
        out = {}
        for mode in MODES:
            maps = sums[mode] / base.ensemble
            if d.softmax == "after-mean":
                maps = torch.softmax(maps / d.temperature, dim=1)
            out[f"concepts={mode}"] = maps.view(b, -1, gh, gw)
        return out

    def close(self) -> None:
        if self._attention is not None:
            self._attention.remove()
