"""CogView4 (``CogView4Transformer2DModel``, ``CogView4Pipeline``): MM-DiT blocks that return (image, text), a
GLM text encoder (its second-to-last hidden states, a prompt left-padded to a multiple of 16 tokens), SDXL-style
size conditions, and a schedule whose noise level is shifted (``mu`` from the image's token count, CogView4's own
square-root ``calculate_shift``) while the transformer is given the unshifted timestep."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, first

_BLOCK = {"output": Site("", first), "norm1": Site("norm1", first), "attn": Site("attn1", first)}
_NO_MLP = ("mlp is absent: CogView4's blocks run one FeedForward (`ff`) on the image and then on the text stream, so "
           "a hook on it cannot keep the image call apart")


def _masked_processor():
    """CogView4's attention processor honouring a text padding mask. Diffusers' own turns the mask into a float
    0/1 tensor, which scaled_dot_product_attention adds to the scores instead of masking; the pipeline never
    passes one. With a key-padding mask, each sample of a batch of prompts of different lengths gets exactly
    the attention of its prompt alone."""
    import torch
    import torch.nn.functional as F
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_cogview4 import CogView4AttnProcessor

    class TextMaskedCogView4AttnProcessor(CogView4AttnProcessor):
        def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
            if attention_mask is None:
                return super().__call__(attn, hidden_states, encoder_hidden_states, None, image_rotary_emb)
            # as CogView4AttnProcessor.__call__, with a boolean key mask in place of its float one
            dtype, n_text = encoder_hidden_states.dtype, encoder_hidden_states.shape[1]
            joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
            q, k, v = (proj(joint).unflatten(2, (attn.heads, -1)).transpose(1, 2)
                       for proj in (attn.to_q, attn.to_k, attn.to_v))
            q, k = attn.norm_q(q).to(dtype=dtype), attn.norm_k(k).to(dtype=dtype)
            q[:, :, n_text:] = apply_rotary_emb(q[:, :, n_text:], image_rotary_emb, use_real_unbind_dim=-2)
            k[:, :, n_text:] = apply_rotary_emb(k[:, :, n_text:], image_rotary_emb, use_real_unbind_dim=-2)
            keys = torch.cat([attention_mask.bool(), attention_mask.new_ones(hidden_states.shape[:2]).bool()], dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])
            out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2, 3).type_as(q)))
            text, image = out.split([n_text, out.shape[1] - n_text], dim=1)
            return image, text

    return TextMaskedCogView4AttnProcessor()


def _pad(embeds):
    """(B, L, D) text right-padded with zeros to the longest of ``embeds`` (each (1, L_i, D)), and its mask."""
    import torch

    longest = max(e.shape[1] for e in embeds)
    out = embeds[0].new_zeros(len(embeds), longest, embeds[0].shape[2])
    mask = torch.zeros(len(embeds), longest, dtype=torch.bool, device=embeds[0].device)
    for i, e in enumerate(embeds):
        out[i, :e.shape[1]], mask[i, :e.shape[1]] = e[0], True
    return out, mask


class CogView4Family(DiTFamily):
    name = "cogview4"
    transformer_class = "CogView4Transformer2DModel"
    pipeline_class = "CogView4Pipeline"
    joint_stream = True  # text and image tokens attend in one joint attention
    block_lists = {"joint": "transformer_blocks"}
    sites = {"joint": _BLOCK}
    missing_sites = {"mlp": _NO_MLP}
    _masking = False

    def count_key(self, kind):
        return "num_layers"

    def normalise_latents(self, latent):
        # No shift, whatever the VAE config says: the pipeline decodes `latents / scaling_factor`
        # (pipeline_cogview4.py), and the control pipeline encodes with `vae_shift_factor = 0`
        # (pipeline_cogview4_control.py: `(control_image - vae_shift_factor) * self.vae.config.scaling_factor`).
        return latent * self.vae_config["scaling_factor"]

    def mu(self, image_seq_len):
        cfg = self.scheduler_config or {}
        if not cfg.get("use_dynamic_shifting"):
            return None
        return self.helpers.calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256),
                                            cfg.get("base_shift", 0.25), cfg.get("max_shift", 0.75))

    def timestep_input(self, sigma, t_int):
        # The pipeline's timesteps are integers (linspace(1000, 1, N) cast to int64), handed to the scheduler beside
        # their shifted sigmas: the transformer gets t unshifted, while the noise level is the shifted sigma.
        # Float32 as the pipeline passes it (a bfloat16 t would round 999 to 1000).
        import torch

        return t_int.to(torch.float32)

    def null_condition(self, device, dtype):
        import torch

        return {"encoder_hidden_states": torch.zeros(1, 1, self.config["text_embed_dim"], device=device, dtype=dtype),
                "text_mask": torch.ones(1, 1, dtype=torch.bool, device=device)}

    def encode_prompts(self, pipe, prompts, device):
        # One prompt at a time: the pipeline pads a batch of prompts to its longest with pad tokens the GLM
        # attends to, so a prompt's embedding would depend on the prompts beside it.
        embeds = [pipe.encode_prompt(p, do_classifier_free_guidance=False, device=device)[0] for p in prompts]
        text, mask = _pad(embeds)
        return {"encoder_hidden_states": text, "text_mask": mask}

    def collate(self, conds, repeats):
        text, mask = _pad([c["encoder_hidden_states"][:, c["text_mask"][0]] for c in conds])
        return {"encoder_hidden_states": text.repeat_interleave(repeats, dim=0),
                "text_mask": mask.repeat_interleave(repeats, dim=0)}

    def forward(self, x_t, sigma, t_int, cond, guidance):
        import torch

        b, _, h, w = x_t.shape
        text, mask = cond["encoder_hidden_states"], cond["text_mask"]
        if not bool(mask.all()) and not self._masking:
            processor = _masked_processor()
            for block in self.transformer.transformer_blocks:
                block.attn1.set_processor(processor)
            self._masking = True
        # original_size = target_size = (height, width) in pixels, crop (0, 0): the pipeline's defaults
        size = torch.tensor([[h * self.vae_scale, w * self.vae_scale]], device=x_t.device, dtype=text.dtype)
        size = size.repeat(b, 1)
        self.transformer(hidden_states=x_t, encoder_hidden_states=text, timestep=self.timestep_input(sigma, t_int),
                         original_size=size, target_size=size, crop_coords=torch.zeros_like(size),
                         attention_mask=None if bool(mask.all()) else mask, return_dict=False)

    def describe(self):
        return {**super().describe(), "timestep_input": "t unshifted (probekit's t clipped to 999: t=1000 is given "
                                                        "as 999, where the pipeline's first step passes 1000)"}
