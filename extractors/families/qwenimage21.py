"""Qwen-Image 2.1 (``QwenImage21Transformer2DModel``, ``QwenImage21Pipeline``): a single-stream, block-causal DiT
over one joined [text; image] sequence; a 16x causal 3-D VAE of 64 channels that encodes RGBA, normalised per
channel with the config's mean and std; one token per latent cell (no 2x2 packing: each text-encoder image slot
stands for 2x2 tokens); text from Qwen3-VL; dynamic shift from the token count.

Text and image tokens share rotary positions along the sequence: the image's frame position is the number of text
tokens before it, so padding a caption would move the image. Captions of different lengths are therefore run as
separate forwards (one per text length), each exactly as the pipeline runs that caption alone."""

from __future__ import annotations

from probekit.errors import ProbekitError
from probekit.extractors.dit_family import DiTFamily, Site, TokenLayout, itself

_NORM1 = ("the attention's input: the block applies the AdaLN shift and scale (or scale) to the norm "
          "in its own code, so the modulated input is read where the attention receives it")
_BLOCK = {"output": Site("", itself, stream="joint"),
          "norm1": Site("attn", itself, stream="joint", reads="input", note=_NORM1), "attn": Site("attn", itself, stream="joint"),
          "mlp": Site("img_mlp", itself, stream="joint", note="SwiGLU output, before its tanh gate")}


class _Gather:
    """Per-site buffers that collect the rows of several forwards (one per text length) into one batch."""

    def __init__(self, total: int):
        self.total, self.rows, self.count, self.buffers = total, None, 0, []

    def put(self, tokens):
        k, self.count = self.count, self.count + 1
        if k == len(self.buffers):
            self.buffers.append(tokens.new_zeros((self.total, *tokens.shape[1:])))
        self.buffers[k][self.rows] = tokens
        return self.buffers[k]


class QwenImage21Family(DiTFamily):
    name = "qwenimage21"
    transformer_class = "QwenImage21Transformer2DModel"
    pipeline_class = "QwenImage21Pipeline"
    # Text and image tokens are one sequence in one attention (block-causal: image attends to text, text only to
    # earlier text).
    joint_stream = True
    block_lists = {"single": "transformer_blocks"}
    sites = {"single": _BLOCK}

    def __init__(self, config, vae_config=None, scheduler_config=None, pipeline_index=None):
        super().__init__(config, vae_config, scheduler_config, pipeline_index)
        self._gather: _Gather | None = None

    def count_key(self, kind):
        return "num_layers"

    # -- latents ----------------------------------------------------------------------------
    @property
    def vae_scale(self):
        return 16 if self.vae_config else 1  # QwenImage21Pipeline.__init__: vae_scale_factor = 16

    def token_grid(self, h, w):
        if h % 2 or w % 2:  # each text-encoder image slot stands for 2x2 latent tokens
            raise ProbekitError(f"latent size {h}x{w} must be even (images a multiple of 32 px); change --resolution")
        return super().token_grid(h, w)

    def encode(self, pixels):
        """VAE mode of one opaque RGBA frame (the pipeline converts condition images to RGBA), then
        (z - latents_mean) / latents_std: QwenImage21Pipeline's ``_encode_vae_image``."""
        if self.vae is None:
            return pixels
        from types import SimpleNamespace

        import torch

        if int(self.vae_config.get("in_channels", 3)) == 4:
            pixels = torch.cat([pixels, torch.ones_like(pixels[:, :1])], dim=1)  # alpha 255 -> 1 in [-1, 1]
        owner = SimpleNamespace(vae=self.vae, latent_channels=int(self.vae_config["z_dim"]))
        return self.pipeline._encode_vae_image(owner, pixels.unsqueeze(2), None)[:, :, 0]

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

        return {"encoder_hidden_states": torch.zeros(1, 1, self.config["context_in_dim"], device=device, dtype=dtype),
                "encoder_hidden_states_mask": torch.ones(1, 1, device=device, dtype=torch.long),
                "image_pad_mask": torch.zeros(1, 1, device=device, dtype=torch.bool)}

    def encode_prompts(self, pipe, prompts, device):
        import torch

        emb, mask, image_pad = pipe.encode_prompt(prompt=prompts, device=device)
        if mask is None:  # encode_prompt drops a mask that masks nothing
            mask = torch.ones(emb.shape[:2], device=emb.device, dtype=torch.long)
        return {"encoder_hidden_states": emb, "encoder_hidden_states_mask": mask, "image_pad_mask": image_pad}

    def collate(self, conds, repeats):
        import torch
        import torch.nn.functional as F

        from probekit.extractors.families.qwenimage import pad_text

        emb, mask = pad_text([c["encoder_hidden_states"] for c in conds],
                             [c["encoder_hidden_states_mask"] for c in conds])
        n = emb.shape[1]
        image_pad = torch.cat([F.pad(c["image_pad_mask"][:, :n], (0, n - min(n, c["image_pad_mask"].shape[1])))
                               for c in conds])
        out = {"encoder_hidden_states": emb, "encoder_hidden_states_mask": mask, "image_pad_mask": image_pad}
        return {k: v.repeat_interleave(repeats, dim=0) for k, v in out.items()}

    # -- forward ----------------------------------------------------------------------------
    def image_tokens(self, spec, output):
        tokens = super().image_tokens(spec, output)
        return tokens if self._gather is None else self._gather.put(tokens)

    def forward(self, x_t, sigma, t_int, cond, guidance):
        import torch

        from probekit.models.hooks import StopForward

        lengths = cond["encoder_hidden_states_mask"].sum(dim=1)
        groups = [(int(n), (lengths == n).nonzero()[:, 0]) for n in torch.unique(lengths)]
        if len(groups) == 1:
            return self._forward_rows(x_t, sigma, cond, groups[0][0], slice(None))
        # Each site hook reads image_tokens once per forward, in the same order: gather the groups' rows there.
        self._gather = _Gather(x_t.shape[0])
        try:
            for n, rows in groups:
                self._gather.rows, self._gather.count = rows, 0
                try:
                    self._forward_rows(x_t, sigma, cond, n, rows)
                except StopForward:
                    pass
        finally:
            self._gather = None

    def _forward_rows(self, x_t, sigma, cond, n_text, rows):
        """The pipeline's first step for ``rows`` of the batch, whose captions are ``n_text`` tokens long."""
        x = x_t[rows]
        b, c, h, w = x.shape
        packed = self.pipeline._pack_latents(x, b, c, h, w)
        text = cond["encoder_hidden_states"][rows, :n_text]
        image_pad = cond["image_pad_mask"][rows, :n_text].bool()
        img_mask = _with_target_slots(image_pad, packed.shape[1] // 4)
        self.layout = TokenLayout(start=n_text, count=h * w)
        self.transformer(hidden_states=packed, timestep=self.timestep_input(sigma[rows], None),
                         encoder_hidden_states=text, encoder_hidden_states_mask=None, img_shapes=[[(1, h, w)]] * b,
                         img_mask=img_mask, return_dict=False)

    def describe(self):
        return {**super().describe(), "true_cfg": "off (one conditional forward)",
                "text_batching": "one forward per caption length (unpadded, as the pipeline runs one caption)"}


def _with_target_slots(image_pad, n):
    """The pipeline's ``append_target_slots``: n image slots for the target after the text."""
    import torch

    return torch.cat([image_pad, image_pad.new_ones(image_pad.shape[0], n)], dim=1)
