"""AuraFlow (``AuraFlowTransformer2DModel``, ``AuraFlowPipeline``): MM-DiT joint blocks that return (text, image),
then single blocks over the joined [register tokens; text; image] sequence; UMT5 text padded to 256 tokens (the
padding zeroed, no mask); a static flow shift; the transformer takes t / 1000 and scales it by 1000 itself."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, TokenLayout, first, itself, last

_JOINT = {"output": Site("", last), "norm1": Site("norm1", first), "attn": Site("attn", first),
          "mlp": Site("ff", itself)}
_SINGLE_NOTE = "single blocks see the joined [register; text; image] sequence: its image tokens are read"
_SINGLE = {
    "output": Site("", itself, stream="joint"),
    "norm1": Site("norm1", first, stream="joint", note=_SINGLE_NOTE),
    "attn": Site("attn", itself, stream="joint", note=_SINGLE_NOTE),
    "mlp": Site("ff", itself, stream="joint", note=_SINGLE_NOTE),
}


class AuraFlowFamily(DiTFamily):
    name = "auraflow"
    transformer_class = "AuraFlowTransformer2DModel"
    pipeline_class = "AuraFlowPipeline"
    default_shift = 1.73  # AuraFlow's scheduler config, for a folder without one
    joint_stream = True  # joint blocks attend over text and image tokens together
    block_lists = {"joint": "joint_transformer_blocks", "single": "single_transformer_blocks"}
    sites = {"joint": _JOINT, "single": _SINGLE}

    def count_key(self, kind):
        return {"joint": "num_mmdit_layers", "single": "num_single_dit_layers"}[kind]

    def normalise_latents(self, latent):
        # No shift: the pipeline decodes `latents / self.vae.config.scaling_factor` (pipeline_aura_flow.py) and has
        # no encoding of its own.
        return latent * self.vae_config["scaling_factor"]

    def timestep_input(self, sigma, t_int):
        # AuraFlowPipeline: torch.tensor([t / 1000]) cast to the latents' dtype (t = 1000 sigma, float32); the
        # transformer's Timesteps(scale=1000) scales it back inside
        return (sigma * 1000.0 / 1000.0).to(self.transformer.dtype)

    def null_condition(self, device, dtype):
        import torch

        return {"encoder_hidden_states": torch.zeros(1, 1, self.config["joint_attention_dim"], device=device,
                                                     dtype=dtype)}

    def encode_prompts(self, pipe, prompts, device):
        emb, _, _, _ = pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False, device=device)
        return {"encoder_hidden_states": emb}  # its mask is already applied: padded positions are zero

    def forward(self, x_t, sigma, t_int, cond, guidance):
        text = cond["encoder_hidden_states"]
        gh, gw = self.token_grid(*x_t.shape[-2:])
        registers = self.transformer.register_tokens.shape[1]  # prepended to the text inside the forward
        self.layout = TokenLayout(start=registers + text.shape[1], count=gh * gw)
        self.transformer(x_t, encoder_hidden_states=text, timestep=self.timestep_input(sigma, t_int),
                         return_dict=False)
