"""Store less, by choice, recorded: pooling, a fixed channel projection and the storage dtype.

A FLUX map at 1024 px is 4,096 tokens x 3,072 channels, 25 MB in float16; a probe rarely needs all of it.
Each reduction runs on the extractor's device before anything is copied to the host:

- ``pool K``: average-pool each map to K tokens along its shorter side (the longer side in proportion);
- ``channels D``: a fixed linear map to D channels, ``W (x - mean)``, either PCA fitted once on the first
  images of the run (normally the training split) or a seeded random orthogonal matrix. It is stored in the
  feature file, and val/test extractions reuse it by naming the training file (``projection_from``); probes
  refuse files whose projections differ;
- ``drop_massive K``: drop, per map, the K channels with the largest mean absolute activation over the first
  images' tokens (DiT "massive activations": a few channels orders of magnitude above the rest; DiTF drops
  them). A channel selection stored and reused exactly like a projection; the file names the channels dropped;
- ``dtype``: float16 (default), bfloat16 (float32's range: FLUX activations can exceed float16's 65,504) or
  float32.

Everything is recorded in the file's ``storage`` attribute and in the run fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from probekit.dtypes import DEFAULT_STORED_DTYPE, STORED_DTYPES
from probekit.errors import FeatureFileError, ProbekitError
from probekit.store import FEATURE_DTYPES, FeatureReader

PROJECTIONS = ("pca", "random")  # --drop-massive makes the third kind, a channel selection
TORCH_DTYPES = dict(zip(STORED_DTYPES, (torch.float16, torch.bfloat16, torch.float32), strict=True))
_SHORT_DTYPE = dict(zip(STORED_DTYPES, ("fp16", "bf16", "fp32"), strict=True))  # in storage labels


@dataclass(frozen=True)
class StorageOptions:
    pool: int | None = None
    channels: int | None = None
    projection: str = "pca"
    projection_from: str | None = None
    fit_samples: int = 64
    dtype: str = DEFAULT_STORED_DTYPE
    seed: int = 0
    drop_massive: int | None = None

    def __post_init__(self):
        if self.pool is not None and self.pool < 1:
            raise ProbekitError(f"--pool must be a positive number of tokens, got {self.pool}")
        if self.channels is not None and self.channels < 1:
            raise ProbekitError(f"--channels must be a positive number of channels, got {self.channels}")
        if self.projection not in PROJECTIONS:
            raise ProbekitError(f"--projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")
        if self.fit_samples < 1:
            raise ProbekitError(f"--fit-samples must be positive, got {self.fit_samples}")
        if self.dtype not in FEATURE_DTYPES:
            raise ProbekitError(f"--store-dtype must be one of {', '.join(FEATURE_DTYPES)}, got {self.dtype!r}")
        if self.drop_massive is not None and (self.drop_massive < 1 or self.channels is not None):
            raise ProbekitError("--drop-massive K drops K >= 1 channels and cannot be combined with --channels")
        if self.projection_from is not None and not self.projects:
            raise ProbekitError("--projection-from reuses a channel projection: give --channels (the same D) or "
                                "--drop-massive (the same K) too")

    @property
    def projects(self) -> bool:
        """Whether a fixed linear map (projection or channel selection) is applied to every map."""
        return self.channels is not None or self.drop_massive is not None

    @property
    def reduces(self) -> bool:
        return self.pool is not None or self.projects

    def stored_channels(self, c: int) -> int:
        if self.drop_massive is not None:
            return c - self.drop_massive
        return self.channels or c

    def label(self) -> str:
        """A short tag for names and tables: "" for plain float16 maps, else e.g. "pool8,pca64,bf16"."""
        parts = []
        if self.pool is not None:
            parts.append(f"pool{self.pool}")
        if self.channels is not None:
            parts.append(f"{self.projection}{self.channels}")
        if self.drop_massive is not None:
            parts.append(f"drop{self.drop_massive}")
        if self.dtype != "float16":
            parts.append(_SHORT_DTYPE[self.dtype])
        return ",".join(parts)


def pooled_grid(h: int, w: int, pool: int | None) -> tuple[int, int]:
    if pool is None:
        return h, w
    short = min(h, w)
    if pool > short:
        raise ProbekitError(f"--pool {pool} is larger than the feature grid ({h}x{w}); choose at most {short}")
    return max(1, round(h * pool / short)), max(1, round(w * pool / short))


def stored_shape(shape: tuple[int, int, int], options: StorageOptions) -> tuple[int, int, int]:
    c, h, w = shape
    if options.channels is not None and options.channels > c:
        raise ProbekitError(f"--channels {options.channels} is more than the {c} channels of the maps")
    if options.drop_massive is not None and options.drop_massive >= c:
        raise ProbekitError(f"--drop-massive {options.drop_massive} would drop all {c} channels of the maps")
    return (options.stored_channels(c), *pooled_grid(h, w, options.pool))


class Projection:
    """Per feature key, ``components`` (D, C) and ``mean`` (C,): stored = components @ (x - mean)."""

    def __init__(self, components: dict[str, torch.Tensor], means: dict[str, torch.Tensor], method: str,
                 info: dict[str, Any] | None = None):
        self.components = {k: v.float().cpu() for k, v in components.items()}
        self.means = {k: v.float().cpu() for k, v in means.items()}
        self.method, self.info = method, dict(info or {})
        self._on: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def dim(self) -> int:
        return int(next(iter(self.components.values())).shape[0])

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for key in sorted(self.components):
            digest.update(key.encode())
            digest.update(self.components[key].numpy().tobytes())
            digest.update(self.means[key].numpy().tobytes())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "dim": self.dim, "sha256": self.sha256(), **self.info}

    def apply(self, key: str, x: torch.Tensor) -> torch.Tensor:
        where = (key, str(x.device))
        if where not in self._on:
            self._on[where] = (self.components[key].to(x.device), self.means[key].to(x.device))
        w, mean = self._on[where]
        return torch.einsum("dc,bchw->bdhw", w, x.float() - mean.view(1, -1, 1, 1))

    # -- making one ---------------------------------------------------------------------------
    @classmethod
    def random(cls, channels: dict[str, int], dim: int, seed: int) -> "Projection":
        """A seeded random orthogonal map per key (the same on every machine: drawn on the CPU)."""
        comps, means = {}, {}
        for key, c in channels.items():
            g = torch.Generator().manual_seed(seed * 1_000_003 + c)
            q, r = torch.linalg.qr(torch.randn(c, dim, generator=g, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r)).view(1, -1)
            comps[key], means[key] = q.T.contiguous(), torch.zeros(c, dtype=torch.float64)
        return cls(comps, means, "random", {"seed": seed})

    @classmethod
    def fit_pca(cls, batches: Iterable[dict[str, torch.Tensor]], dim: int, info: dict[str, Any]) -> "Projection":
        """PCA per key over every token of the given batches of (B, C, h, w) maps (streamed: the covariance
        is accumulated in float64 on the maps' device, so no token matrix is ever held)."""
        sums: dict[str, torch.Tensor] = {}
        outer: dict[str, torch.Tensor] = {}
        count: dict[str, int] = {}
        for maps in batches:
            for key, x in maps.items():
                tokens = x.float().permute(0, 2, 3, 1).reshape(-1, x.shape[1])
                if key not in sums:
                    sums[key] = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
                    outer[key] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
                    count[key] = 0
                t64 = tokens.double()  # float64 products: E[xx] - mean^2 cancels badly for large activations
                sums[key] += t64.sum(0)
                outer[key] += t64.T @ t64
                count[key] += tokens.shape[0]
        if not sums:
            raise ProbekitError("no samples to fit the channel projection on")
        comps, means = {}, {}
        for key in sums:
            n = count[key]
            if n <= dim:
                raise ProbekitError(f"fitting PCA to {dim} channels needs more than {dim} tokens; the first "
                                    f"samples give {n} for {key} (raise --fit-samples)")
            mean = sums[key] / n
            cov = outer[key] / n - torch.outer(mean, mean)
            _, vectors = torch.linalg.eigh(cov.cpu())
            top = vectors[:, -dim:].flip(1).T  # (D, C), largest variance first
            # Sign convention: each component's largest-magnitude entry is positive (PCA is sign-free).
            signs = torch.sign(top.gather(1, top.abs().argmax(1, keepdim=True)))
            comps[key], means[key] = (top * signs).contiguous(), mean.cpu()
        return cls(comps, means, "pca", {**info, "tokens": int(next(iter(count.values())))})

    @classmethod
    def drop_massive(cls, batches: Iterable[dict[str, torch.Tensor]], k: int, info: dict[str, Any]) -> "Projection":
        """Per key, keep every channel but the ``k`` with the largest mean |activation| over every token of the
        given batches; ``info`` gains, per key, the dropped channels and their mean |x| over the median's."""
        sums: dict[str, torch.Tensor] = {}
        count: dict[str, int] = {}
        for maps in batches:
            for key, x in maps.items():
                a = x.double().abs().sum(dim=(0, 2, 3))
                sums[key] = sums[key] + a if key in sums else a
                count[key] = count.get(key, 0) + x.shape[0] * x.shape[2] * x.shape[3]
        if not sums:
            raise ProbekitError("no samples to find the massive-activation channels on")
        comps, means, dropped = {}, {}, {}
        for key, total in sums.items():
            mean_abs = (total / count[key]).cpu()
            top = torch.argsort(mean_abs, descending=True)[:k]
            keep = torch.tensor(sorted(set(range(len(mean_abs))) - set(top.tolist())))
            comps[key] = torch.eye(len(mean_abs), dtype=torch.float64)[keep]
            means[key] = torch.zeros(len(mean_abs), dtype=torch.float64)
            median = float(mean_abs.median())
            dropped[key] = [{"channel": int(c), "mean_abs": float(mean_abs[c]),
                             "over_median": float(mean_abs[c]) / median if median > 0 else None} for c in top]
        return cls(comps, means, "drop-massive", {**info, "k": k, "dropped": dropped})

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        from probekit import atomic

        tensors = {f"{k}::components": v.contiguous() for k, v in self.components.items()}
        tensors.update({f"{k}::mean": v.contiguous() for k, v in self.means.items()})
        with atomic.atomic_path(path, durable=True) as tmp:
            save_file(tensors, str(tmp), metadata={"method": self.method,
                                                   **{k: json.dumps(v) for k, v in self.info.items()}})

    @classmethod
    def load(cls, path: str | Path) -> "Projection":
        from safetensors import safe_open

        comps, means = {}, {}
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            for name in f.keys():
                key, _, part = name.rpartition("::")
                (comps if part == "components" else means)[key] = f.get_tensor(name)
        method = meta.pop("method", "pca")
        return cls(comps, means, method, {k: _json_or_text(v) for k, v in meta.items()})

    @classmethod
    def from_feature_file(cls, path: str | Path, keys: list[str], channels: dict[str, int],
                          dims: dict[str, int]) -> "Projection":
        """The projection stored in another feature file (e.g. the training split's), checked against this run."""
        with FeatureReader(path) as reader:
            storage = reader.storage
            if not storage.get("projection"):
                raise FeatureFileError(f"{path} holds no channel projection to reuse (it was extracted without "
                                       "--channels)")
            comps, means = {}, {}
            for key in keys:
                proj = reader.projection(key)
                if proj is None:
                    raise FeatureFileError(f"{path} has no projection for {key!r} (it has maps "
                                           f"{', '.join(reader.keys)}); extract with the same timesteps and layers")
                comps[key], means[key] = torch.from_numpy(proj["components"]), torch.from_numpy(proj["mean"])
                if comps[key].shape != (dims[key], channels[key]):
                    raise FeatureFileError(f"{path}: the projection of {key!r} maps {comps[key].shape[1]} channels to "
                                           f"{comps[key].shape[0]}, but this run has {channels[key]} channels and "
                                           f"asks for {dims[key]}")
            info = {k: v for k, v in storage["projection"].items() if k not in ("method", "dim", "sha256")}
            return cls(comps, means, storage["projection"]["method"], {**info, "from": str(Path(path).resolve())})


class Reducer:
    """Pooling, projection and the cast to the storage dtype, on the maps' device."""

    def __init__(self, options: StorageOptions, projection: Projection | None = None):
        self.options, self.projection = options, projection
        self.torch_dtype = TORCH_DTYPES[options.dtype]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.options.pool is None:
            return x
        size = pooled_grid(x.shape[-2], x.shape[-1], self.options.pool)
        return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x.float(), size)

    def __call__(self, key: str, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.projection is not None:
            x = self.projection.apply(key, x)
        return x.to(self.torch_dtype).contiguous()

    def describe(self) -> dict[str, Any]:
        """The file's ``storage`` attribute."""
        out = {k: v for k, v in asdict(self.options).items() if k not in ("projection_from", "seed", "fit_samples")}
        out["projection"] = self.projection.describe() if self.projection is not None else None
        out["label"] = self.options.label()
        return out


def _json_or_text(value: str):
    """Projection metadata values: JSON since this version, plain text in files written before it."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A host tensor in a storage dtype as the array the feature file stores (bfloat16 as its uint16 bits)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()
