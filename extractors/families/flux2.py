"""FLUX.2 dev and Klein (``Flux2Transformer2DModel``; ``Flux2Pipeline`` / ``Flux2KleinPipeline``): a 32-channel VAE
whose latents are patchified 2x2 into 128 channels and normalised with the VAE's BatchNorm statistics, noise drawn
in that patchified layout, 4-axis RoPE position ids, an empirical ``mu`` that depends on the number of steps, joint
blocks then single blocks that see the joined [text, image] sequence. Dev takes distilled guidance as an input;
Klein has none (and runs CFG, which probekit leaves off: one conditional forward)."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, TokenLayout, first, itself, last, pipeline_default

_SINGLE_MLP = ("single blocks fuse attention and MLP (Flux2ParallelSelfAttention): the MLP's SwiGLU hidden layer "
               "(attn.mlp_act_fn), mlp_ratio x the model width, before the fused output projection")
_JOINT = {"output": Site("", last), "attn": Site("attn", first), "mlp": Site("ff", itself)}
_SINGLE = {"output": Site("", itself, stream="joint"),
           "mlp": Site("attn.mlp_act_fn", itself, stream="joint", width_factor=3.0, note=_SINGLE_MLP)}
_NO_NORM1 = ("FLUX.2's norm1 / norm are plain LayerNorms: the AdaLN shift and scale are applied in the block's own "
             "code (Flux2TransformerBlock.forward, Flux2SingleTransformerBlock.forward), not in a module a hook "
             "can read")
_NO_SINGLE_ATTN = ("single blocks project the attention output and the MLP hidden layer together (attn.to_out); "
                   "the attention output alone is a function result (dispatch_attention_fn), not a module output")


class Flux2Family(DiTFamily):
    name = "flux2"
    transformer_class = "Flux2Transformer2DModel"
    pipeline_class = "Flux2Pipeline"
    concept_attention = True  # joint blocks attend over [text; image] in one attention
    block_lists = {"joint": "transformer_blocks", "single": "single_transformer_blocks"}
    sites = {"joint": _JOINT, "single": _SINGLE}
    missing_sites = {"norm1": _NO_NORM1, "attn": _NO_SINGLE_ATTN}

    def __init__(self, config, vae_config=None, scheduler_config=None):
        super().__init__(config, vae_config, scheduler_config)
        # The family sees configs only, not model_index.json: dev is the guidance-distilled transformer, Klein
        # (Qwen3 text, CFG) has no guidance embedder. Their helpers are copies; only encode_prompt differs, and
        # that is called on the loaded pipeline itself.
        self.pipeline_class = "Flux2Pipeline" if self.guidance_input else "Flux2KleinPipeline"

    @property
    def guidance_input(self) -> bool:
        return bool(self.config.get("guidance_embeds"))

    def site_width(self, kind, site):
        if kind == "single" and site == "mlp":
            return int(self.model_width() * self.config.get("mlp_ratio", 3.0))
        return super().site_width(kind, site)

    # -- latents: noise is drawn patchified (Flux2Pipeline.prepare_latents), one token per cell -------------
    @property
    def vae_scale(self) -> int:
        return 2 * super().vae_scale

    def encode(self, pixels):
        from types import SimpleNamespace

        # _encode_vae_image reads only self.vae and self._patchify_latents: VAE mode, 2x2 patchify, BatchNorm stats
        owner = SimpleNamespace(vae=self.vae, _patchify_latents=self.pipeline._patchify_latents)
        return self.pipeline._encode_vae_image(owner, pixels, None)

    # -- noise --------------------------------------------------------------------------------------------
    @property
    def num_inference_steps(self) -> int:
        return int(pipeline_default(self.pipeline_class, "num_inference_steps"))

    def mu(self, image_seq_len):
        if not (self.scheduler_config or {}).get("use_dynamic_shifting"):
            return None
        return self.helpers.compute_empirical_mu(image_seq_len, self.num_inference_steps)

    def timestep_input(self, sigma, t_int):
        return sigma  # the pipeline passes t / 1000; the transformer scales it by 1000 inside

    # -- conditioning -------------------------------------------------------------------------------------
    def null_condition(self, device, dtype):
        import torch

        return {"encoder_hidden_states": torch.zeros(1, 1, self.config["joint_attention_dim"], device=device,
                                                     dtype=dtype)}

    def encode_prompts(self, pipe, prompts, device):
        # Mistral3 (dev) or Qwen3 (Klein) hidden states of three layers, padded to 512 tokens, no mask
        emb, _ = pipe.encode_prompt(prompt=prompts, device=device)
        return {"encoder_hidden_states": emb}

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, x_t, sigma, t_int, cond, guidance):
        import torch

        pipeline = self.pipeline
        text = cond["encoder_hidden_states"]
        packed = pipeline._pack_latents(x_t)
        self.layout = TokenLayout(start=text.shape[1], count=packed.shape[1])
        g = None
        if self.guidance_input:
            g = torch.full((x_t.shape[0],), float(guidance), device=x_t.device, dtype=torch.float32)
        self.transformer(hidden_states=packed, encoder_hidden_states=text, timestep=self.timestep_input(sigma, t_int),
                         img_ids=pipeline._prepare_latent_ids(x_t).to(x_t.device),
                         txt_ids=pipeline._prepare_text_ids(text).to(x_t.device), guidance=g, return_dict=False)

    def describe(self):
        out = super().describe()
        out["pipeline_chosen_by"] = "transformer config guidance_embeds (true: Flux2Pipeline, false: Klein)"
        if (self.scheduler_config or {}).get("use_dynamic_shifting"):
            out["mu_num_inference_steps"] = self.num_inference_steps
        return out
