"""HunyuanImage 2.1 (``HunyuanImageTransformer2DModel``, ``HunyuanImagePipeline``): double-stream blocks, then
single-stream blocks over the joined [image; text] sequence (image tokens first; every block returns (image,
text)); a 32x 2-D VAE (latents times its scaling factor); text from Qwen2.5-VL (padded to a fixed 1000 tokens
with a mask) beside ByT5 embeddings of any quoted glyph text; the timestep is passed as t (not t / 1000);
distilled guidance (x 1000) and MeanFlow's second timestep where the model has them."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, TokenLayout, first, itself

_JOINT = {"output": Site("", first), "norm1": Site("norm1", first), "attn": Site("attn", first),
          "mlp": Site("ff", itself)}
_SINGLE_NOTE = "single blocks project attention and MLP together (proj_out): read before that projection"
_SINGLE = {
    "output": Site("", first),
    "norm1": Site("norm", first, stream="joint"),
    "attn": Site("attn", first, note=_SINGLE_NOTE),
    "mlp": Site("act_mlp", itself, stream="joint", width_factor=4.0,
                note=_SINGLE_NOTE + "; the mlp_ratio-wide hidden layer"),
}


class HunyuanImageFamily(DiTFamily):
    name = "hunyuanimage"
    transformer_class = "HunyuanImageTransformer2DModel"
    pipeline_class = "HunyuanImagePipeline"
    joint_stream = True  # the double-stream blocks attend over [image; text] in one attention
    block_lists = {"joint": "transformer_blocks", "single": "single_transformer_blocks"}
    sites = {"joint": _JOINT, "single": _SINGLE}

    guidance_argument = "distilled_guidance_scale"

    @property
    def guidance_input(self) -> bool:
        return bool(self.config.get("guidance_embeds"))

    def site_width(self, kind, site):
        if kind == "single" and site == "mlp":  # HunyuanImageSingleTransformerBlock: int(hidden * mlp_ratio)
            return int(self.model_width() * float(self.config["mlp_ratio"]))
        return super().site_width(kind, site)

    # -- latents ----------------------------------------------------------------------------
    @property
    def vae_scale(self):
        # HunyuanImagePipeline.__init__: vae_scale_factor = vae.config.spatial_compression_ratio
        return int(self.vae_config["spatial_compression_ratio"]) if self.vae_config else 1

    @property
    def patch(self):
        p = self.config.get("patch_size") or (1, 1)
        return int(p[-1])

    def normalise_latents(self, latent):
        # HunyuanImagePipeline.__call__ decodes latents / vae.config.scaling_factor: no shift
        return latent * self.vae_config["scaling_factor"]

    # -- noise ------------------------------------------------------------------------------
    def timestep_input(self, sigma, t_int):
        return sigma * 1000.0  # the pipeline passes the scheduler's timestep t itself

    # -- conditioning -----------------------------------------------------------------------
    def null_condition(self, device, dtype):
        import torch

        c = self.config
        cond = {"encoder_hidden_states": torch.zeros(1, 1, c["text_embed_dim"], device=device, dtype=dtype),
                "encoder_attention_mask": torch.ones(1, 1, device=device, dtype=torch.long)}
        if c.get("text_embed_2_dim"):  # no glyph text: the pipeline's zero ByT5 embedding, fully masked
            cond["encoder_hidden_states_2"] = torch.zeros(1, 1, c["text_embed_2_dim"], device=device, dtype=dtype)
            cond["encoder_attention_mask_2"] = torch.zeros(1, 1, device=device, dtype=torch.long)
        return cond

    def encode_prompts(self, pipe, prompts, device):
        emb, mask, emb_2, mask_2 = pipe.encode_prompt(prompt=prompts, device=device, batch_size=len(prompts))
        cond = {"encoder_hidden_states": emb, "encoder_attention_mask": mask}
        if self.config.get("text_embed_2_dim"):
            cond.update(encoder_hidden_states_2=emb_2, encoder_attention_mask_2=mask_2)
        return cond

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x_t, sigma, t_int, cond, guidance):
        import torch

        b, _, h, w = x_t.shape
        self.layout = TokenLayout(start=0, count=(h // self.patch) * (w // self.patch))  # [image; text]
        extra = {}
        if self.guidance_input:
            extra["guidance"] = torch.full((b,), float(guidance) * 1000.0, device=x_t.device, dtype=x_t.dtype)
        if self.config.get("use_meanflow"):
            # The pipeline's timestep_r is the next step's timestep, 0 after the last: one step from t to 0
            extra["timestep_r"] = torch.zeros(b, device=x_t.device, dtype=x_t.dtype)
        self.transformer(hidden_states=x_t, timestep=self.timestep_input(sigma, t_int), return_dict=False,
                         **cond, **extra)

    def describe(self):
        out = {**super().describe(), "guider": "off (one conditional forward)"}
        if self.config.get("use_meanflow"):
            out["meanflow_timestep_r"] = 0
        return out
