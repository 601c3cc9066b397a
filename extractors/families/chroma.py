"""Chroma (``ChromaTransformer2DModel``, ``ChromaPipeline``): FLUX.1-schnell pruned, T5 text only, modulation from
a timestep approximator (no pooled text, no guidance input), latents packed 2x2 into tokens, dynamic shift from the
token count, and a text attention mask that keeps the prompt and its first padding token. Joint blocks then single
blocks that see the joined [text, image] sequence.

The mask is passed as bool (keep / drop). ChromaPipeline itself hands the transformer a float 0/1 mask, which
scaled-dot-product attention adds to the logits instead of masking (diffusers issues #11724, #12116, #13619): with
that mask padding is attended. probekit reads Chroma as its reference implementation masks; the tests prove the maps
equal the pipeline's with the pipeline's own prompt encoding and its mask as bool, and that the float mask is the
only difference."""

from __future__ import annotations

from probekit.extractors.dit_family import DiTFamily, Site, TokenLayout, first, itself, last

_JOINT = {"output": Site("", last), "norm1": Site("norm1", first), "attn": Site("attn", first),
          "mlp": Site("ff", itself)}
_SINGLE_NOTE = "single blocks project attention and MLP together (proj_out): read before that projection"
_SINGLE = {
    "output": Site("", itself, stream="joint"),
    "norm1": Site("norm", first, stream="joint"),
    "attn": Site("attn", itself, stream="joint", note=_SINGLE_NOTE),
    "mlp": Site("act_mlp", itself, stream="joint", width_factor=4.0, note=_SINGLE_NOTE + "; the 4x-wide hidden layer"),
}


class ChromaFamily(DiTFamily):
    name = "chroma"
    transformer_class = "ChromaTransformer2DModel"
    pipeline_class = "ChromaPipeline"
    joint_stream = True  # joint blocks attend over [text; image] in one attention
    block_lists = {"joint": "transformer_blocks", "single": "single_transformer_blocks"}
    sites = {"joint": _JOINT, "single": _SINGLE}

    def latent_channels(self):
        return int(self.config["in_channels"]) // 4  # latents are packed 2x2 into tokens

    @property
    def patch(self):
        return 2

    # encode: the VAE mode, then (z - shift_factor) * scaling_factor as ChromaImg2ImgPipeline._encode_vae_image
    # does (pipeline_chroma_img2img.py, line 287): the base class's normalise_latents.

    def pipeline_latents(self, x_t):
        b, c, h, w = x_t.shape
        return self.pipeline._pack_latents(x_t, b, c, h, w)

    def mu(self, image_seq_len):
        return self.calculate_shift_mu(image_seq_len)

    def timestep_input(self, sigma, t_int):
        # ChromaPipeline: t.to(latents.dtype) / 1000 (t = 1000 sigma); the transformer scales it by 1000 inside
        return (sigma * 1000.0).to(self.transformer.dtype) / 1000.0

    def null_condition(self, device, dtype):
        import torch

        return {"encoder_hidden_states": torch.zeros(1, 1, self.config["joint_attention_dim"], device=device,
                                                     dtype=dtype),
                "attention_mask": torch.ones(1, 1, device=device, dtype=torch.bool)}

    def encode_prompts(self, pipe, prompts, device):
        emb, _, mask, _, _, _ = pipe.encode_prompt(prompt=prompts, device=device, do_classifier_free_guidance=False)
        return {"encoder_hidden_states": emb, "attention_mask": mask.bool()}  # keep / drop, see the module's doc

    def forward(self, x_t, sigma, t_int, cond, guidance):
        import torch

        pipeline = self.pipeline
        b, c, h, w = x_t.shape
        packed = pipeline._pack_latents(x_t, b, c, h, w)
        text = cond["encoder_hidden_states"]
        self.layout = TokenLayout(start=text.shape[1], count=packed.shape[1])
        # _prepare_attention_mask never reads self: the text mask, then every image token kept
        mask = pipeline._prepare_attention_mask(None, b, packed.shape[1], x_t.dtype,
                                                attention_mask=cond["attention_mask"])
        # text ids are zeros, as ChromaPipeline.encode_prompt builds them inline (pipeline_chroma.py, line 323)
        txt_ids = torch.zeros(text.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
        img_ids = pipeline._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
        self.transformer(hidden_states=packed, timestep=self.timestep_input(sigma, t_int), encoder_hidden_states=text,
                         txt_ids=txt_ids, img_ids=img_ids, attention_mask=mask, return_dict=False)

    def describe(self):
        return {**super().describe(), "text_attention_mask": "bool (the pipeline passes float 0/1: not a mask)"}
