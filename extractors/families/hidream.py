"""HiDream-I1 (``HiDreamImageTransformer2DModel``, ``HiDreamImagePipeline``): the transformer patchifies the
spatial latents itself (padding non-square grids to its max resolution, with a token mask), double-stream blocks
return (image, text), single-stream blocks see the joined [image; text] sequence, both with mixture-of-experts
feed-forwards. Text is two CLIP pooled projections, T5 and the hidden states of several Llama 3 layers (one per
block). Every block's image tokens come first: the first ``h * w`` tokens of its sequence."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, TokenLayout, first, itself

_BLOCK = "each block is a HiDreamBlock wrapper: its layers sit under `block.`"
_PADDED = "image tokens are the first h*w of a sequence padded to the max resolution when the grid is not square"
_JOINT = {
    "output": Site("", first, stream="joint", note=_PADDED),
    "attn": Site("block.attn1", first, stream="joint", note=_PADDED),
    "mlp": Site("block.ff_i", itself, stream="joint", note="the mixture-of-experts output (routed + shared experts)"),
}
_SINGLE_NOTE = "single blocks attend over the joined [image; text] sequence: its image tokens are read"
_SINGLE = {
    "output": Site("", itself, stream="joint"),
    "attn": Site("block.attn1", itself, stream="joint", note=_SINGLE_NOTE),
    "mlp": Site("block.ff_i", itself, stream="joint",
                note=_SINGLE_NOTE + "; the mixture-of-experts output (routed + shared experts)"),
}
_NO_NORM1 = ("norm1 is absent: HiDream's norm1_i is an affine-free LayerNorm; the AdaLN shift and scale are applied "
             "in the block's own forward, so no module outputs the modulated input")


class HiDreamFamily(DiTFamily):
    name = "hidream"
    transformer_class = "HiDreamImageTransformer2DModel"
    pipeline_class = "HiDreamImagePipeline"
    concept_attention = True  # double and single blocks attend over image and text tokens in one attention
    block_lists = {"joint": "double_stream_blocks", "single": "single_stream_blocks"}
    sites = {"joint": _JOINT, "single": _SINGLE}
    missing_sites = {"norm1": _NO_NORM1}

    def max_seq(self) -> int:
        """The transformer's ``max_seq``: the token count every non-square grid is padded to."""
        h, w = self.config["max_resolution"]
        return int(h) * int(w) // (self.patch * self.patch)

    def llama_keep(self) -> list[int]:
        """The Llama hidden-state layers the blocks read (``llama_layers``), each kept once."""
        return sorted(set(int(k) for k in self.config["llama_layers"]))

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
                "mu_from": "calculate_shift(transformer.max_seq)" if self.mu(0) is not None else None}
