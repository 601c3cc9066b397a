"""HiDream-I1 (``HiDreamImageTransformer2DModel``, ``HiDreamImagePipeline``): the transformer patchifies the
spatial latents itself (padding non-square grids to its max resolution, with a token mask), double-stream blocks
return (image, text), single-stream blocks see the joined [image; text] sequence, both with mixture-of-experts
feed-forwards. Text is two CLIP pooled projections, T5 and the hidden states of several Llama 3 layers (one per
block). Every block's image tokens come first: the first ``h * w`` tokens of its sequence."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, TokenLayout, first, itself

_PADDED = "image tokens are the first h*w of a sequence padded to the max resolution when the grid is not square"
_NORM1 = ("the attention's input: the block applies the AdaLN shift and scale (or scale) to the norm "
          "in its own code, so the modulated input is read where the attention receives it")
_JOINT = {
    "output": Site("", first, stream="joint", note=_PADDED),
    "norm1": Site("block.attn1", itself, stream="joint", reads="input", note=_NORM1),
    "attn": Site("block.attn1", first, stream="joint", note=_PADDED),
    "mlp": Site("block.ff_i", itself, stream="joint", note="the mixture-of-experts output (routed + shared experts)"),
}
_SINGLE_NOTE = "single blocks attend over the joined [image; text] sequence: its image tokens are read"
_SINGLE = {
    "output": Site("", itself, stream="joint"),
    "norm1": Site("block.attn1", itself, stream="joint", reads="input", note=_NORM1),
    "attn": Site("block.attn1", itself, stream="joint", note=_SINGLE_NOTE),
    "mlp": Site("block.ff_i", itself, stream="joint",
                note=_SINGLE_NOTE + "; the mixture-of-experts output (routed + shared experts)"),
}


class HiDreamFamily(DiTFamily):
    name = "hidream"
    transformer_class = "HiDreamImageTransformer2DModel"
    pipeline_class = "HiDreamImagePipeline"
    joint_stream = True  # double and single blocks attend over image and text tokens in one attention
    block_lists = {"joint": "double_stream_blocks", "single": "single_stream_blocks"}
    sites = {"joint": _JOINT, "single": _SINGLE}

    def max_seq(self) -> int:
        """The transformer's ``max_seq``: the token count every non-square grid is padded to."""
        h, w = self.config["max_resolution"]
        return int(h) * int(w) // (self.patch * self.patch)

    def llama_keep(self) -> list[int]:
        """The Llama hidden-state layers the blocks read (``llama_layers``), each kept once."""
        return sorted(set(int(k) for k in self.config["llama_layers"]))

    @property
    def integer_timesteps(self) -> bool:
        """UniPC (HiDream-I1-Full's scheduler) hands the transformer int64 timesteps; FlowMatch (Dev, Fast) float."""
        return "UniPC" in (self.scheduler_config or {}).get("_class_name", "")

    def timestep_input(self, sigma, t_int):
        # The pipeline passes the scheduler's timestep t itself. FlowMatch: t = 1000 sigma in float32. UniPC with
        # flow sigmas (scheduling_unipc_multistep.py, set_timesteps): a first sigma of 1 is lowered by 1e-6, then
        # `timesteps = sigmas * num_train_timesteps` is cast to int64 (truncated).
        if not self.integer_timesteps:
            return sigma * 1000.0
        s = sigma.double()
        s = s.where((s - 1.0).abs() >= 1e-6, s - 1e-6)
        return (s * 1000.0).long()

    def mu(self, image_seq_len):
        # The pipeline computes mu from the transformer's max_seq, not the image's token count
        # (pipeline_hidream_image.py: `mu = calculate_shift(self.transformer.max_seq)`, default arguments).
        if not (self.scheduler_config or {}).get("use_dynamic_shifting"):
            return None
        return self.helpers.calculate_shift(self.max_seq())

    def normalise_latents(self, latent):
        # The pipeline has no encoder; this inverts its decoding (pipeline_hidream_image.py:
        # `latents = (latents / self.vae.config.scaling_factor) + self.vae.config.shift_factor`).
        return super().normalise_latents(latent)

    def null_condition(self, device, dtype):
        import torch

        c = self.config
        t5_dim, llama_dim = c["caption_channels"]
        return {"encoder_hidden_states_t5": torch.zeros(1, 1, t5_dim, device=device, dtype=dtype),
                "llama3": torch.zeros(1, len(self.llama_keep()), 1, llama_dim, device=device, dtype=dtype),
                "pooled_embeds": torch.zeros(1, c["text_emb_dim"], device=device, dtype=dtype)}

    def encode_prompts(self, pipe, prompts, device):
        t5, _, llama, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=device,
                                                        do_classifier_free_guidance=False)
        # The pipeline's Llama states are (layers, batch, tokens, dim): kept batch-first, and only the layers the
        # blocks read, so that the extractor's per-prompt cache slices and batches them like every other tensor.
        return {"encoder_hidden_states_t5": t5, "llama3": llama[self.llama_keep()].transpose(0, 1).contiguous(),
                "pooled_embeds": pooled}

    def forward(self, x_t, sigma, t_int, cond, guidance):
        gh, gw = self.token_grid(*x_t.shape[-2:])
        self.layout = TokenLayout(start=0, count=gh * gw)
        # The transformer only indexes the Llama states by layer (`encoder_hidden_states_llama3[k] for k in
        # llama_layers`), so the kept layers are handed over keyed by layer.
        llama = {k: cond["llama3"][:, j] for j, k in enumerate(self.llama_keep())}
        self.transformer(hidden_states=x_t, timesteps=self.timestep_input(sigma, t_int),
                         encoder_hidden_states_t5=cond["encoder_hidden_states_t5"],
                         encoder_hidden_states_llama3=llama, pooled_embeds=cond["pooled_embeds"], return_dict=False)

    def describe(self):
        # The pipeline renders every request at (default_sample_size * vae_scale)^2 pixels of area
        # (pipeline_hidream_image.py: `self.default_sample_size = 128`, then `S_max` in __call__); probekit runs the
        # transformer at the resolution it is given: the pipeline's forward when that area is the one.
        return {**super().describe(), "pipeline_pixel_area": (128 * self.vae_scale) ** 2,
                "mu_from": "calculate_shift(transformer.max_seq)" if self.mu(0) is not None else None,
                "timestep_input": "int64 (UniPC)" if self.integer_timesteps else "float32 1000 sigma"}
