"""FLUX.3 (``Flux3Transformer2DModel``; only modular pipelines: ``Flux3ModularPipeline`` and the step-distilled
``Flux3DistilledModularPipeline``, diffusers/modular_pipelines/flux3/): the FLUX.2 VAE (32 channels patchified 2x2,
BatchNorm-normalised), noise drawn in that patchified layout, per-mode blocks (image tokens alone, then text alone)
before joint single blocks over [text; image], a static shift on the scheduler, and Qwen3-VL text windows padded
to a multiple of 80 tokens that the transformer attends in full (no mask).

What probekit reproduces is the first denoising step of the modular pipeline's text-to-image blocks with the prompt
encoded as given (the blocks' prompt upsampler is generative and is left out) and CFG off (one conditional forward).
A flow-map (step-distilled) transformer also takes the timestep the step jumps to: 0, as a one-step call passes."""

from __future__ import annotations

import functools

from probekit.errors import ProbekitError
from probekit.extractors.dit_family import DiTFamily, Site, TokenLayout, itself, last

_NORM1 = ("the attention's input: the block applies the AdaLN shift and scale (or scale) to the norm "
          "in its own code, so the modulated input is read where the attention receives it")
_MODE = {"output": Site("", itself), "norm1": Site("attn", itself, reads="input", note=_NORM1),
         "attn": Site("attn", itself, note="self-attention over the image tokens alone"),
         "mlp": Site("ff", itself, note="computed in parallel with attention from the same modulated input")}
_SINGLE = {"output": Site("", last), "norm1": Site("attn", itself, stream="joint", reads="input", note=_NORM1),
           "attn": Site("attn", itself, stream="joint"),
           "mlp": Site("ff", itself, stream="joint", note="computed in parallel with attention from the same input")}


@functools.lru_cache(maxsize=None)
def _before_denoise():
    from diffusers.modular_pipelines.flux3 import before_denoise

    return before_denoise


class Flux3Family(DiTFamily):
    name = "flux3"
    transformer_class = "Flux3Transformer2DModel"
    pipeline_class = "Flux3ModularPipeline"
    default_shift = 6.93  # Flux3SetTimestepsStep's shift (before_denoise.py, line 95), for a folder without scheduler
    joint_stream = True  # single blocks attend over [text; image] in one attention
    # txt_mode_blocks see text tokens only: no image map to read
    block_lists = {"mode": "mode_blocks.image", "single": "single_transformer_blocks"}
    sites = {"mode": _MODE, "single": _SINGLE}

    def __init__(self, config, vae_config=None, scheduler_config=None, pipeline_index=None):
        super().__init__(config, vae_config, scheduler_config, pipeline_index)
        self.pipeline_class = "Flux3DistilledModularPipeline" if self.flow_map else "Flux3ModularPipeline"

    @property
    def flow_map(self) -> bool:
        return bool(self.config.get("flow_map"))

    def count_key(self, kind):
        return {"mode": "num_layers", "single": "num_single_layers"}[kind]

    def blocks(self):
        out = []
        for path in self.block_lists.values():
            out.extend(self.transformer.get_submodule(path))
        return out

    # -- latents: noise is drawn patchified (Flux3PrepareLatentsStep), one token per cell -------------------
    @property
    def vae_scale(self) -> int:
        return 2 * super().vae_scale

    def encode(self, pixels):
        from types import SimpleNamespace

        from diffusers.modular_pipelines import PipelineState
        from diffusers.modular_pipelines.flux3.encoders import Flux3VaeEncoderStep

        # the pipeline's own VAE encoder block (VAE mode, 2x2 patchify, BatchNorm statistics), which reads only the
        # VAE and the device of its pipeline; a batch of images goes through it as one reference image would
        state = PipelineState()
        state.set("condition_images", [pixels])
        _, state = Flux3VaeEncoderStep()(SimpleNamespace(vae=self.vae, _execution_device=pixels.device), state)
        return state.get("image_cond_latents")[0]

    def timestep_input(self, sigma, t_int):
        # Flux3LoopDenoiser: (t / 1000).to(latents.dtype), t = 1000 sigma; the transformer scales it by 1000 inside
        return (sigma * 1000.0 / 1000.0).to(self.transformer.dtype)

    # -- conditioning -------------------------------------------------------------------------------------
    def null_condition(self, device, dtype):
        import torch

        window = 80  # Flux3TextEncoderStep's pad_multiple: the shortest text window the pipeline produces
        return {"encoder_hidden_states": torch.zeros(1, window, self.config["joint_attention_dim"], device=device,
                                                     dtype=dtype),
                "text_len": torch.tensor([window], device=device)}

    def encode_prompts(self, pipe, prompts, device):
        """``pipe``: the folder's modular pipeline with its text encoder and processor loaded. One prompt per call,
        as the text encoder block takes them; zero-padded to the longest window, with each prompt's own length."""
        import torch
        from diffusers.modular_pipelines.flux3.encoders import Flux3TextEncoderStep

        embs = [Flux3TextEncoderStep._get_qwen3_vl_prompt_embeds(text_encoder=pipe.text_encoder,
                                                                 tokenizer=pipe.tokenizer, prompt=p, device=device)
                for p in prompts]
        lengths = [e.shape[1] for e in embs]
        out = torch.zeros(len(embs), max(lengths), embs[0].shape[-1], device=device, dtype=embs[0].dtype)
        for i, e in enumerate(embs):
            out[i, :e.shape[1]] = e[0]
        return {"encoder_hidden_states": out, "text_len": torch.tensor(lengths, device=device)}

    def collate(self, conds, repeats):
        lengths = {int(c["text_len"][0]) for c in conds}
        if len(lengths) > 1:
            raise ProbekitError(
                f"FLUX.3 attends to every token of a prompt's text window (no mask), and the prompts of this batch "
                f"have windows of {sorted(lengths)} tokens, which one forward cannot hold without changing them; "
                "extract with --batch-size 1, or with captions that share one window (a multiple of 80 tokens)")
        n = lengths.pop()
        trimmed = [{"encoder_hidden_states": c["encoder_hidden_states"][:, :n], "text_len": c["text_len"]}
                   for c in conds]
        return super().collate(trimmed, repeats)

    # -- forward ------------------------------------------------------------------------------------------
    @functools.cached_property
    def image_rope_scale(self) -> float:
        return float(_before_denoise().Flux3PrepareLatentsStep().image_rope_scale)

    def forward(self, x_t, sigma, t_int, cond, guidance):
        import torch

        text = cond["encoder_hidden_states"]
        bd = _before_denoise()
        b, _, h, w = x_t.shape
        packed = x_t.flatten(2).transpose(1, 2)  # as Flux3PrepareLatentsStep packs (before_denoise.py, line 266)
        self.layout = TokenLayout(start=text.shape[1], count=packed.shape[1])
        extra = {}
        if self.flow_map:
            extra["target_timestep"] = torch.zeros(b, device=x_t.device, dtype=x_t.dtype)
        self.transformer(hidden_states=packed, encoder_hidden_states=text, timestep=self.timestep_input(sigma, t_int),
                         img_ids=bd._prepare_image_ids(h, w, self.image_rope_scale).to(x_t.device),
                         txt_ids=bd.Flux3TextRoPEInputsStep._prepare_text_ids(text).to(x_t.device), return_dict=False,
                         **extra)

    def describe(self):
        out = {**super().describe(), "prompt_upsampler": "not run (prompts encoded as given)", "cfg": "off"}
        if self.flow_map:
            out["target_timestep"] = 0.0
        return out
