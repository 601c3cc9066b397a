"""Ideogram 4 (``Ideogram4Transformer2DModel``, ``Ideogram4Pipeline``): a single-stream DiT over one packed
[left padding, text, image] sequence whose segments attend block-diagonally; a 32-channel FLUX.2 VAE whose latents
are patchified 2x2 into 128-channel tokens (patch rows, patch columns, channels) and normalised with the VAE's
BatchNorm statistics; noise drawn directly in that token layout; text as the concatenated hidden states of 13
Qwen3-VL layers; model time 1 - sigma as the timestep. The pipeline's asymmetric CFG runs a separate
``unconditional_transformer`` on image tokens alone; probekit reads the conditional ``transformer`` (one forward).
The prompt enhancer is not used."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, TokenLayout, itself, pipeline_default

_PATCH = 2  # Ideogram4Pipeline.__init__: `self.patch_size = 2` (not a config entry)
_NORM1 = ("the attention's input: the block applies the AdaLN shift and scale (or scale) to the norm "
          "in its own code, so the modulated input is read where the attention receives it")
_BLOCK = {"output": Site("", itself, stream="joint"),
          "norm1": Site("attention", itself, stream="joint", reads="input", note=_NORM1),
          "attn": Site("attention", itself, stream="joint",
                       note="before the block's post-norm (attention_norm2) and tanh gate"),
          "mlp": Site("feed_forward", itself, stream="joint", note="before the block's ffn_norm2 and tanh gate")}
_SCHEDULE_NOTE = ("Ideogram4Pipeline's resolution-aware logit-normal schedule (_logit_normal_sigmas with "
                  "_resolution_aware_mu from the call's defaults mu and std), evaluated on 1000 steps so that every "
                  "integer timestep t is on its grid (u = t / 1000), then the scheduler's own shift")


class Ideogram4Family(DiTFamily):
    name = "ideogram4"
    transformer_class = "Ideogram4Transformer2DModel"
    pipeline_class = "Ideogram4Pipeline"
    joint_stream = True  # text and image tokens share segment 1 of one self-attention in every block
    block_lists = {"block": "layers"}
    sites = {"block": _BLOCK}
    non_text_components = ("unconditional_transformer",)  # a second transformer: not needed to encode prompts

    def count_key(self, kind):
        return "num_layers"

    # -- latents: noise is drawn as tokens (prepare_latents: (B, grid_h * grid_w, in_channels)) -------------
    @property
    def vae_scale(self):
        # one token per grid cell: the VAE's downsampling times the pipeline's 2x2 patch
        return _PATCH * super().vae_scale if self.vae_config else 1

    @property
    def patch(self):
        return 1

    def encode(self, pixels):
        """VAE mode, 2x2 patches as (patch row, patch column, channel) token channels, then (z - bn_mean) / bn_std:
        the inverse of Ideogram4Pipeline.__call__'s decode (`z * bn_std + bn_mean`, then `z.view(B, gh, gw, p, p,
        C).permute(0, 5, 1, 3, 2, 4)`); the pipeline has no encoder helper of its own."""
        if self.vae is None:
            return pixels
        import torch

        z = self.vae.encode(pixels).latent_dist.mode()
        b, c, h, w = z.shape
        p = _PATCH
        z = z.view(b, c, h // p, p, w // p, p).permute(0, 3, 5, 1, 2, 4).reshape(b, p * p * c, h // p, w // p)
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
        std = torch.sqrt(bn.running_var + self.vae.config.batch_norm_eps).view(1, -1, 1, 1).to(z.device, z.dtype)
        return (z - mean) / std

    @staticmethod
    def tokens(x_t):
        """(B, C, gh, gw) -> (B, gh * gw, C), rows first (the order of _prepare_ids' image positions)."""
        b, c, gh, gw = x_t.shape
        return x_t.permute(0, 2, 3, 1).reshape(b, gh * gw, c)

    def pipeline_latents(self, x_t):
        return self.tokens(x_t)

    # -- noise ------------------------------------------------------------------------------
    def timestep_input(self, sigma, t_int):
        return 1.0 - sigma  # the pipeline's model time: 1 - t / 1000 (0 = noise, 1 = data)

    # -- conditioning -----------------------------------------------------------------------
    # A condition is {"llm_features": (1, L, F) text features right-aligned, "text_lengths": (1,)}: the pipeline
    # left-pads every prompt to max_sequence_length (2048) tokens, but the padding is its own attention segment
    # (segment -1) that no text or image token attends to, so only the real tokens are kept.
    def null_condition(self, device, dtype):
        import torch

        return {"llm_features": torch.zeros(1, 0, self.config["llm_features_dim"], device=device, dtype=dtype),
                "text_lengths": torch.zeros(1, device=device, dtype=torch.long)}

    def encode_prompts(self, pipe, prompts, device):
        from diffusers.models.transformers.transformer_ideogram4 import LLM_TOKEN_INDICATOR

        # grid 0 x 0: the text part of the packed conditioning alone (the image grid is known at the forward)
        feats, _, _, indicator = pipe.encode_prompt(prompt=prompts, grid_h=0, grid_w=0,
                                                    max_sequence_length=self.max_sequence_length, device=device)
        lengths = (indicator == LLM_TOKEN_INDICATOR).sum(dim=1)
        # encode_prompt returns float32; the pipeline casts to the transformer's dtype (the text encoder's, here)
        # before the forward, so casting now changes no number and halves the host cache of every prompt
        feats = feats[:, feats.shape[1] - int(lengths.max()):].to(pipe.text_encoder.dtype)
        return {"llm_features": feats, "text_lengths": lengths}

    @property
    def max_sequence_length(self) -> int:
        return int(pipeline_default(self.pipeline_class, "max_sequence_length"))

    def collate(self, conds, repeats):
        import torch
        import torch.nn.functional as F

        lengths = torch.cat([c["text_lengths"] for c in conds])
        n = int(lengths.max())
        # each row's own tokens, left-padded with zeros to the longest in the batch (as encode_prompt pads)
        feats = torch.cat([F.pad(c["llm_features"][:, c["llm_features"].shape[1] - int(c["text_lengths"]):],
                                 (0, 0, n - int(c["text_lengths"]), 0)) for c in conds])
        return {"llm_features": feats.repeat_interleave(repeats, dim=0),
                "text_lengths": lengths.repeat_interleave(repeats, dim=0)}

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x_t, sigma, t_int, cond, guidance):
        import torch

        b, c, gh, gw = x_t.shape
        image = self.tokens(x_t)
        text = cond["llm_features"]
        n_text, n_img = text.shape[1], image.shape[1]
        position_ids, segment_ids, indicator = self.pipeline._prepare_ids(
            [int(n) for n in cond["text_lengths"]], gh, gw, n_text, x_t.device)
        # as the pipeline's conditional pass: zero latents under the text, zero text features under the image
        hidden = torch.cat([image.new_zeros(b, n_text, c), image], dim=1)
        features = torch.cat([text, text.new_zeros(b, n_img, text.shape[-1])], dim=1)
        self.layout = TokenLayout(start=n_text, count=n_img)
        self.transformer(hidden_states=hidden, timestep=self.timestep_input(sigma, t_int),
                         encoder_hidden_states=features, position_ids=position_ids, segment_ids=segment_ids,
                         indicator=indicator, return_dict=False)

    def sigma(self, schedule, t, grid):
        """The pipeline's own logit-normal schedule at u = t / 1000 (its helper on a 1000-step grid)."""
        if t <= 0:
            return 0.0
        steps = self._schedule(grid)
        return schedule.shifted(float(steps[len(steps) - t]))

    def _schedule(self, grid):
        if getattr(self, "_schedules", None) is None:
            self._schedules = {}
        if grid not in self._schedules:
            side = self.vae_scale * self.patch
            mu = self.helpers._resolution_aware_mu(height=grid[0] * side, width=grid[1] * side,
                                                   base_mu=pipeline_default(self.pipeline_class, "mu"))
            self._schedules[grid] = self.helpers._logit_normal_sigmas(
                1000, mu, std=pipeline_default(self.pipeline_class, "std")).tolist()  # descending: u = 1, ..., 1/1000
        return self._schedules[grid]

    def describe(self):
        return {**super().describe(), "cfg": "off: the conditional transformer alone (no unconditional_transformer)",
                "timestep_input": "1 - sigma", "max_sequence_length": self.max_sequence_length,
                "text_padding": "left padding dropped (its own attention segment)",
                "pipeline_sigma_schedule": _SCHEDULE_NOTE}
