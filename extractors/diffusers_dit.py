"""Per-timestep, per-block features from any diffusers DiT-family transformer.

image -> latent (the model's VAE, or the pixels themselves for a pixel-space model)
      -> seeded noise at every requested timestep (one draw per sample, shared by its timesteps)
      -> ONE batched forward over (samples x timesteps)
      -> image-token outputs of the requested blocks (forward hooks), reshaped to (C, h, w).

Families differ only in how the transformer is called and where its blocks are; each is a small
adapter below. Weights come from a local folder (a diffusers pipeline folder, or a bare
transformer folder) or a hub id resolved through the local hub cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from probekit.errors import ProbekitError
from probekit.devices import resolve_device, resolve_dtype
from probekit.extractors.base import Extractor, normalise_layers
from probekit.extractors.hooks import capture_blocks
from probekit.extractors.loading import load_pretrained, read_json, resolve_weights
from probekit.safety import refuse_pickled_weights
from probekit.extractors.noise import NoiseSchedule, sample_noise
from probekit.keys import feature_key
from probekit.provenance import weights_identity

# ---------------------------------------------------------------------------------------------
# Family adapters
# ---------------------------------------------------------------------------------------------
class _Family:
    name = "base"
    noise_default = "flow"
    text = True

    def blocks(self, tr) -> list[torch.nn.Module]:
        return list(tr.transformer_blocks)

    def latent_channels(self, tr) -> int:
        return tr.config.in_channels

    def grid(self, tr, h: int, w: int) -> tuple[int, int]:
        p = tr.config.patch_size
        if h % p or w % p:
            raise ProbekitError(f"latent size {h}x{w} is not divisible by the patch size {p}; change --resolution")
        return h // p, w // p

    def null_condition(self, tr, device, dtype) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def encode(self, pipe, prompts: list[str], device) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, tr, x_t: torch.Tensor, sigma: torch.Tensor, t_int: torch.Tensor, cond: dict,
                extras: dict) -> None:
        raise NotImplementedError


class _SD3(_Family):
    name = "sd3"

    def null_condition(self, tr, device, dtype):
        c = tr.config
        return {"encoder_hidden_states": torch.zeros(1, 1, c.joint_attention_dim, device=device, dtype=dtype),
                "pooled_projections": torch.zeros(1, c.pooled_projection_dim, device=device, dtype=dtype)}

    def encode(self, pipe, prompts, device):
        emb, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=prompts, prompt_3=prompts, device=device,
                                               do_classifier_free_guidance=False)
        return {"encoder_hidden_states": emb, "pooled_projections": pooled}

    def forward(self, tr, x_t, sigma, t_int, cond, extras):
        tr(hidden_states=x_t, timestep=sigma * 1000.0, return_dict=False, **cond)


class _Flux(_Family):
    name = "flux"

    def blocks(self, tr):
        return list(tr.transformer_blocks) + list(tr.single_transformer_blocks)

    def latent_channels(self, tr):
        return tr.config.in_channels // 4  # latents are packed 2x2 into tokens

    def grid(self, tr, h, w):
        if h % 2 or w % 2:
            raise ProbekitError(f"FLUX packs 2x2 latent patches; latent size {h}x{w} must be even")
        return h // 2, w // 2

    def null_condition(self, tr, device, dtype):
        c = tr.config
        return {"encoder_hidden_states": torch.zeros(1, 1, c.joint_attention_dim, device=device, dtype=dtype),
                "pooled_projections": torch.zeros(1, c.pooled_projection_dim, device=device, dtype=dtype)}

    def encode(self, pipe, prompts, device):
        emb, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=prompts, device=device)
        return {"encoder_hidden_states": emb, "pooled_projections": pooled}

    def forward(self, tr, x_t, sigma, t_int, cond, extras):
        b, c, h, w = x_t.shape
        packed = x_t.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        img_ids = torch.zeros(h // 2, w // 2, 3, device=x_t.device, dtype=x_t.dtype)
        img_ids[..., 1] = torch.arange(h // 2, device=x_t.device)[:, None]
        img_ids[..., 2] = torch.arange(w // 2, device=x_t.device)[None, :]
        txt_len = cond["encoder_hidden_states"].shape[1]
        extra = {}
        if tr.config.guidance_embeds:
            extra["guidance"] = torch.full((b,), float(extras["guidance"]), device=x_t.device, dtype=x_t.dtype)
        tr(hidden_states=packed, timestep=sigma, img_ids=img_ids.reshape(-1, 3),
           txt_ids=torch.zeros(txt_len, 3, device=x_t.device, dtype=x_t.dtype), return_dict=False,
           encoder_hidden_states=cond["encoder_hidden_states"], pooled_projections=cond["pooled_projections"], **extra)


class _PixArt(_Family):
    name = "pixart"
    noise_default = "ddpm"

    def null_condition(self, tr, device, dtype):
        return {"encoder_hidden_states": torch.zeros(1, 1, tr.config.caption_channels, device=device, dtype=dtype),
                "encoder_attention_mask": torch.ones(1, 1, device=device, dtype=dtype)}

    def encode(self, pipe, prompts, device):
        emb, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                             clean_caption=False)
        return {"encoder_hidden_states": emb, "encoder_attention_mask": mask}

    def forward(self, tr, x_t, sigma, t_int, cond, extras):
        b, _, h, w = x_t.shape
        added = {"resolution": None, "aspect_ratio": None}
        if tr.use_additional_conditions:
            vae_scale = extras["vae_scale"]
            added = {"resolution": torch.tensor([[h * vae_scale, w * vae_scale]], device=x_t.device).repeat(b, 1),
                     "aspect_ratio": torch.tensor([[w / h]], device=x_t.device).repeat(b, 1)}
        tr(hidden_states=x_t, timestep=t_int, added_cond_kwargs=added, return_dict=False,
           encoder_hidden_states=cond["encoder_hidden_states"], encoder_attention_mask=cond["encoder_attention_mask"])


class _DiT(_Family):
    name = "dit"
    noise_default = "ddpm"
    text = False

    def null_condition(self, tr, device, dtype):
        # The null ("unconditional") class of classifier-free guidance is the last embedding row.
        return {"class_labels": torch.full((1,), tr.config.num_embeds_ada_norm, device=device, dtype=torch.long)}

    def forward(self, tr, x_t, sigma, t_int, cond, extras):
        tr(hidden_states=x_t, timestep=t_int, class_labels=cond["class_labels"], return_dict=False)


FAMILIES: dict[str, _Family] = {
    "SD3Transformer2DModel": _SD3(),
    "FluxTransformer2DModel": _Flux(),
    "PixArtTransformer2DModel": _PixArt(),
    "DiTTransformer2DModel": _DiT(),
}


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _component_class(config_dir: Path, kind: str):
    import diffusers

    config = read_json(config_dir / "config.json") or {}
    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if name else None
    if cls is None:
        raise ProbekitError(f"{config_dir / 'config.json'}: {kind} class {name!r} is not a diffusers model")
    return cls


class DiffusersDiTExtractor(Extractor):
    name = "dit"

    def __init__(self, weights: str | Path, timesteps: Sequence[int] = (250, 500, 750), layers: Sequence[int] = (0,),
                 ensemble: int = 1, seed: int = 0, conditioning: str = "empty", resolution: int | None = None,
                 device: str = "auto", dtype: str = "auto", guidance: float = 3.5, class_label: int | None = None,
                 name: str | None = None, notes: Sequence[str] = ()):
        if weights is None:
            raise ProbekitError("this extractor needs --weights (a diffusers folder or a hub id)")
        if conditioning not in ("empty", "caption"):
            raise ProbekitError(f"conditioning must be 'empty' or 'caption', got {conditioning!r}")
        if ensemble < 1:
            raise ProbekitError(f"ensemble must be >= 1, got {ensemble}")
        self.name = name or self.name
        self.weights = str(weights)
        self.root = resolve_weights(weights)
        refuse_pickled_weights(self.root)  # the whole folder, before any component is read
        self.seed, self.ensemble, self.conditioning = int(seed), int(ensemble), conditioning
        self.resolution, self.guidance, self.class_label = resolution, float(guidance), class_label
        self._notes = list(notes)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._timesteps = [int(t) for t in timesteps]
        for t in self._timesteps:
            if not 0 <= t <= 1000:
                raise ProbekitError(f"timesteps are integers in [0, 1000] (0 = clean image); got {t}")
        self._load()
        self._layers = normalise_layers(layers, len(self.family.blocks(self.transformer)),
                                        f"{self.transformer_class} in {self.root}")
        self._cond_cache: dict[str, dict[str, torch.Tensor]] = {}

    # -- loading ----------------------------------------------------------------------------
    def _load(self) -> None:
        root = self.root
        tdir = root / "transformer" if (root / "transformer" / "config.json").is_file() else root
        if not (tdir / "config.json").is_file():
            raise ProbekitError(f"no diffusers transformer in {root} (expected transformer/config.json or config.json)")
        cls = _component_class(tdir, "transformer")
        if cls.__name__ not in FAMILIES:
            raise ProbekitError(f"{tdir}: {cls.__name__} is not a supported DiT family; supported: "
                                f"{', '.join(FAMILIES)}")
        self.transformer_class = cls.__name__
        self.family = FAMILIES[cls.__name__]
        self.transformer = load_pretrained(cls, tdir, "transformer", torch_dtype=self.dtype)
        self.transformer = self.transformer.to(self.device).eval().requires_grad_(False)
        self.vae = None
        vdir = root / "vae"
        if (vdir / "config.json").is_file():
            self.vae = load_pretrained(_component_class(vdir, "vae"), vdir, "VAE", torch_dtype=self.dtype)
            self.vae = self.vae.to(self.device).eval().requires_grad_(False)
        scheduler_config = read_json(root / "scheduler" / "scheduler_config.json")
        self.schedule = NoiseSchedule.from_scheduler_config(scheduler_config, self.family.noise_default)
        # Text comes from a diffusers pipeline (model_index.json: the pipeline's own encode_prompt) or from a
        # plain text_encoder/ + tokenizer/ pair (TextConditioner: hidden states + pooled output).
        if (root / "model_index.json").is_file() and any(root.glob("text_encoder*/config.json")):
            self.text_source = "pipeline"
        elif (root / "text_encoder" / "config.json").is_file() and (root / "tokenizer").is_dir():
            self.text_source = "encoder"
        else:
            self.text_source = None
        self.has_text_encoder = self.text_source is not None
        if self.conditioning == "caption" and not (self.family.text and self.has_text_encoder):
            raise ProbekitError(f"caption conditioning needs a text encoder, and {root} has none "
                                "(a pipeline folder with model_index.json and text_encoder/, or text_encoder/ "
                                "with tokenizer/)")
        in_ch = self.family.latent_channels(self.transformer)
        if self.vae is None and in_ch != 3:
            raise ProbekitError(f"{root}: the transformer expects {in_ch} latent channels but there is no vae/ folder; "
                                "a model without a VAE must be pixel-space (3 input channels)")
        self._pipe = None
        self._encoder = None

    def _text_pipeline(self):
        if self._pipe is None:
            from diffusers import DiffusionPipeline

            # Only the text side is needed: skip the VAE and reuse the already loaded transformer (SD3's
            # encode_prompt reads transformer.config.joint_attention_dim when there is no T5 encoder).
            # Components saved as [null, null] (e.g. SD3 without T5) must be passed as None explicitly,
            # or from_pretrained refuses the folder.
            absent = {name: None for name, entry in (read_json(self.root / "model_index.json") or {}).items()
                      if isinstance(entry, list) and entry and entry[0] is None}
            self._pipe = load_pretrained(DiffusionPipeline, self.root, "pipeline's text encoders", **absent,
                                         transformer=self.transformer, vae=None, torch_dtype=self.dtype)
            self._pipe.to(self.device)
        return self._pipe

    def _text_encoder(self):
        if self._encoder is None:
            from probekit.extractors.text_conditioning import TextConditioner

            self._encoder = TextConditioner.from_folder(self.root, dtype=self.dtype).to(self.device)
        return self._encoder

    def _condition(self, prompt: str) -> dict[str, torch.Tensor]:
        if prompt not in self._cond_cache:
            if self.family.text and self.has_text_encoder:
                with torch.inference_mode():
                    if self.text_source == "pipeline":
                        cond = self.family.encode(self._text_pipeline(), [prompt], self.device)
                    else:
                        cond = self._text_encoder()([prompt])
                cond = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                        for k, v in cond.items()}
            else:
                cond = self.family.null_condition(self.transformer, self.device, self.dtype)
                if self.class_label is not None and "class_labels" in cond:
                    cond["class_labels"] = torch.full_like(cond["class_labels"], int(self.class_label))
            self._cond_cache[prompt] = cond
        return self._cond_cache[prompt]

    # -- contract ---------------------------------------------------------------------------
    @property
    def timesteps(self) -> list[int]:
        return list(self._timesteps)

    @property
    def layers(self) -> list[int]:
        return list(self._layers)

    def feature_keys(self) -> list[str]:
        return [feature_key(t, layer) for t in self._timesteps for layer in self._layers]

    def notes(self) -> list[str]:
        notes = list(self._notes)
        if self.family.text and not self.has_text_encoder:
            notes.append("no text encoder in the weights folder: conditioned on null (zero) text embeddings")
        return notes

    def weights_identity(self) -> dict[str, Any]:
        return weights_identity(self.weights)

    def config(self) -> dict[str, Any]:
        return {
            "extractor": self.name, "weights": self.weights, "family": self.family.name,
            "transformer_class": self.transformer_class, "timesteps": self.timesteps, "layers": self.layers,
            "ensemble": self.ensemble, "seed": self.seed, "conditioning": self.conditioning,
            "text_encoder": self.text_source if self.family.text else None, "resolution": self.resolution,
            "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
            "latent_space": "vae" if self.vae is not None else "pixels", "noise_schedule": self.schedule.describe(),
            "guidance": self.guidance if self.family.name == "flux" else None,
            "class_label": self._class_label_used(), "num_blocks": len(self.family.blocks(self.transformer)),
            "noise": "one N(0, I) draw per (sample, ensemble member), shared by all timesteps of the sample",
        }

    def _class_label_used(self) -> int | None:
        if self.family.name != "dit":
            return None
        return int(self.class_label) if self.class_label is not None else int(self.transformer.config.num_embeds_ada_norm)

    # -- extraction -------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the latents the transformer denoises (VAE mode, scaled) or [-1, 1] pixels."""
        x = images.to(self.device, self.dtype)
        if self.resolution is not None and x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        x = x * 2.0 - 1.0
        if self.vae is None:
            return x
        latent = self.vae.encode(x).latent_dist.mode()
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return (latent - shift) * cfg.scaling_factor

    def noised_batch(self, x0: torch.Tensor, indices: Sequence[int], draw: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B*T, C, h, w) noised latents, sample-major, with each row's sigma and integer timestep."""
        b, c, h, w = x0.shape
        seq_len = int(torch.tensor(self.family.grid(self.transformer, h, w)).prod())
        rows, sigmas, ts = [], [], []
        for i, index in enumerate(indices):
            eps = sample_noise((c, h, w), self.seed, int(index), draw).to(self.device, torch.float32)
            for t in self._timesteps:
                rows.append(self.schedule.add_noise(x0[i:i + 1].float(), eps[None], t, seq_len))
                sigmas.append(self.schedule.sigma(t, seq_len) if self.schedule.kind == "flow" else t / 1000.0)
                ts.append(NoiseSchedule.ddpm_t(t))
        return (torch.cat(rows).to(self.dtype), torch.tensor(sigmas, device=self.device, dtype=self.dtype),
                torch.tensor(ts, device=self.device, dtype=torch.long))

    def model_inputs(self, images: torch.Tensor, captions: Sequence[str], indices: Sequence[int], draw: int = 0):
        """Everything one forward needs: (x_t, sigma, t_int, cond, extras, grid). Public so tests can replay it."""
        x0 = self.encode_images(images)
        x_t, sigma, t_int = self.noised_batch(x0, indices, draw)
        prompts = list(captions) if self.conditioning == "caption" else [""] * len(indices)
        per_sample = [self._condition(p) for p in prompts]
        n_t = len(self._timesteps)
        cond = {k: torch.cat([c[k] for c in per_sample]).repeat_interleave(n_t, dim=0) for k in per_sample[0]}
        extras = {"guidance": self.guidance,
                  "vae_scale": 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1}
        return x_t, sigma, t_int, cond, extras, self.family.grid(self.transformer, *x0.shape[-2:])

    def feature_shapes(self, image_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        """(inner width, token rows, token columns) of every map, from the configs alone (no forward)."""
        h, w = (self.resolution, self.resolution) if self.resolution is not None else image_size
        if self.vae is not None:
            scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
            if h % scale or w % scale:
                raise ProbekitError(f"image size {h}x{w} is not divisible by the VAE's downsampling factor {scale}; "
                                    "change --resolution")
            h, w = h // scale, w // scale
        gh, gw = self.family.grid(self.transformer, h, w)
        c = self.transformer.config
        width = int(c.num_attention_heads * c.attention_head_dim)
        return {k: (width, gh, gw) for k in self.feature_keys()}

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, captions: Sequence[str], indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Maps on the extractor's device: in the compute dtype for one noise draw, float32 means for several."""
        b, n_t = images.shape[0], len(self._timesteps)
        blocks = self.family.blocks(self.transformer)
        sums: dict[str, torch.Tensor] = {}
        for draw in range(self.ensemble):
            x_t, sigma, t_int, cond, extras, (gh, gw) = self.model_inputs(images, captions, indices, draw)
            captured = capture_blocks(blocks, self._layers, lambda: self.family.forward(
                self.transformer, x_t, sigma, t_int, cond, extras), n_img=gh * gw)
            missing = set(self._layers) - set(captured)
            if missing:
                raise ProbekitError(f"blocks {sorted(missing)} of {self.transformer_class} never ran during the forward")
            for layer, tokens in captured.items():
                if self.ensemble > 1:
                    tokens = tokens.float()
                maps = tokens.reshape(b, n_t, gh, gw, -1).permute(0, 1, 4, 2, 3)  # (B, T, C, h, w)
                for j, t in enumerate(self._timesteps):
                    key = feature_key(t, layer)
                    sums[key] = sums[key] + maps[:, j] if key in sums else maps[:, j]
        if self.ensemble == 1:
            return {k: sums[k] for k in self.feature_keys()}
        return {k: sums[k] / self.ensemble for k in self.feature_keys()}
