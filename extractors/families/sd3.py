"""Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``, ``StableDiffusion3Pipeline``): MM-DiT, joint blocks
return (text, image); the last block is context-pre-only (its text output is None). Also the ShapeWorld
MM-DiT probekit ships (pixel space, text from a plain encoder folder)."""

from __future__ import annotations

from probekit.extractors.dit_family import ConfigOnly, DiTFamily, Site, first, itself, last

_JOINT = {
    "output": Site("", last),
    "norm1": Site("norm1", first),
    "attn": Site("attn", first),
    "mlp": Site("ff", itself),
}


class SD3Family(DiTFamily):
    name = "sd3"
    transformer_class = "SD3Transformer2DModel"
    pipeline_class = "StableDiffusion3Pipeline"
    concept_attention = True
    block_lists = {"joint": "transformer_blocks"}
    sites = {"joint": _JOINT}

    def null_condition(self, device, dtype):
        import torch

        c = self.config
        return {"encoder_hidden_states": torch.zeros(1, 1, c["joint_attention_dim"], device=device, dtype=dtype),
                "pooled_projections": torch.zeros(1, c["pooled_projection_dim"], device=device, dtype=dtype)}

    def encode_prompts(self, pipe, prompts, device):
        emb, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=prompts, prompt_3=prompts, device=device,
                                               do_classifier_free_guidance=False)
        return {"encoder_hidden_states": emb, "pooled_projections": pooled}

    def text_stand_ins(self):
        # Without T5, encode_prompt pads with zeros as wide as transformer.config.joint_attention_dim: the config
        # is all it reads, so the text-only pipeline gets the config, not the weights.
        return {"transformer": ConfigOnly(self.config)}

    def mu(self, image_seq_len):
        return self.calculate_shift_mu(image_seq_len, max_shift_default=1.16)  # SD3's pipeline default

    def forward(self, x_t, sigma, t_int, cond, guidance):
        self.transformer(hidden_states=x_t, timestep=self.timestep_input(sigma, t_int), return_dict=False, **cond)
