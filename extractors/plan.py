"""Know before you start: what an extraction will store, how many bytes, and whether the disk can take them.

Shapes come from the extractor (``feature_shapes``, from its config where it can) and the storage options,
before the first forward; the plan is printed by every run and by ``--dry-run``, and a run that would not fit
the free space of the output's file system is refused with the options that would make it fit.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probekit.errors import ProbekitError
from probekit.extractors.storage import StorageOptions, stored_shape
from probekit.store import FEATURE_DTYPES, LABEL_DTYPES

# Bytes kept free beyond the plan: file-system metadata, HDF5 overhead and other writers.
RESERVE_FRACTION = 0.02


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds ``path`` (or the nearest folder above it that exists)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


@dataclass
class ExtractionPlan:
    out: Path
    num_samples: int
    shard_size: int
    shards_done: int
    raw_shapes: dict[str, tuple[int, int, int]]  # as the model produces them
    shapes: dict[str, tuple[int, int, int]]  # as stored
    feature_dtype: str
    label_shapes: dict[str, tuple[int, ...]]
    storage: StorageOptions
    thumbnail_bytes: int = 0
    finished: bool = False  # OUT already holds this very run
    waits_for: str | None = None  # the training file whose projection this split reuses, not extracted yet

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def map_bytes(self, key: str) -> int:
        return int(np.prod(self.shapes[key])) * np.dtype(FEATURE_DTYPES[self.feature_dtype]).itemsize

    @property
    def label_bytes(self) -> int:
        """Labels and the thumbnail: what every image stores besides its maps."""
        return sum(int(np.prod(s)) * np.dtype(LABEL_DTYPES.get(n, np.float32)).itemsize
                   for n, s in self.label_shapes.items()) + self.thumbnail_bytes

    @property
    def bytes_per_image(self) -> int:
        return sum(self.map_bytes(k) for k in self.shapes) + self.label_bytes

    @property
    def total_bytes(self) -> int:
        return self.bytes_per_image * self.num_samples

    @property
    def pending_bytes(self) -> int:
        done = min(self.num_samples, self.shards_done * self.shard_size)
        return self.bytes_per_image * (self.num_samples - done)

    def lines(self, free: int | None = None, verbose: bool = False) -> list[str]:
        keys = list(self.shapes)
        reduced = self.storage.label()
        out = [f"plan: {self.num_samples} images -> {self.out} (data in {self.out.name}.parts/, "
               f"{self.num_shards} shards of {self.shard_size}, {self.shards_done} done)"]
        if verbose:
            for key in keys:
                raw = "" if self.raw_shapes[key] == self.shapes[key] else f" (from {self.raw_shapes[key]})"
                out.append(f"  {key:<28} {str(self.shapes[key]):<18}{raw} {self.feature_dtype} "
                           f"{human(self.map_bytes(key))}")
            for name, shape in self.label_shapes.items():
                out.append(f"  labels/{name:<21} {str(shape):<18} {np.dtype(LABEL_DTYPES.get(name, np.float32))}")
        else:
            shapes = sorted({str(s) for s in self.shapes.values()})
            out.append(f"  {len(keys)} maps of {' / '.join(shapes)} {self.feature_dtype}"
                       + (f" (stored reduced: {reduced})" if reduced else ""))
        line = (f"  {human(self.bytes_per_image)} per image, {human(self.total_bytes)} in all, "
                f"{human(self.pending_bytes)} still to write")
        if free is not None:
            line += f"; {human(free)} free there"
        out.append(line)
        return out

    def check_space(self, free: int) -> None:
        """Refuse, naming what would fit, when the bytes still to write exceed the free space."""
        need = self.pending_bytes
        if need <= free * (1 - RESERVE_FRACTION):
            return
        fits = []
        todo = self.num_samples - min(self.num_samples, self.shards_done * self.shard_size)
        for label, opts in self._alternatives():
            per = _bytes_per_image(self.raw_shapes, self.label_bytes, opts)
            if per * todo <= free * (1 - RESERVE_FRACTION):
                fits.append((per, f"{label} ({human(per)} per image)"))
        fits = [text for _, text in sorted(fits, reverse=True)[:3]]  # the least reduction that fits first
        max_images = int(free * (1 - RESERVE_FRACTION) // max(self.bytes_per_image, 1))
        hint = ("; options that fit: " + ", ".join(fits)) if fits else ""
        raise ProbekitError(
            f"{self.out}: this extraction needs {human(need)} but only {human(free)} is free on that disk "
            f"({human(self.bytes_per_image)} per image x {self.num_samples} images){hint}; or --limit "
            f"{max_images}, fewer --timesteps/--layers, or another --out. Nothing was written.")

    def _alternatives(self):
        """Storage options that reduce more than the current ones: pooling, projection, or both."""
        opts = self.storage
        c = min(s[0] for s in self.raw_shapes.values())
        short = min(min(s[1:]) for s in self.raw_shapes.values())
        pools = [None] + [k for k in (32, 16, 8, 4, 2) if k < short and (opts.pool is None or k < opts.pool)]
        dims = [None] + [d for d in (512, 256, 128, 64, 32, 16) if d < c and (opts.channels is None or d < opts.channels)]
        for k in pools:
            for d in dims:
                if k is None and d is None:
                    continue
                label = " ".join(x for x in (f"--pool {k}" if k else "", f"--channels {d}" if d else "") if x)
                channels = d or opts.channels
                yield label, StorageOptions(pool=k or opts.pool, channels=channels, dtype=opts.dtype,
                                            drop_massive=None if channels else opts.drop_massive)


def _bytes_per_image(raw_shapes, label_bytes: int, opts: StorageOptions) -> int:
    item = np.dtype(FEATURE_DTYPES[opts.dtype]).itemsize
    return sum(int(np.prod(stored_shape(s, opts))) * item for s in raw_shapes.values()) + label_bytes
