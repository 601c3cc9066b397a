"""FLUX.2 dev and Klein (``Flux2Transformer2DModel``; ``Flux2Pipeline`` / ``Flux2KleinPipeline``): a 32-channel VAE
whose latents are patchified 2x2 into 128 channels and normalised with the VAE's BatchNorm statistics, noise drawn
in that patchified layout, 4-axis RoPE position ids, an empirical ``mu`` that depends on the number of steps, joint
blocks then single blocks that see the joined [text, image] sequence. Dev takes distilled guidance as an input;
Klein has none (and runs CFG, which probekit leaves off: one conditional forward)."""

from __future__ import annotations

from probekit.extractors.dit_family import ConceptDefinition, DiTFamily, Site, TokenLayout, first, itself, last, pipeline_default

_SINGLE_MLP = ("single blocks fuse attention and MLP (Flux2ParallelSelfAttention): the MLP's SwiGLU hidden layer "
               "(attn.mlp_act_fn), mlp_ratio x the model width, before the fused output projection")
_NORM1 = ("the attention's input: the block applies the AdaLN shift and scale (or scale) to the norm "
          "in its own code, so the modulated input is read where the attention receives it")
_JOINT = {"output": Site("", last), "norm1": Site("attn", itself, reads="input", note=_NORM1),
          "attn": Site("attn", first), "mlp": Site("ff", itself)}
_SINGLE = {"output": Site("", itself, stream="joint"),
           "norm1": Site("attn", itself, stream="joint", reads="input", note=_NORM1),
           "mlp": Site("attn.mlp_act_fn", itself, stream="joint", width_factor=3.0, note=_SINGLE_MLP)}
_NO_SINGLE_ATTN = ("single blocks project the attention output and the MLP hidden layer together (attn.to_out); "
                   "the attention output alone is a function result (dispatch_attention_fn), not a module output")


#: The reference's FLUX.2 code: each concept alone through the pipeline's prompt encoding (hidden states of three
#: Mistral layers), the token of the concept (the reference takes slot 510, the concept's last sub-token under
#: left padding; probekit averages the concept's own sub-tokens and places them at the last one's position),
#: rotary positions of the text tokens, the text stream's shared modulation, attention vectors before the output
#: projections with the image side from the model's own attention, mean over blocks and timesteps then a softmax
#: over concepts at temperature 1000, the last three joint blocks by default.
CONCEPTS = ConceptDefinition(
    reference="helblazer811/ConceptAttention concept_attention/flux2/pipeline.py (generate_image, encode_image, "
              "compute_heatmaps_from_attention_dicts), flux2/dit_block.py",
    tokens="each-alone", modulation="prompt", vectors="attention", image_vectors="real", normalise_concepts=False,
    softmax="after-mean", temperature=1000.0, last_blocks=3)


class Flux2Family(DiTFamily):
    name = "flux2"
    transformer_class = "Flux2Transformer2DModel"
    pipeline_class = "Flux2Pipeline"
    concept_attention = True  # joint blocks attend over [text; image] in one attention
    concept_definition = CONCEPTS
    concept_stream = "shared-modulation"
    block_lists = {"joint": "transformer_blocks", "single": "single_transformer_blocks"}
    sites = {"joint": _JOINT, "single": _SINGLE}
    missing_sites = {"attn": _NO_SINGLE_ATTN}

    def __init__(self, config, vae_config=None, scheduler_config=None, pipeline_index=None):
        super().__init__(config, vae_config, scheduler_config, pipeline_index)
        # The folder's model_index.json names its pipeline; a bare transformer folder is told apart by its config:
        # dev is the guidance-distilled transformer, Klein (Qwen3 text, CFG) has no guidance embedder. Their
        # helpers are copies; only encode_prompt differs, and that is called on the loaded pipeline itself.
        named = self.pipeline_index.get("_class_name")
        self.pipeline_class = named if named in ("Flux2Pipeline", "Flux2KleinPipeline") else (
            "Flux2Pipeline" if self.guidance_input else "Flux2KleinPipeline")

    @property
    def guidance_input(self) -> bool:
        return bool(self.config.get("guidance_embeds"))

    def site_width(self, kind, site):
        if kind == "single" and site == "mlp":
            return int(self.model_width() * self.config.get("mlp_ratio", 3.0))
        return super().site_width(kind, site)

    # -- latents: noise is drawn patchified (Flux2Pipeline.prepare_latents), one token per cell -------------
    @property
    def vae_scale(self) -> int:
        return 2 * super().vae_scale

    def encode(self, pixels):
        from types import SimpleNamespace

        # _encode_vae_image reads only self.vae and self._patchify_latents: VAE mode, 2x2 patchify, BatchNorm stats
        owner = SimpleNamespace(vae=self.vae, _patchify_latents=self.pipeline._patchify_latents)
        return self.pipeline._encode_vae_image(owner, pixels, None)

    # -- noise --------------------------------------------------------------------------------------------
    @property
    def num_inference_steps(self) -> int:
        return int(pipeline_default(self.pipeline_class, "num_inference_steps"))

    def mu(self, image_seq_len):
        if not (self.scheduler_config or {}).get("use_dynamic_shifting"):
            return None
        return self.helpers.compute_empirical_mu(image_seq_len, self.num_inference_steps)

    def timestep_input(self, sigma, t_int):
        # Flux2Pipeline and Klein: t.to(latents.dtype) / 1000 (t = 1000 sigma); the transformer scales it by 1000 inside
        return (sigma * 1000.0).to(self.transformer.dtype) / 1000.0

    # -- conditioning -------------------------------------------------------------------------------------
    def null_condition(self, device, dtype):
        import torch

        return {"encoder_hidden_states": torch.zeros(1, 1, self.config["joint_attention_dim"], device=device,
                                                     dtype=dtype)}

    def encode_prompts(self, pipe, prompts, device):
        # Mistral3 (dev) or Qwen3 (Klein) hidden states of three layers, padded to 512 tokens, no mask
        emb, _ = pipe.encode_prompt(prompt=prompts, device=device)
        return {"encoder_hidden_states": emb}

    def encode_concepts(self, pipe, concepts, device):
        """Each concept alone through the pipeline's own encode_prompt; its sub-tokens averaged, placed at the
        position (text id) of its last one."""
        import torch

        from probekit.extractors.concept_attention import ConceptText, encoded_concepts

        ids = {}

        def encode(prompts):
            emb, ids["text"] = pipe.encode_prompt(prompt=prompts, device=device)
            return emb

        states, spans = [], []
        for concept in concepts:  # one at a time: each concept's text ids come with its own encoding
            hidden, span = encoded_concepts(pipe, encode, [concept])
            states.append(hidden[0][span[0].start:span[0].stop].mean(0))
            spans.append((span[0], ids["text"][0, span[0].stop - 1]))
        return ConceptText(torch.stack(states), list(range(len(concepts))), None, [len(s) for s, _ in spans],
                           torch.stack([p for _, p in spans]))

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, x_t, sigma, t_int, cond, guidance):
        import torch

        pipeline = self.pipeline
        text = cond["encoder_hidden_states"]
        packed = pipeline._pack_latents(x_t)
        self.layout = TokenLayout(start=text.shape[1], count=packed.shape[1])
        g = None
        if self.guidance_input:
            g = torch.full((x_t.shape[0],), float(guidance), device=x_t.device, dtype=torch.float32)
        self.transformer(hidden_states=packed, encoder_hidden_states=text, timestep=self.timestep_input(sigma, t_int),
                         img_ids=pipeline._prepare_latent_ids(x_t).to(x_t.device),
                         txt_ids=pipeline._prepare_text_ids(text).to(x_t.device), guidance=g, return_dict=False)

    def describe(self):
        out = super().describe()
        out["pipeline_chosen_by"] = ("model_index.json" if self.pipeline_index.get("_class_name") == self.pipeline_class
                                     else "transformer config guidance_embeds (true: Flux2Pipeline, false: Klein)")
        if (self.scheduler_config or {}).get("use_dynamic_shifting"):
            out["mu_num_inference_steps"] = self.num_inference_steps
        return out
