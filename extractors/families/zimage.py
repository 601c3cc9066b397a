"""Z-Image (``ZImageTransformer2DModel``, ``ZImagePipeline``): a single-stream DiT. The transformer takes LISTS of
per-sample latents (C, 1, H, W) and caption features (L_i, D) (Qwen3 hidden states, the caption's own tokens
only). Image tokens (patch 2) pass through image-only "noise refiner" blocks, the caption through "context
refiner" blocks, then the main layers read one sequence per sample, [image; caption], each part padded to a
multiple of SEQ_MULTI_OF (32) and the batch padded to its longest sample with an attention mask.

Blocks, in forward order: the noise refiner ("refiner") then the main layers ("main"). The noise refiner is
timestep-modulated and sees the image tokens alone, on their spatial grid, so it is a probe-able early stage of the
image stream; the context refiner sees caption tokens only (no image tokens) and is not a block here. In both
kinds the image tokens are the first ``h*w`` positions of every sample's sequence (basic mode builds [x, cap],
``ZImageTransformer2DModel._build_unified_sequence``), whatever the caption's length or the padding.

The timestep input is 1 - sigma (``timestep = (1000 - t) / 1000`` in the pipeline's loop; the transformer
multiplies by ``t_scale``); the model predicts the negated velocity, which does not concern the features.
"""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, TokenLayout, itself

_SEQ = "the sequence is per-sample padded; the image tokens are its first h*w positions"
_NORM1 = ("the attention's input: the block applies the AdaLN shift and scale (or scale) to the norm "
          "in its own code, so the modulated input is read where the attention receives it")
_BLOCK = {
    "output": Site("", itself, stream="joint", note=_SEQ),
    "norm1": Site("attention", itself, stream="joint", reads="input", note=_NORM1),
    "attn": Site("attention", itself, stream="joint",
                 note="after the output projection, before Z-Image's post-norm (attention_norm2) and its tanh gate"),
    "mlp": Site("feed_forward", itself, stream="joint",
                note="the SwiGLU output, before Z-Image's post-norm (ffn_norm2) and its tanh gate"),
}


class ZImageFamily(DiTFamily):
    name = "zimage"
    transformer_class = "ZImageTransformer2DModel"
    pipeline_class = "ZImagePipeline"
    joint_stream = True  # the main layers attend over [image; caption] in one attention
    block_lists = {"refiner": "noise_refiner", "main": "layers"}
    sites = {"refiner": _BLOCK, "main": _BLOCK}

    def count_key(self, kind):
        return {"refiner": "n_refiner_layers", "main": "n_layers"}[kind]

    def model_width(self):
        return int(self.config["dim"])

    @property
    def patch(self):
        return 2  # the pipeline calls the transformer with its forward's default patch_size=2 (f_patch_size=1)

    def mu(self, image_seq_len):
        # The pipeline always computes calculate_shift(...) and passes it as mu; the scheduler uses it only when
        # it shifts dynamically (Z-Image's own scheduler shifts statically).
        return self.calculate_shift_mu(image_seq_len)

    def timestep_input(self, sigma, t_int):
        # pipeline: timestep = (1000 - t) / 1000, in float32 (the scheduler's timesteps)
        return 1.0 - sigma.float()

    def null_condition(self, device, dtype):
        import torch

        return {"cap_feats": torch.zeros(1, 1, self.config["cap_feat_dim"], device=device, dtype=dtype),
                "cap_lens": torch.ones(1, dtype=torch.long, device=device)}

    def encode_prompts(self, pipe, prompts, device):
        # _encode_prompt rewrites its prompt list in place (chat template): hand it a copy.
        embeds, _ = pipe.encode_prompt(prompt=list(prompts), device=device, do_classifier_free_guidance=False)
        return self._padded(embeds)

    @staticmethod
    def _padded(feats):
        """Per-sample (L_i, D) caption features as one zero-padded tensor and their lengths (the extractor caches
        and moves tensors, not lists)."""
        import torch
        from torch.nn.utils.rnn import pad_sequence

        return {"cap_feats": pad_sequence(list(feats), batch_first=True),
                "cap_lens": torch.tensor([len(f) for f in feats], dtype=torch.long, device=feats[0].device)}

    @staticmethod
    def _unpadded(cond):
        return [f[:int(n)] for f, n in zip(cond["cap_feats"], cond["cap_lens"])]

    def collate(self, conds, repeats):
        feats = [f for c in conds for f in self._unpadded(c) for _ in range(repeats)]
        return self._padded(feats)

    def forward(self, x_t, sigma, t_int, cond, guidance):
        gh, gw = self.token_grid(*x_t.shape[-2:])
        self.layout = TokenLayout(start=0, count=gh * gw)
        # As the pipeline: latents (B, C, H, W) -> a list of (C, 1, H, W), captions as a list of (L_i, D).
        self.transformer(list(x_t.unsqueeze(2).unbind(0)), self.timestep_input(sigma, t_int), self._unpadded(cond),
                         return_dict=False)

    def describe(self):
        return {**super().describe(), "blocks": "noise_refiner then layers (the context refiner holds no image tokens)",
                "timestep_input": "1 - sigma"}
