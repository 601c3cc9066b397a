"""Krea 2 (``Krea2Transformer2DModel``, ``Krea2Pipeline``): a single-stream MM-DiT whose every block sees the joined
[text, image] sequence; a causal 3-D VAE (Qwen-Image's, one frame) whose channels are normalised per channel with
the config's mean and std; latents packed 2x2 into tokens; text as a stack of Qwen3-VL hidden states of several
layers in a fixed-length block with a padding mask the transformer honours; dynamic (exponential) shift from the
token count, or a fixed ``mu`` for the distilled (TDM) checkpoint."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, TokenLayout, itself, pipeline_default

_ATTN_NOTE = "after the attention's own sigmoid output gate and to_out, before the block's pregate"
_NORM1 = ("the attention's input: the block applies the AdaLN shift and scale (or scale) to the norm "
          "in its own code, so the modulated input is read where the attention receives it")
_BLOCK = {"output": Site("", itself, stream="joint"),
          "norm1": Site("attn", itself, stream="joint", reads="input", note=_NORM1),
          "attn": Site("attn", itself, stream="joint", note=_ATTN_NOTE),
          "mlp": Site("ff", itself, stream="joint")}
_DISTILLED_MU = 1.15  # Krea2Pipeline.__call__: `if self.config.is_distilled: mu = 1.15`
_MU_RULE = (f"Krea2Pipeline: {_DISTILLED_MU} where model_index.json sets is_distilled (the TDM checkpoint), else "
            "calculate_shift(image_seq_len) over the scheduler config (256, 6400, 0.5, 1.15 when unset)")


class Krea2Family(DiTFamily):
    name = "krea2"
    transformer_class = "Krea2Transformer2DModel"
    pipeline_class = "Krea2Pipeline"
    joint_stream = True  # one self-attention over [text; image] in every block (Krea2AttnProcessor)
    block_lists = {"block": "transformer_blocks"}
    sites = {"block": _BLOCK}

    def count_key(self, kind):
        return "num_layers"

    # -- latents ----------------------------------------------------------------------------
    @property
    def vae_scale(self):
        # Krea2Pipeline.__init__: vae_scale_factor = 2 ** len(vae.temperal_downsample)
        return 2 ** len(self.vae_config["temperal_downsample"]) if self.vae_config else 1

    @property
    def patch(self):
        # The pipeline's patch_size lives in model_index.json, which a family does not see; in_channels is
        # vae z_dim * patch_size ** 2 (the pipeline's num_channels_latents), so the VAE config fixes it.
        if not self.vae_config:
            return int(self._init_default("patch_size"))
        return int(round((int(self.config["in_channels"]) / int(self.vae_config["z_dim"])) ** 0.5))

    def latent_channels(self):
        return int(self.config["in_channels"]) // self.patch ** 2

    def encode(self, pixels):
        """VAE mode of one frame, then (z - latents_mean) / latents_std: the inverse of Krea2Pipeline.__call__'s
        decode (`latents / latents_std + latents_mean` with `latents_std = 1 / std`); the pipeline has no encoder
        helper of its own."""
        if self.vae is None:
            return pixels
        import torch

        latent = self.vae.encode(pixels.unsqueeze(2)).latent_dist.mode()[:, :, 0]
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1).to(latent.device, latent.dtype)
        std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1).to(latent.device, latent.dtype)
        return (latent - mean) / std

    def _pack(self, x_t):
        from types import SimpleNamespace

        b, c, h, w = x_t.shape
        # _pack_latents is an instance method that reads only self.patch_size
        return self.pipeline._pack_latents(SimpleNamespace(patch_size=self.patch), x_t, b, c, h, w)

    def pipeline_latents(self, x_t):
        return self._pack(x_t)

    # -- noise ------------------------------------------------------------------------------
    def is_distilled(self) -> bool:
        """model_index.json's is_distilled; the pipeline's default where the folder has no pipeline index."""
        return bool(self.pipeline_index.get("is_distilled", self._init_default("is_distilled")))

    def _init_default(self, argument: str):
        """The default of one Krea2Pipeline.__init__ argument (a pipeline config entry)."""
        import inspect

        return inspect.signature(self.pipeline.__init__).parameters[argument].default

    def mu(self, image_seq_len):
        cfg = self._scheduler_config()
        if not cfg.get("use_dynamic_shifting"):
            return None  # the pipeline computes mu anyway; a static scheduler ignores it
        if self.is_distilled():
            return _DISTILLED_MU
        return self.helpers.calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256),
                                            cfg.get("max_image_seq_len", 6400), cfg.get("base_shift", 0.5),
                                            cfg.get("max_shift", 1.15))

    def _scheduler_config(self) -> dict:
        """The scheduler's config as the loaded pipeline sees it (class defaults filled in): the pipeline's own
        fallbacks (6400, ...) apply only to keys the scheduler class does not have."""
        import diffusers

        raw = self.scheduler_config or {}
        cls = getattr(diffusers, raw.get("_class_name", ""), None)
        return dict(cls.from_config(raw).config) if cls is not None else dict(raw)

    def timestep_input(self, sigma, t_int):
        return sigma  # the pipeline passes t / 1000; the time embedding scales it by 1000 inside

    # -- conditioning -----------------------------------------------------------------------
    def null_condition(self, device, dtype):
        import torch

        c = self.config
        return {"encoder_hidden_states": torch.zeros(1, 1, c["num_text_layers"], c["text_hidden_dim"], device=device,
                                                     dtype=dtype),
                "encoder_attention_mask": torch.ones(1, 1, device=device, dtype=torch.bool)}

    def encode_prompts(self, pipe, prompts, device):
        # A fixed-length block (padding sits mid-template, before the assistant suffix): every prompt has the same
        # length, so the default collate stacks them.
        emb, mask = pipe.encode_prompt(prompt=prompts, device=device, max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": emb, "encoder_attention_mask": mask}

    @property
    def max_sequence_length(self) -> int:
        return int(pipeline_default(self.pipeline_class, "max_sequence_length"))

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x_t, sigma, t_int, cond, guidance):
        _, _, h, w = x_t.shape
        packed = self._pack(x_t)
        text = cond["encoder_hidden_states"]
        position_ids = self.pipeline.prepare_position_ids(text.shape[1], h // self.patch, w // self.patch, x_t.device)
        self.layout = TokenLayout(start=text.shape[1], count=packed.shape[1])  # every block: [text; image]
        self.transformer(hidden_states=packed, encoder_hidden_states=text, timestep=self.timestep_input(sigma, t_int),
                         position_ids=position_ids, encoder_attention_mask=cond["encoder_attention_mask"],
                         return_dict=False)

    def describe(self):
        return {**super().describe(), "cfg": "off (guidance_scale 0: one conditional forward)",
                "mu_rule": _MU_RULE, "max_sequence_length": self.max_sequence_length}
