"""PixArt-alpha / sigma (``PixArtTransformer2DModel``, ``PixArtAlphaPipeline``): a cross-attention DiT on a DDPM
schedule; the integer timestep is the input; resolution and aspect ratio are extra conditions at 1024 px."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, itself

_NO_NORM1 = ("norm1 is absent: PixArt's blocks (ada_norm_single) modulate the normalised input in the block's own "
             "code, not in a module a hook can read")
_BLOCK = {"output": Site("", itself), "attn": Site("attn1", itself, note="self-attention"),
          "mlp": Site("ff", itself)}


class PixArtFamily(DiTFamily):
    name = "pixart"
    transformer_class = "PixArtTransformer2DModel"
    pipeline_class = "PixArtAlphaPipeline"
    noise_default = "ddpm"
    block_lists = {"block": "transformer_blocks"}
    sites = {"block": _BLOCK}
    missing_sites = {"norm1": _NO_NORM1}

    def count_key(self, kind):
        return "num_layers"

    def timestep_input(self, sigma, t_int):
        return t_int

    def null_condition(self, device, dtype):
        import torch

        return {"encoder_hidden_states": torch.zeros(1, 1, self.config["caption_channels"], device=device, dtype=dtype),
                "encoder_attention_mask": torch.ones(1, 1, device=device, dtype=dtype)}

    def encode_prompts(self, pipe, prompts, device):
        emb, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                             clean_caption=False)
        return {"encoder_hidden_states": emb, "encoder_attention_mask": mask}

    def forward(self, x_t, sigma, t_int, cond, guidance):
        import torch

        b, _, h, w = x_t.shape
        added = {"resolution": None, "aspect_ratio": None}
        if self.config["sample_size"] == 128:  # as the pipeline decides (1024 px models)
            s = self.vae_scale
            added = {"resolution": torch.tensor([[h * s, w * s]], device=x_t.device, dtype=x_t.dtype).repeat(b, 1),
                     "aspect_ratio": torch.tensor([[h / w]], device=x_t.device, dtype=x_t.dtype).repeat(b, 1)}
        self.transformer(hidden_states=x_t, timestep=self.timestep_input(sigma, t_int), added_cond_kwargs=added,
                         encoder_hidden_states=cond["encoder_hidden_states"],
                         encoder_attention_mask=cond["encoder_attention_mask"], return_dict=False)
