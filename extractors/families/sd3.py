"""Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``, ``StableDiffusion3Pipeline``): MM-DiT, joint blocks
return (text, image); the last block is context-pre-only (its text output is None). Also the ShapeWorld
MM-DiT probekit ships (pixel space, text from a plain encoder folder)."""

from __future__ import annotations

from probekit.extractors.dit_family import ConceptDefinition, ConfigOnly, DiTFamily, Site, first, itself, last

_JOINT = {
    "output": Site("", last),
    "norm1": Site("norm1", first),
    "attn": Site("attn", first),
    "mlp": Site("ff", itself),
}


#: The reference's SD3 code: concepts joined into one prompt, CLIP positions 0..C (the start token stays in the
#: stream), vectors before the output projections with the image side from the concept pass, concept vectors
#: L2-normalised, softmax over concepts per block.
CONCEPTS = ConceptDefinition(
    reference="helblazer811/ConceptAttention concept_attention/sd3/pipeline.py (encode_concepts), sd3/dit_block.py, "
              "sd3/concept_attention_pipeline.py (_compute_heatmaps)",
    tokens="joined", modulation="prompt", vectors="attention", image_vectors="concept-pass",
    normalise_concepts=True, softmax="per-block")


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

    concept_definition = CONCEPTS

    def encode_concepts(self, pipe, concepts, device):
        """The joined concepts as a prompt; each concept's CLIP sub-tokens averaged, the start token kept."""
        import torch

        from probekit.extractors.concept_attention import ConceptText, concept_spans, mean_over_spans

        joined = " ".join(concepts)
        emb, _, _, _ = pipe.encode_prompt(prompt=joined, prompt_2=joined, prompt_3=joined, device=device,
                                          do_classifier_free_guidance=False)
        ids = pipe.tokenizer(joined, truncation=True, max_length=pipe.tokenizer_max_length)["input_ids"]
        spans = concept_spans(pipe.tokenizer, concepts, ids, start=1)
        stream = torch.cat([emb[0, :1], mean_over_spans(emb[0], spans)])
        return ConceptText(stream, list(range(1, len(concepts) + 1)), None, [len(s) for s in spans])

    def text_stand_ins(self):
        # Without T5, encode_prompt pads with zeros as wide as transformer.config.joint_attention_dim: the config
        # is all it reads, so the text-only pipeline gets the config, not the weights.
        return {"transformer": ConfigOnly(self.config)}

    def mu(self, image_seq_len):
        return self.calculate_shift_mu(image_seq_len, max_shift_default=1.16)  # SD3's pipeline default

    def forward(self, x_t, sigma, t_int, cond, guidance):
        self.transformer(hidden_states=x_t, timestep=self.timestep_input(sigma, t_int), return_dict=False, **cond)
