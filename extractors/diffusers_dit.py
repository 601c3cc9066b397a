"""Per-timestep, per-block features from any diffusers DiT-family transformer.

image -> latent (the family's VAE encoding and normalisation, or the pixels themselves for a pixel-space model)
      -> seeded noise at every requested timestep (one draw per sample, shared by its timesteps)
      -> ONE batched forward over (samples x timesteps)
      -> image tokens at the requested capture sites of the requested blocks (forward hooks), as (C, h, w) maps.

What differs between transformer classes lives in one family module each (``extractors/families/``, looked up
by the transformer's class in ``probekit.registries.DIT_FAMILIES``); this class keeps what they share: loading,
the prompt cache, the noise, the batched forward and the capture.

Memory at real size: a folder's text encoders can be as large as its transformer (FLUX.2-dev: 24 B beside
32 B). Nothing but configs is read when the extractor is built; ``prepare`` encodes every distinct prompt once
(the empty prompt is one), keeps the embeddings on the host and frees the text encoders, and only then does the
first forward load the transformer and the VAE onto the device.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from probekit.devices import resolve_device, resolve_dtype
from probekit.errors import ProbekitError
from probekit.extractors.base import Extractor, normalise_layers, parse_resolution
from probekit.extractors.dit_family import SITE_MEANINGS, Cond, DiTFamily
from probekit.models.hooks import capture_sites, token_maps
from probekit.models.loading import load_pretrained, quiet_loading, read_json, resolve_weights
from probekit.models.noise import NoiseSchedule, sample_noise
from probekit.keys import DEFAULT_SITE, feature_key
from probekit.provenance import weights_identity
from probekit.safety import refuse_pickled_weights

PROMPT_BATCH = 8  # prompts per text-encoder call in ``prepare``


@dataclass
class ForwardInputs:
    """Everything one batched forward needs, rows sample-major over (samples x timesteps)."""

    x_t: torch.Tensor  # (B*T, C, h, w) noised latents in the family's spatial layout
    sigma: torch.Tensor  # (B*T,) float32 noise levels (flow) or t / 1000 (DDPM)
    t_int: torch.Tensor  # (B*T,) integer timesteps: t in [0, 1000] (flow), on the scheduler's grid (DDPM)
    cond: Cond
    grid: tuple[int, int]  # token rows, token columns


def family_for(transformer_class: str, where: Path) -> type[DiTFamily]:
    from probekit.registries import DIT_FAMILIES

    if transformer_class not in DIT_FAMILIES:
        raise ProbekitError(f"{where}: {transformer_class} is not a supported DiT family; supported: "
                            f"{', '.join(DIT_FAMILIES.names())} (see `probekit ls families`)")
    return DIT_FAMILIES.get(transformer_class).load()


def _diffusers_class(config_dir: Path, kind: str):
    import diffusers

    config = read_json(config_dir / "config.json") or {}
    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if name else None
    if cls is None:
        raise ProbekitError(f"{config_dir / 'config.json'}: {kind} class {name!r} is not a diffusers model")
    return cls


def _full_config(cls, folder: Path) -> dict[str, Any]:
    """A component's config.json with the defaults of its class filled in (what from_pretrained would use),
    without building the model."""
    init, _, _ = cls.extract_init_dict(cls.load_config(folder))
    return dict(init)


class DiffusersDiTExtractor(Extractor):
    name = "dit"

    def __init__(self, weights: str | Path, timesteps: Sequence[int] = (250, 500, 750), layers: Sequence[int] = (0,),
                 ensemble: int = 1, seed: int = 0, conditioning: str = "empty", resolution=None,
                 device: str = "auto", dtype: str = "auto", guidance: float | None = None,
                 class_label: int | None = None,
                 sites: Sequence[str] = (DEFAULT_SITE,), name: str | None = None, notes: Sequence[str] = ()):
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
        self.resolution, self._guidance = parse_resolution(resolution), guidance
        self._notes = list(notes)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._timesteps = [int(t) for t in timesteps]
        for t in self._timesteps:
            if not 0 <= t <= 1000:
                raise ProbekitError(f"timesteps are integers in [0, 1000] (0 = clean image); got {t}")
        self._read_folder()
        self.guidance = self.family.default_guidance if guidance is None else float(guidance)
        if class_label is not None:
            self.family.class_label = int(class_label)
        kinds = self.family.block_kinds()
        self._layers = normalise_layers(layers, len(kinds), f"{self.transformer_class} in {self.root}")
        self._sites = self._check_sites(sites, kinds)
        self._cond_cache: dict[str, Cond] = {}
        self._pipe = self._encoder = None

    # -- the folder -------------------------------------------------------------------------
    def _read_folder(self) -> None:
        """Configs only: the family, the schedule and where text comes from. No weights are read here."""
        root = self.root
        self._tdir = root / "transformer" if (root / "transformer" / "config.json").is_file() else root
        if not (self._tdir / "config.json").is_file():
            raise ProbekitError(f"no diffusers transformer in {root} (expected transformer/config.json or config.json)")
        self._transformer_cls = _diffusers_class(self._tdir, "transformer")
        self.transformer_class = self._transformer_cls.__name__
        family_cls = family_for(self.transformer_class, self._tdir)
        config = _full_config(self._transformer_cls, self._tdir)
        self._vdir = root / "vae"
        vae_config = None
        if (self._vdir / "config.json").is_file():
            self._vae_cls = _diffusers_class(self._vdir, "vae")
            vae_config = _full_config(self._vae_cls, self._vdir)
        scheduler_config = read_json(root / "scheduler" / "scheduler_config.json")
        index = read_json(root / "model_index.json") or read_json(root / "modular_model_index.json")
        self.family: DiTFamily = family_cls(config, vae_config, scheduler_config, index)
        self.schedule = NoiseSchedule.from_scheduler_config(scheduler_config, family_cls.noise_default,
                                                            family_cls.default_shift)
        # Text comes from a diffusers pipeline (model_index.json: the pipeline's own encode_prompt) or from a
        # plain text_encoder/ + tokenizer/ pair (TextConditioner: hidden states + pooled output).
        if index is not None and any(root.glob("text_encoder*/config.json")):
            self.text_source = "pipeline"  # a diffusers pipeline folder, standard or modular
        elif (root / "text_encoder" / "config.json").is_file() and (root / "tokenizer").is_dir():
            self.text_source = "encoder"
        else:
            self.text_source = None
        self.has_text_encoder = self.text_source is not None
        if self.conditioning == "caption" and not (self.family.text and self.has_text_encoder):
            raise ProbekitError(f"caption conditioning needs a text encoder, and {root} has none "
                                "(a pipeline folder with model_index.json and text_encoder/, or text_encoder/ "
                                "with tokenizer/)")
        in_ch = self.family.latent_channels()
        if vae_config is None and in_ch != 3:
            raise ProbekitError(f"{root}: the transformer expects {in_ch} latent channels but there is no vae/ folder; "
                                "a model without a VAE must be pixel-space (3 input channels)")

    def _check_sites(self, sites: Sequence[str], kinds: list[str]) -> list[str]:
        sites = list(dict.fromkeys(sites or [DEFAULT_SITE]))
        for site in sites:
            if site not in SITE_MEANINGS:
                raise ProbekitError(f"unknown capture site {site!r}; sites: {', '.join(SITE_MEANINGS)}")
            for layer in self._layers:
                self.family.site(kinds[layer], site)  # refuses a site this block does not have, saying why
        return sites

    @property
    def transformer(self) -> torch.nn.Module:
        """The transformer (and the VAE), loaded onto the device on first use."""
        if self.family.transformer is None:
            tr = load_pretrained(self._transformer_cls, self._tdir, "transformer", torch_dtype=self.dtype)
            self.family.transformer = tr.to(self.device).eval().requires_grad_(False)
            if self.family.vae_config is not None:
                vae = load_pretrained(self._vae_cls, self._vdir, "VAE", torch_dtype=self.dtype)
                self.family.vae = vae.to(self.device).eval().requires_grad_(False)
        return self.family.transformer

    @property
    def vae(self):
        self.transformer  # noqa: B018 - loads both
        return self.family.vae

    # -- text -------------------------------------------------------------------------------
    def _text_pipeline(self):
        if self._pipe is None:
            self._pipe = self._load_text_pipeline()
            for component, stand_in in self.family.text_stand_ins().items():
                setattr(self._pipe, component, stand_in)
        return self._pipe

    def _load_text_pipeline(self):
        """The folder's pipeline with its text components only: no transformer, no VAE."""
        from diffusers import DiffusionPipeline, ModularPipeline

        index = self.family.pipeline_index
        if (self.root / "modular_model_index.json").is_file():
            names = [n for n in index if n.startswith(("text_encoder", "tokenizer", "processor"))]
            pipe = load_pretrained(ModularPipeline, self.root, "modular pipeline")
            with quiet_loading():
                pipe.load_components(names=names, torch_dtype=self.dtype)
        else:
            # Components saved as [null, null] (e.g. SD3 without T5) must be passed as None explicitly, or
            # from_pretrained refuses the folder.
            absent = {name: None for name, entry in index.items()
                      if isinstance(entry, list) and entry and entry[0] is None}
            skip = {name: None for name in ("transformer", "vae", *self.family.non_text_components) if name in index}
            pipe = load_pretrained(DiffusionPipeline, self.root, "pipeline's text encoders", **absent, **skip,
                                   torch_dtype=self.dtype)
        pipe.to(self.device)
        return pipe

    def _text_encoder(self):
        if self._encoder is None:
            from probekit.models.text_conditioning import TextConditioner

            self._encoder = TextConditioner.from_folder(self.root, dtype=self.dtype).to(self.device)
        return self._encoder

    def _encode(self, prompts: list[str]) -> list[Cond]:
        """Per-prompt conditions (batch 1 each, on the host) through the folder's text encoders."""
        with torch.inference_mode():
            if self.text_source == "pipeline":
                batch = self.family.encode_prompts(self._text_pipeline(), prompts, self.device)
            else:
                batch = self._text_encoder()(prompts)
        return [{k: (v[i:i + 1].detach().cpu() if torch.is_tensor(v) else v) for k, v in batch.items()}
                for i in range(len(prompts))]

    def _condition(self, prompt: str) -> Cond:
        """One prompt's condition (batch 1, on the host), encoded once."""
        if prompt not in self._cond_cache:
            if self.family.text and self.has_text_encoder:
                self._cond_cache[prompt] = self._encode([prompt])[0]
            else:
                self._cond_cache[prompt] = {k: v.cpu() for k, v in
                                            self.family.null_condition(torch.device("cpu"), self.dtype).items()}
        return self._cond_cache[prompt]

    def prepare(self, captions: Sequence[str] = ()) -> None:
        """Encode every prompt the run needs once (the empty prompt, or the captions), then free the text
        encoders: at real size they must leave the device before the transformer arrives."""
        prompts = list(dict.fromkeys(captions)) if self.conditioning == "caption" else [""]
        todo = [p for p in prompts if p not in self._cond_cache]
        if self.family.text and self.has_text_encoder:
            for a in range(0, len(todo), PROMPT_BATCH):
                chunk = todo[a:a + PROMPT_BATCH]
                self._cond_cache.update(zip(chunk, self._encode(chunk)))
            self.release_text_encoders()
        else:
            for prompt in todo:
                self._condition(prompt)

    def release_text_encoders(self) -> None:
        self._pipe = self._encoder = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def uses_captions(self) -> bool:
        return self.conditioning == "caption"

    # -- contract ---------------------------------------------------------------------------
    @property
    def timesteps(self) -> list[int]:
        return list(self._timesteps)

    @property
    def layers(self) -> list[int]:
        return list(self._layers)

    @property
    def sites(self) -> list[str]:
        return list(self._sites)

    def feature_keys(self) -> list[str]:
        return [feature_key(t, layer, site) for t in self._timesteps for layer in self._layers for site in self._sites]

    def notes(self) -> list[str]:
        notes = list(self._notes)
        if self.family.text and not self.has_text_encoder:
            notes.append("no text encoder in the weights folder: conditioned on null (zero) text embeddings")
        return notes

    def weights_identity(self) -> dict[str, Any]:
        return weights_identity(self.weights)

    def memory_plan(self) -> list[str]:
        from probekit.extractors.memory import memory_lines, parameter_counts

        counts = parameter_counts(self.root)
        if not (self.family.text and self.has_text_encoder):
            counts = {k: v for k, v in counts.items() if not k.startswith("text_encoder")}
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return memory_lines(counts, itemsize, str(self.device), str(self.dtype).replace("torch.", ""))

    def config(self) -> dict[str, Any]:
        return {
            "extractor": self.name, "weights": self.weights, **self.family.describe(),
            "transformer_class": self.transformer_class, "timesteps": self.timesteps, "layers": self.layers,
            "sites": self.sites, "ensemble": self.ensemble, "seed": self.seed, "conditioning": self.conditioning,
            "text_encoder": self.text_source if self.family.text else None,
            "resolution": list(self.resolution) if self.resolution else None,
            "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
            "latent_space": "vae" if self.family.vae_config is not None else "pixels",
            "noise_schedule": self.schedule.describe(),
            "guidance": self.guidance if self.family.guidance_input else None,
            "num_blocks": len(self.family.block_kinds()),
            "noise": "one N(0, I) draw per (sample, ensemble member), shared by all timesteps of the sample",
        }

    # -- extraction -------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the latents the transformer denoises (the family's encoding) or [-1, 1] pixels."""
        x = images.to(self.device, torch.float32)  # resized in float32: antialiasing has no bfloat16 CPU kernel
        if self.resolution is not None and tuple(x.shape[-2:]) != self.resolution:
            x = F.interpolate(x, size=self.resolution, mode="bilinear", antialias=True, align_corners=False)
        x = x.to(self.dtype)
        self.transformer  # noqa: B018 - the VAE loads with it
        return self.family.encode(x * 2.0 - 1.0)

    def noised_batch(self, x0: torch.Tensor, indices: Sequence[int], draw: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B*T, C, h, w) noised latents, sample-major, with each row's sigma and integer timestep."""
        b, c, h, w = x0.shape
        grid = self.family.token_grid(h, w)
        rows, sigmas, ts = [], [], []
        for i, index in enumerate(indices):
            eps = sample_noise((c, h, w), self.seed, int(index), draw).to(self.device, torch.float32)
            for t in self._timesteps:
                if self.schedule.kind == "flow":
                    s = self.family.sigma(self.schedule, t, grid)
                    rows.append((1.0 - s) * x0[i:i + 1].float() + s * eps[None])
                    sigmas.append(s)
                    ts.append(t)  # the integer timestep itself (some pipelines hand it to the model unshifted)
                else:
                    rows.append(self.schedule.add_noise(x0[i:i + 1].float(), eps[None], t))
                    sigmas.append(t / 1000.0)
                    ts.append(NoiseSchedule.ddpm_t(t))  # on the DDPM scheduler's own grid
        # sigma stays float32: pipelines hand the transformer float32 timesteps (or cast t = 1000 sigma, not
        # sigma, to the model's dtype: the families do what their pipeline does)
        return (torch.cat(rows).to(self.dtype), torch.tensor(sigmas, device=self.device, dtype=torch.float32),
                torch.tensor(ts, device=self.device, dtype=torch.long))

    def model_inputs(self, images: torch.Tensor, captions: Sequence[str], indices: Sequence[int],
                     draw: int = 0) -> ForwardInputs:
        """Everything one forward needs. Public so tests and benchmarks can replay it."""
        x0 = self.encode_images(images)
        x_t, sigma, t_int = self.noised_batch(x0, indices, draw)
        prompts = list(captions) if self.conditioning == "caption" else [""] * len(indices)
        cond = self.family.collate([self._condition(p) for p in prompts], len(self._timesteps))
        cond = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                if torch.is_tensor(v) else v for k, v in cond.items()}
        return ForwardInputs(x_t, sigma, t_int, cond, self.family.token_grid(*x0.shape[-2:]))

    def run_forward(self, inputs: ForwardInputs) -> None:
        self.transformer  # noqa: B018 - loaded on first use
        self.family.forward(inputs.x_t, inputs.sigma, inputs.t_int, inputs.cond, self.guidance)

    def feature_shapes(self, image_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        """(channels, token rows, token columns) of every map, from the configs alone (no weights, no forward)."""
        h, w = self.resolution or image_size
        _, lh, lw = self.family.latent_shape(h, w)
        gh, gw = self.family.token_grid(lh, lw)
        kinds = self.family.block_kinds()
        return {feature_key(t, layer, site): (self.family.site_width(kinds[layer], site), gh, gw)
                for t in self._timesteps for layer in self._layers for site in self._sites}

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, captions: Sequence[str], indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Maps on the extractor's device: in the compute dtype for one noise draw, float32 means for several."""
        b, n_t = images.shape[0], len(self._timesteps)
        requests = [(layer, site) for layer in self._layers for site in self._sites]
        sums: dict[str, torch.Tensor] = {}
        for draw in range(self.ensemble):
            inputs = self.model_inputs(images, captions, indices, draw)
            gh, gw = inputs.grid
            captured = capture_sites(self.family, requests, lambda: self.run_forward(inputs))
            missing = set(requests) - set(captured)
            if missing:
                raise ProbekitError(f"capture sites {sorted(missing)} of {self.transformer_class} never ran during "
                                    "the forward")
            for (layer, site), tokens in captured.items():
                if self.ensemble > 1:
                    tokens = tokens.float()
                maps = token_maps(tokens, (gh, gw)).unflatten(0, (b, n_t))  # (B, T, C, h, w)
                for j, t in enumerate(self._timesteps):
                    key = feature_key(t, layer, site)
                    sums[key] = sums[key] + maps[:, j] if key in sums else maps[:, j]
        if self.ensemble == 1:
            return {k: sums[k] for k in self.feature_keys()}
        return {k: sums[k] / self.ensemble for k in self.feature_keys()}
