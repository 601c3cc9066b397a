"""Lumina-Image 2.0 (``Lumina2Transformer2DModel``, ``Lumina2Pipeline``): a single-stream DiT over Gemma2 hidden
states (the prompt behind the pipeline's system prompt). The caption passes through "context refiner" blocks, the
image tokens (patch 2) through timestep-modulated "noise refiner" blocks that see them alone, then the main layers
read one sequence per sample: [its caption's own tokens; image tokens; zero padding to the batch's longest], so the
image tokens start at each sample's own caption length (``Lumina2Transformer2DModel.forward``'s joint sequence).

Blocks, in forward order: the noise refiner ("refiner") then the main layers ("main"). The context refiner runs
first but holds caption tokens only, so it is not a block here.

The timestep input is 1 - sigma (the pipeline: ``1 - t / num_train_timesteps``; Lumina's t = 0 is noise).
"""

from __future__ import annotations

from dataclasses import dataclass

from probekit.extractors.dit_family import DiTFamily, Site, first, itself

_POST = "before Lumina's post-norm ({}) and its tanh gate"


def _sites(stream: str) -> dict[str, Site]:
    return {"output": Site("", itself, stream=stream), "norm1": Site("norm1", first, stream=stream),
            "attn": Site("attn", itself, stream=stream, note="after the output projection, " + _POST.format("norm2")),
            "mlp": Site("feed_forward", itself, stream=stream, note="the SwiGLU output, " + _POST.format("ffn_norm2"))}


@dataclass
class RowLayout:
    """Image tokens at a different start in every row of the joined sequence (after that row's caption)."""

    starts: list[int]
    count: int

    def image(self, tokens):
        import torch

        return torch.stack([tokens[i, s:s + self.count] for i, s in enumerate(self.starts)])


class Lumina2Family(DiTFamily):
    name = "lumina2"
    transformer_class = "Lumina2Transformer2DModel"
    pipeline_class = "Lumina2Pipeline"
    default_shift = 6.0  # Lumina-Image 2.0's scheduler
    joint_stream = True  # the main layers attend over [caption; image] in one attention
    block_lists = {"refiner": "noise_refiner", "main": "layers"}
    sites = {"refiner": _sites("image"), "main": _sites("joint")}

    def count_key(self, kind):
        return {"refiner": "num_refiner_layers", "main": "num_layers"}[kind]

    def model_width(self):
        return int(self.config["hidden_size"])

    def mu(self, image_seq_len):
        # pipeline_lumina2.py computes `image_seq_len = latents.shape[1]` on (B, C, H, W) latents: the channel
        # count, not the token count, is what its calculate_shift sees (used only with dynamic shifting).
        return self.calculate_shift_mu(self.latent_channels())

    def timestep_input(self, sigma, t_int):
        # pipeline: current_timestep = 1 - t / num_train_timesteps, in float32 (the scheduler's timesteps)
        return 1.0 - sigma.float()

    def null_condition(self, device, dtype):
        import torch

        return {"encoder_hidden_states": torch.zeros(1, 1, self.config["cap_feat_dim"], device=device, dtype=dtype),
                "encoder_attention_mask": torch.ones(1, 1, dtype=torch.long, device=device)}

    def encode_prompts(self, pipe, prompts, device):
        # Every prompt is padded to max_sequence_length with its mask: rows of different prompts concatenate.
        emb, mask, _, _ = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False, device=device)
        return {"encoder_hidden_states": emb, "encoder_attention_mask": mask}

    def forward(self, x_t, sigma, t_int, cond, guidance):
        gh, gw = self.token_grid(*x_t.shape[-2:])
        mask = cond["encoder_attention_mask"]
        # The transformer places each row's image tokens after its mask.sum() caption tokens (right padding).
        self.layout = RowLayout(starts=[int(n) for n in mask.sum(dim=1)], count=gh * gw)
        self.transformer(hidden_states=x_t, timestep=self.timestep_input(sigma, t_int),
                         encoder_hidden_states=cond["encoder_hidden_states"], encoder_attention_mask=mask,
                         return_dict=False)

    def describe(self):
        return {**super().describe(), "blocks": "noise_refiner then layers (the context refiner holds no image tokens)",
                "timestep_input": "1 - sigma",
                "mu_from": "the latent channel count, as pipeline_lumina2.py computes it"}
