"""FLUX.1 (``FluxTransformer2DModel``, ``FluxPipeline``): latents packed 2x2 into tokens, RoPE position ids,
dynamic shift from the token count, distilled guidance as an input (dev), joint blocks then single blocks that
see the joined [text, image] sequence."""

from __future__ import annotations

from probekit.extractors.dit_family import ConceptDefinition, DiTFamily, Site, TokenLayout, first, itself, last

_JOINT = {"output": Site("", last), "norm1": Site("norm1", first), "attn": Site("attn", first),
          "mlp": Site("ff", itself)}
_SINGLE_NOTE = "single blocks project attention and MLP together (proj_out): read before that projection"
_SINGLE = {
    "output": Site("", last),
    "norm1": Site("norm", first, stream="joint"),
    "attn": Site("attn", itself, stream="joint", note=_SINGLE_NOTE),
    "mlp": Site("act_mlp", itself, stream="joint", width_factor=4.0, note=_SINGLE_NOTE + "; the 4x-wide hidden layer"),
}


#: The reference's diffusers FLUX code: each concept alone through T5 (no start token: its own first sub-token,
#: padded to 64), the stream modulated by the timestep and guidance with the pooled CLIP embedding of the joined
#: concepts, vectors after the output projections, the image side from the model's own attention. Its heatmap
#: code takes the softmax over patches (dim=-1, though its comment says concepts); probekit follows the paper and
#: the reference's original FLUX code: softmax over concepts per block.
CONCEPTS = ConceptDefinition(
    reference="helblazer811/ConceptAttention concept_attention/diffusers/flux/pipeline.py (encode_concepts), "
              "diffusers/flux/dit.py, diffusers/flux/dit_block.py",
    tokens="each-alone", modulation="concepts", vectors="projected", image_vectors="real",
    normalise_concepts=False, softmax="per-block", max_sequence_length=64)


class FluxFamily(DiTFamily):
    name = "flux"
    transformer_class = "FluxTransformer2DModel"
    pipeline_class = "FluxPipeline"
    concept_attention = True
    block_lists = {"joint": "transformer_blocks", "single": "single_transformer_blocks"}
    sites = {"joint": _JOINT, "single": _SINGLE}

    @property
    def guidance_input(self) -> bool:
        return bool(self.config.get("guidance_embeds"))

    def latent_channels(self):
        return int(self.config["in_channels"]) // 4  # latents are packed 2x2 into tokens

    @property
    def patch(self):
        return 2

    def pipeline_latents(self, x_t):
        b, c, h, w = x_t.shape
        return self.pipeline._pack_latents(x_t, b, c, h, w)

    def mu(self, image_seq_len):
        return self.calculate_shift_mu(image_seq_len)

    def timestep_input(self, sigma, t_int):
        # FluxPipeline: t.to(latents.dtype) / 1000 (t = 1000 sigma); the transformer scales it by 1000 inside
        return (sigma * 1000.0).to(self.transformer.dtype) / 1000.0

    def null_condition(self, device, dtype):
        import torch

        c = self.config
        return {"encoder_hidden_states": torch.zeros(1, 1, c["joint_attention_dim"], device=device, dtype=dtype),
                "pooled_projections": torch.zeros(1, c["pooled_projection_dim"], device=device, dtype=dtype)}

    def encode_prompts(self, pipe, prompts, device):
        emb, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=prompts, device=device)
        return {"encoder_hidden_states": emb, "pooled_projections": pooled}

    concept_definition = CONCEPTS

    def encode_concepts(self, pipe, concepts, device):
        """Each concept alone through T5, its own sub-tokens averaged; the joined concepts' pooled CLIP."""
        from probekit.extractors.concept_attention import ConceptText, mean_over_spans

        hidden = pipe._get_t5_prompt_embeds(prompt=list(concepts), max_sequence_length=CONCEPTS.max_sequence_length,
                                            device=device)
        counts = [len(pipe.tokenizer_2(c, add_special_tokens=False)["input_ids"]) for c in concepts]
        stream = mean_over_spans(hidden.flatten(0, 1), [range(i * hidden.shape[1], i * hidden.shape[1] + n)
                                                        for i, n in enumerate(counts)])
        pooled = pipe._get_clip_prompt_embeds(prompt=" ".join(concepts), device=device)
        return ConceptText(stream, list(range(len(concepts))), pooled, counts)

    def forward(self, x_t, sigma, t_int, cond, guidance):
        import torch

        pipeline = self.pipeline
        b, c, h, w = x_t.shape
        packed = pipeline._pack_latents(x_t, b, c, h, w)
        img_ids = pipeline._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
        text = cond["encoder_hidden_states"]
        self.layout = TokenLayout(start=text.shape[1], count=packed.shape[1])
        extra = {}
        if self.guidance_input:
            extra["guidance"] = torch.full((b,), float(guidance), device=x_t.device, dtype=torch.float32)
        self.transformer(hidden_states=packed, timestep=self.timestep_input(sigma, t_int), img_ids=img_ids,
                         txt_ids=torch.zeros(text.shape[1], 3, device=x_t.device, dtype=x_t.dtype),
                         encoder_hidden_states=text, pooled_projections=cond["pooled_projections"],
                         return_dict=False, **extra)
