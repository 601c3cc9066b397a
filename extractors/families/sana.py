"""Sana (``SanaTransformer2DModel``, ``SanaPipeline``): a DiT with linear self-attention over the image tokens and
cross-attention to Gemma2 hidden states (no joint text stream: every block's sequence is the image tokens alone).
Latents come from a deep-compression autoencoder (``AutoencoderDC``: ``.latent``, times ``scaling_factor``); the
scheduler is DPM-Solver++ run on flow sigmas (``use_flow_sigmas``, ``flow_shift``); the transformer's timestep is
the scheduler's timestep times ``timestep_scale``. The prompt is encoded behind the pipeline's default "complex
human instruction" prefix, as SanaPipeline.__call__ does."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, itself, pipeline_default


def _spatial_tokens(output):
    """GLUMBConv works on a (B, C, h, w) map: back to (B, h*w, C) tokens, as the block flattens it."""
    return output.flatten(2, 3).transpose(1, 2)


_NORM1 = ("the attention's input: the block applies the AdaLN shift and scale (or scale) to the norm "
          "in its own code, so the modulated input is read where the attention receives it")
_BLOCK = {"output": Site("", itself), "norm1": Site("attn1", itself, reads="input", note=_NORM1),
          "attn": Site("attn1", itself, note="the linear self-attention (after its output projection)"),
          "mlp": Site("ff", _spatial_tokens, note="GLUMBConv (a convolutional MLP) output, before its gate")}


class SanaFamily(DiTFamily):
    name = "sana"
    transformer_class = "SanaTransformer2DModel"
    pipeline_class = "SanaPipeline"
    block_lists = {"block": "transformer_blocks"}
    sites = {"block": _BLOCK}

    def count_key(self, kind):
        return "num_layers"

    @property
    def vae_scale(self):
        if self.vae_config is None:
            return 1
        return 2 ** (len(self.vae_config["encoder_block_out_channels"]) - 1)  # SanaPipeline.vae_scale_factor

    def encode(self, pixels):
        if self.vae is None:
            return pixels
        # pipeline_sana_controlnet.py (its control image): vae.encode(x).latent * scaling_factor; the DC-AE is
        # deterministic (no distribution to take the mode of)
        return self.vae.encode(pixels).latent * self.vae_config["scaling_factor"]

    def timestep_input(self, sigma, t_int):
        # pipeline: timestep = t * transformer.config.timestep_scale, with the scheduler's t = 1000 sigma (float32)
        return sigma.float() * 1000.0 * float(self.config.get("timestep_scale") or 1.0)

    def null_condition(self, device, dtype):
        import torch

        return {"encoder_hidden_states": torch.zeros(1, 1, self.config["caption_channels"], device=device, dtype=dtype),
                "encoder_attention_mask": torch.ones(1, 1, dtype=torch.long, device=device)}

    def prompt_defaults(self) -> dict:
        """The text arguments SanaPipeline.__call__ hands encode_prompt by default (encode_prompt's own defaults
        differ: no instruction prefix)."""
        return {k: pipeline_default(self.pipeline_class, k)
                for k in ("complex_human_instruction", "max_sequence_length", "clean_caption")}

    def encode_prompts(self, pipe, prompts, device):
        # Every prompt comes back max_sequence_length long (bos + its last tokens) with its mask.
        emb, mask, _, _ = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False, device=device,
                                             **self.prompt_defaults())
        return {"encoder_hidden_states": emb, "encoder_attention_mask": mask}

    def forward(self, x_t, sigma, t_int, cond, guidance):
        self.transformer(x_t, encoder_hidden_states=cond["encoder_hidden_states"],
                         encoder_attention_mask=cond["encoder_attention_mask"],
                         timestep=self.timestep_input(sigma, t_int), return_dict=False)

    def describe(self):
        defaults = self.prompt_defaults()
        return {**super().describe(), "complex_human_instruction": bool(defaults["complex_human_instruction"]),
                "max_sequence_length": defaults["max_sequence_length"],
                "timestep_input": "1000 sigma x timestep_scale (unrounded; DPM-Solver's own timesteps are integers)"}
