"""What one diffusers DiT family owns, as a small class: the contract behind ``extractors/families/*.py``.

The shared extractor (``extractors/diffusers_dit.py``) keeps the batched forward over (samples x timesteps), the
hooks and the storage. A family owns everything that differs between transformer classes, and reuses its
diffusers pipeline's own helpers for it wherever diffusers has them:

- latent encoding and normalisation (``encode``): VAE mode, then the pipeline's scaling (SD3/FLUX shift and
  scale, FLUX.2's BatchNorm statistics, Qwen-Image's per-channel mean and std, ...);
- the spatial layout noise is drawn in (``latent_shape``) and the token grid of the transformer (``token_grid``);
- the noise level for timestep t at a sequence length (``sigma``: the scheduler's own shift, ``mu`` from the
  pipeline's helper for resolution-dependent shifting);
- null and prompt conditioning (``null_condition``, ``encode_prompts`` through the pipeline's ``encode_prompt``,
  ``collate`` for a batch);
- the forward (``forward``: packing, position ids, the timestep input the transformer expects);
- where the image tokens sit in each block's outputs (``sites``, ``image_tokens``).

A family instance is bound to one model; ``config`` is the transformer's config (a dict, defaults filled in),
read before any weights, so plans and shapes never need the weights. Family modules import torch and diffusers
inside their methods only, so that listing the families (``probekit ls families``) stays cheap.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from probekit.errors import ProbekitError

if TYPE_CHECKING:  # family modules import torch inside their methods: `probekit ls families` reads them cheaply
    import torch

Cond = dict[str, Any]  # one batch of conditioning tensors, keyed by the family's own names


def first(output):
    """The first element of a module's tuple output (AdaLN norms return (normed, gates...); joint attention
    returns (image, text))."""
    return output[0] if isinstance(output, (tuple, list)) else output


def last(output):
    """The last element of a tuple output: the image stream of a (text, image) block."""
    return output[-1] if isinstance(output, (tuple, list)) else output


def itself(output):
    return output


@dataclass(frozen=True)
class Site:
    """Where to read one capture site in a block: a submodule (``""`` = the block itself), which part of its
    output, and whether that part holds the image stream alone (``"image"``) or a sequence joined with text
    tokens (``"joint"``, sliced with the family's token layout). Its channel count is ``width_factor`` times the
    model width (an MLP's hidden layer is wider)."""

    module: str
    pick: Callable[[Any], torch.Tensor] = itself
    stream: str = "image"
    width_factor: float = 1.0
    note: str = ""  # how this family's site departs from SITE_MEANINGS, if it does
    reads: str = "output"  # "input": the module's ``hidden_states`` argument (the normalised input attention reads)


@dataclass(frozen=True)
class ConceptDefinition:
    """How a family computes concept attention, after the reference file ``reference``."""

    reference: str
    tokens: str  # "each-alone": each concept encoded alone | "joined": one prompt of the space-joined concepts
    modulation: str  # "prompt": the image's conditioning embedding | "concepts": the joined concepts' pooled one
    vectors: str  # "projected": after to_out / to_add_out | "attention": the attention outputs before them
    image_vectors: str  # "real": the model's own image attention | "concept-pass": image attending [image; concepts]
    normalise_concepts: bool  # L2-normalise the concept vectors before the dot product
    softmax: str  # "per-block": over concepts per (timestep, block), then the mean | "after-mean"
    temperature: float = 1.0
    max_sequence_length: int | None = None  # padding of each concept's encoding, where the reference sets it
    last_blocks: int | None = None  # default concept blocks: the last N joint blocks (None: every joint block)


#: The sites every family describes the same way (a family lists those its blocks have).
SITE_MEANINGS = {
    "output": "the block's output: the residual stream after the block (the default)",
    "norm1": "the AdaLN-modulated, normalised input of the block's attention (image stream)",
    "attn": "the attention output of the image tokens (after the output projection where the block has one)",
    "mlp": "the MLP (feed-forward) output of the image tokens, before its gate",
}


@dataclass
class TokenLayout:
    """Where the image tokens sit in the joined sequence of the last forward: ``start`` and ``count``."""

    start: int
    count: int

    def image(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.start:self.start + self.count]


class DiTFamily:
    """Base class: defaults fit a flow-matching MM-DiT whose blocks return ``(text, image)``."""

    name: ClassVar[str] = "base"
    transformer_class: ClassVar[str] = ""
    pipeline_class: ClassVar[str | None] = None  # the diffusers pipeline whose first step the family reproduces
    noise_default: ClassVar[str] = "flow"  # when the folder has no scheduler config
    default_shift: ClassVar[float] = 3.0
    text: ClassVar[bool] = True  # conditioned on text
    concept_attention: ClassVar[bool] = False  # probekit computes concept attention for it (concept_definition)
    joint_stream: ClassVar[bool] = False  # text and image tokens share an attention (concept attention could apply)
    concept_stream: ClassVar[str] = "adaln-zero"  # how its joint blocks modulate the text stream (concept_attention.py)
    concept_rotary_style: ClassVar[str] = "table"  # the form of its rotary embeddings (concept_attention.py)
    guidance_input: ClassVar[bool] = False  # distilled guidance is an input of the transformer
    guidance_argument: ClassVar[str] = "guidance_scale"  # the pipeline's __call__ argument that sets it
    #: pipeline components the text-only pipeline must not load (a second transformer, ...)
    non_text_components: ClassVar[tuple[str, ...]] = ()
    #: block kind -> (attribute of the transformer holding the blocks)
    block_lists: ClassVar[dict[str, str]] = {"joint": "transformer_blocks"}
    #: block kind -> site name -> Site
    sites: ClassVar[dict[str, dict[str, Site]]] = {}
    #: site name -> why this family's blocks do not have it
    missing_sites: ClassVar[dict[str, str]] = {}

    def __init__(self, config, vae_config=None, scheduler_config: dict | None = None,
                 pipeline_index: dict | None = None):
        self.config = config
        self.vae_config = vae_config
        self.scheduler_config = scheduler_config
        self.pipeline_index = pipeline_index or {}  # the folder's model_index.json (or modular_model_index.json)
        self.transformer = None  # set by the extractor once the weights are loaded
        self.vae = None
        self.layout: TokenLayout | None = None

    @property
    def pipeline(self):
        """The diffusers pipeline class (its static helpers: packing, position ids)."""
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    @property
    def helpers(self):
        """The module of the pipeline class (its module-level helpers: ``calculate_shift``, ...)."""
        return pipeline_module(self.pipeline_class)

    @property
    def default_guidance(self) -> float | None:
        """The distilled guidance the pipeline passes by default (its ``__call__``'s own default)."""
        if not self.guidance_input:
            return None
        return float(pipeline_default(self.pipeline_class, self.guidance_argument))

    def calculate_shift_mu(self, image_seq_len: int, max_shift_default: float = 1.15) -> float | None:
        """``mu`` as FLUX-style pipelines compute it (their module's ``calculate_shift`` over the scheduler's
        config), or None when the scheduler shifts statically."""
        cfg = self.scheduler_config or {}
        if not cfg.get("use_dynamic_shifting"):
            return None
        return self.helpers.calculate_shift(
            image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5), cfg.get("max_shift", max_shift_default))

    # -- structure --------------------------------------------------------------------------
    def block_counts(self) -> list[tuple[str, int]]:
        """(kind, number of blocks) in forward order, from the config."""
        return [(kind, int(self.config[self.count_key(kind)])) for kind in self.block_lists]

    def count_key(self, kind: str) -> str:
        return {"joint": "num_layers", "single": "num_single_layers"}[kind]

    def block_kinds(self) -> list[str]:
        """The kind of every block, in the order block indices count them."""
        return [kind for kind, n in self.block_counts() for _ in range(n)]

    def blocks(self) -> list[torch.nn.Module]:
        out: list[torch.nn.Module] = []
        for attr in self.block_lists.values():
            out.extend(getattr(self.transformer, attr))
        return out

    def site(self, kind: str, site: str) -> Site:
        try:
            return self.sites[kind][site]
        except KeyError:
            have = ", ".join(self.sites.get(kind, {}))
            why = f" ({self.missing_sites[site]})" if site in self.missing_sites else ""
            raise ProbekitError(f"{self.transformer_class}'s {kind} blocks have no capture site {site!r}{why}; "
                                f"they have: {have}") from None

    def available_sites(self) -> list[str]:
        """Sites every block kind of this family has, in SITE_MEANINGS order."""
        kinds = {k for k, n in self.block_counts() if n}
        return [s for s in SITE_MEANINGS if all(s in self.sites.get(k, {}) for k in kinds)]

    def model_width(self) -> int:
        c = self.config
        return int(c["num_attention_heads"] * c["attention_head_dim"])

    def site_width(self, kind: str, site: str) -> int:
        return int(round(self.model_width() * self.site(kind, site).width_factor))

    def image_tokens(self, spec: Site, output) -> torch.Tensor:
        tokens = spec.pick(output)
        if spec.stream == "joint":
            if self.layout is None:
                raise RuntimeError("a joint-sequence site was read outside the family's forward")
            tokens = self.layout.image(tokens)
        return tokens

    # -- latents ----------------------------------------------------------------------------
    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell (1 for a pixel-space model)."""
        if self.vae_config is None:
            return 1
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    def latent_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def patch(self) -> int:
        """Latent cells per token side."""
        return int(self.config.get("patch_size") or 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the latent noise is drawn in, for images of height x width pixels."""
        s = self.vae_scale
        if height % s or width % s:
            raise ProbekitError(f"image size {height}x{width} is not divisible by the VAE's downsampling factor {s}; "
                                "change --resolution")
        return self.latent_channels(), height // s, width // s

    def token_grid(self, h: int, w: int) -> tuple[int, int]:
        p = self.patch
        if h % p or w % p:
            raise ProbekitError(f"latent size {h}x{w} is not divisible by the patch size {p}; change --resolution")
        return h // p, w // p

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pixels -> the latents the transformer denoises (spatial layout of ``latent_shape``)."""
        if self.vae is None:
            return pixels
        latent = self.vae.encode(pixels).latent_dist.mode()
        return self.normalise_latents(latent)

    def normalise_latents(self, latent: torch.Tensor) -> torch.Tensor:
        """SD3/FLUX convention: (z - shift_factor) * scaling_factor."""
        cfg = self.vae_config
        shift = cfg.get("shift_factor") or 0.0
        return (latent - shift) * cfg["scaling_factor"]

    def pipeline_latents(self, x_t: torch.Tensor) -> torch.Tensor:
        """``x_t`` in the layout the pipeline's ``latents=`` argument takes (packed for some families)."""
        return x_t

    # -- noise ------------------------------------------------------------------------------
    def mu(self, image_seq_len: int) -> float | None:
        """The resolution-dependent shift of the pipeline's schedule (None: the scheduler's static shift)."""
        return None

    def sigma(self, schedule, t: int, grid: tuple[int, int]) -> float:
        """The noise level of timestep t for a token grid: the scheduler's own (``NoiseSchedule``), shifted by
        ``mu`` where the pipeline shifts by resolution. A family whose pipeline builds its schedule otherwise
        overrides this."""
        return schedule.sigma(t, self.mu(grid[0] * grid[1]))

    def timestep_input(self, sigma: torch.Tensor, t_int: torch.Tensor) -> torch.Tensor:
        """What the transformer's ``timestep`` receives (SD3-style: sigma x 1000)."""
        return sigma * 1000.0

    # -- conditioning -----------------------------------------------------------------------
    def null_condition(self, device, dtype) -> Cond:
        """Zero text (a folder without text encoders): one token of the width the transformer reads."""
        raise NotImplementedError

    def encode_prompts(self, pipe, prompts: list[str], device) -> Cond:
        """The pipeline's own encoding of ``prompts`` (batch of len(prompts))."""
        raise NotImplementedError

    def text_stand_ins(self) -> dict[str, Any]:
        """Components the pipeline's ``encode_prompt`` reads only the config of (``ConfigOnly``), set on the
        text-only pipeline after loading (the transformer and the VAE are not loaded with it)."""
        return {}

    def collate(self, conds: Sequence[Cond], repeats: int) -> Cond:
        """One batch from per-sample conditions, each row repeated ``repeats`` times (once per timestep)."""
        import torch

        out: Cond = {}
        for key, first_value in conds[0].items():
            if torch.is_tensor(first_value):
                out[key] = torch.cat([c[key] for c in conds]).repeat_interleave(repeats, dim=0)
            else:
                out[key] = first_value
        return out

    # -- concept attention ------------------------------------------------------------------
    def embed_text(self, states):
        """Text-encoder states -> the transformer's text tokens (its context embedder)."""
        return self.transformer.context_embedder(states)

    def concept_rotary(self, positions, grid: tuple[int, int]):
        """The rotary table of concept tokens at the given position ids (the transformer's own embedder)."""
        return tuple(t.to(positions.device) for t in self.transformer.pos_embed(positions))

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, t_int: torch.Tensor, cond: Cond,
                guidance: float) -> None:
        raise NotImplementedError

    # -- description ------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Family facts recorded in a feature file's provenance."""
        return {"family": self.name, "pipeline_class": self.pipeline_class}

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        sites = [s for s in SITE_MEANINGS if any(s in kind for kind in cls.sites.values())]
        return {"captions": cls.text, "concept_attention": cls.concept_attention,
                "joint_stream": cls.joint_stream or cls.concept_attention, "sites": sites,
                "block_kinds": list(cls.block_lists), "noise": cls.noise_default}

    @classmethod
    def capability_line(cls) -> str:
        caps = cls.capabilities()
        yes = {True: "yes", False: "no"}
        concepts = ("yes" if caps["concept_attention"] else
                    "not yet (joint text/image attention)" if caps["joint_stream"] else "no (no joint text stream)")
        return (f"captions: {yes[caps['captions']]}; concept attention: {concepts}; "
                f"sites: {', '.join(caps['sites'])}; blocks: {' then '.join(caps['block_kinds'])}")


class ConfigOnly:
    """A stand-in for a component a pipeline's text helpers read only the config of (no weights loaded)."""

    def __init__(self, config: dict[str, Any]):
        from types import SimpleNamespace

        self.config = SimpleNamespace(**config)


def pipeline_default(pipeline_class: str, argument: str):
    """The default of one ``__call__`` argument of a diffusers pipeline (e.g. its number of steps)."""
    import diffusers

    return inspect.signature(getattr(diffusers, pipeline_class).__call__).parameters[argument].default


@functools.lru_cache(maxsize=None)
def pipeline_module(pipeline_class: str):
    """The module a diffusers pipeline class is defined in (for its module-level helpers)."""
    import diffusers

    return inspect.getmodule(getattr(diffusers, pipeline_class))
