"""Qwen-Image (``QwenImageTransformer2DModel``, ``QwenImagePipeline``): an MM-DiT of double-stream blocks that
return (text, image); a causal 3-D VAE (one frame) whose 16 channels are normalised per channel with the
config's mean and std; latents packed 2x2 into 64-channel tokens; text from Qwen2.5-VL's last hidden layer
after a chat template whose first tokens the pipeline drops, with a padding mask the transformer honours;
dynamic (exponential) shift from the token count."""

from __future__ import annotations

from probekit.extractors.dit_family import ConceptDefinition, DiTFamily, Site, TokenLayout, first, itself, last, pipeline_default

_NORM1 = ("the attention's input: the block applies the AdaLN shift and scale (or scale) to the norm "
          "in its own code, so the modulated input is read where the attention receives it")
_JOINT = {"output": Site("", last), "norm1": Site("attn", itself, reads="input", note=_NORM1),
          "attn": Site("attn", first), "mlp": Site("img_mlp", itself)}
#: No reference implementation exists for Qwen-Image: the paper's method as the reference's original FLUX code
#: computes it (each concept alone, attention vectors before the output projections against the model's own image
#: attention, softmax over concepts per block), with the concept tokens of Qwen-Image's text stream: modulated by
#: the block's txt_mod, placed by rotary at their own prompt position.
CONCEPTS = ConceptDefinition(
    reference="the ConceptAttention paper, as helblazer811/ConceptAttention concept_attention/flux/dit_block.py and "
              "flux/pipeline.py compute it (no Qwen-Image reference exists)",
    tokens="each-alone", modulation="prompt", vectors="attention", image_vectors="real", normalise_concepts=False,
    softmax="per-block")


class QwenImageFamily(DiTFamily):
    name = "qwenimage"
    transformer_class = "QwenImageTransformer2DModel"
    pipeline_class = "QwenImagePipeline"
    concept_attention = True  # text and image tokens share one attention ([text; image], QwenDoubleStreamAttnProcessor)
    concept_definition = CONCEPTS
    concept_stream = "text-modulation"
    concept_rotary_style = "complex"
    block_lists = {"joint": "transformer_blocks"}
    sites = {"joint": _JOINT}

    @property
    def guidance_input(self) -> bool:
        return bool(self.config.get("guidance_embeds"))

    def count_key(self, kind):
        return "num_layers"

    # -- latents ----------------------------------------------------------------------------
    @property
    def vae_scale(self):
        # QwenImagePipeline.__init__: vae_scale_factor = 2 ** len(vae.temperal_downsample)
        return 2 ** len(self.vae_config["temperal_downsample"]) if self.vae_config else 1

    def latent_channels(self):
        return int(self.config["in_channels"]) // 4  # packed 2x2 into tokens

    @property
    def patch(self):
        return 2

    def encode(self, pixels):
        """VAE mode of one frame, then (z - latents_mean) / latents_std: QwenImageEditPipeline's
        ``_encode_vae_image`` (argmax; the img2img pipeline normalises the same way but samples)."""
        if self.vae is None:
            return pixels
        from types import SimpleNamespace

        import diffusers

        owner = SimpleNamespace(vae=self.vae, latent_channels=int(self.vae_config["z_dim"]))
        latents = diffusers.QwenImageEditPipeline._encode_vae_image(owner, pixels.unsqueeze(2), None)
        return latents[:, :, 0]  # (B, C, 1, h, w) -> the one frame

    def pipeline_latents(self, x_t):
        b, c, h, w = x_t.shape
        return self.pipeline._pack_latents(x_t, b, c, h, w)

    # -- noise ------------------------------------------------------------------------------
    def mu(self, image_seq_len):
        return self.calculate_shift_mu(image_seq_len)

    def timestep_input(self, sigma, t_int):
        return sigma  # the pipeline passes t / 1000

    # -- conditioning -----------------------------------------------------------------------
    def null_condition(self, device, dtype):
        import torch

        return {"encoder_hidden_states": torch.zeros(1, 1, self.config["joint_attention_dim"], device=device,
                                                     dtype=dtype),
                "encoder_hidden_states_mask": torch.ones(1, 1, device=device, dtype=torch.long)}

    def encode_prompts(self, pipe, prompts, device):
        import torch

        emb, mask = pipe.encode_prompt(prompt=prompts, device=device,
                                       max_sequence_length=pipeline_default(self.pipeline_class, "max_sequence_length"))
        if mask is None:  # encode_prompt drops a mask that masks nothing
            mask = torch.ones(emb.shape[:2], device=emb.device, dtype=torch.long)
        return {"encoder_hidden_states": emb, "encoder_hidden_states_mask": mask}

    # -- concept attention ------------------------------------------------------------------
    def encode_concepts(self, pipe, concepts, device):
        """Each concept alone through the pipeline's encode_prompt (its template's first tokens dropped); the
        concept's own sub-tokens averaged, placed at the position of its last one."""
        import torch

        from probekit.extractors.concept_attention import ConceptText, encoded_concepts

        drop = pipe.prompt_template_encode_start_idx
        hidden, spans = encoded_concepts(pipe, lambda p: pipe.encode_prompt(prompt=p, device=device)[0], concepts)
        rows = [h[span.start - drop:span.stop - drop].mean(0) for h, span in zip(hidden, spans)]
        positions = torch.tensor([span.stop - 1 - drop for span in spans])
        return ConceptText(torch.stack(rows), list(range(len(concepts))), None, [len(s) for s in spans], positions)

    def embed_text(self, states):
        return self.transformer.txt_in(self.transformer.txt_norm(states))

    def concept_rotary(self, positions, grid):
        """Text rotary frequencies at the concepts' positions (text positions follow the image's, as in the
        model's own forward for this grid)."""
        _, text = self.transformer.pos_embed([(1, *grid)], max_txt_seq_len=int(positions.max()) + 1,
                                             device=positions.device)
        return text[positions]

    def collate(self, conds, repeats):
        emb, mask = pad_text([c["encoder_hidden_states"] for c in conds],
                             [c["encoder_hidden_states_mask"] for c in conds])
        return {"encoder_hidden_states": emb.repeat_interleave(repeats, dim=0),
                "encoder_hidden_states_mask": mask.repeat_interleave(repeats, dim=0)}

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x_t, sigma, t_int, cond, guidance):
        import torch

        b, c, h, w = x_t.shape
        packed = self.pipeline._pack_latents(x_t, b, c, h, w)
        text, mask = cond["encoder_hidden_states"], cond["encoder_hidden_states_mask"]
        self.layout = TokenLayout(start=text.shape[1], count=packed.shape[1])  # the joint attention's [text; image]
        extra = {}
        if self.guidance_input:
            extra["guidance"] = torch.full((b,), float(guidance), device=x_t.device, dtype=torch.float32)
        self.transformer(hidden_states=packed, timestep=self.timestep_input(sigma, t_int), encoder_hidden_states=text,
                         encoder_hidden_states_mask=None if bool(mask.all()) else mask,
                         img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False, **extra)

    def describe(self):
        return {**super().describe(), "true_cfg": "off (one conditional forward)",
                "max_sequence_length": pipeline_default(self.pipeline_class, "max_sequence_length")}


def pad_text(embs, masks):
    """Text of different lengths as one batch: each (1, L, D) embedding zero-padded to the longest valid length
    in the batch, with its 0/1 mask (valid tokens come first, as the pipelines stack them)."""
    import torch
    import torch.nn.functional as F

    length = max(int(m.sum(dim=1).max()) for m in masks)
    emb = torch.cat([F.pad(e[:, :length], (0, 0, 0, length - min(e.shape[1], length))) for e in embs])
    mask = torch.cat([F.pad(m[:, :length], (0, length - min(m.shape[1], length))) for m in masks])
    return emb, mask
