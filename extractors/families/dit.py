"""DiT (``DiTTransformer2DModel``, ``DiTPipeline``): class-conditional, DDPM schedule, integer timestep input,
AdaLN-Zero blocks. Conditioned on the null class of classifier-free guidance unless a class label is given."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, first, itself

_BLOCK = {"output": Site("", itself), "norm1": Site("norm1", first), "attn": Site("attn1", itself),
          "mlp": Site("ff", itself)}


class DiTClassFamily(DiTFamily):
    name = "dit"
    transformer_class = "DiTTransformer2DModel"
    pipeline_class = "DiTPipeline"
    noise_default = "ddpm"
    text = False
    block_lists = {"block": "transformer_blocks"}
    sites = {"block": _BLOCK}
    class_label: int | None = None  # set by the extractor (--class-label); None = the null class

    def count_key(self, kind):
        return "num_layers"

    def timestep_input(self, sigma, t_int):
        return t_int

    def label(self) -> int:
        """The class every sample is conditioned on: the null class is the last embedding row."""
        return int(self.class_label) if self.class_label is not None else int(self.config["num_embeds_ada_norm"])

    def null_condition(self, device, dtype):
        import torch

        return {"class_labels": torch.full((1,), self.label(), device=device, dtype=torch.long)}

    def describe(self):
        return {**super().describe(), "class_label": self.label()}

    def forward(self, x_t, sigma, t_int, cond, guidance):
        self.transformer(hidden_states=x_t, timestep=self.timestep_input(sigma, t_int),
                         class_labels=cond["class_labels"], return_dict=False)
