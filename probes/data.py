"""The data side of a probe run: feature files opened and checked, keys and rows chosen, minibatches served.

Features are read once into memory (on the probe's device) when they fit in ``resident_bytes``: a small file
is then never read batch by batch again, and a training step costs the head, not HDF5. Larger files are
streamed minibatch by minibatch (read ahead on a thread on a GPU), so memory stays flat whatever the file's
size. Either way batches are the same, in the same seeded order, and every feature value that reaches a head
has been checked to be finite (a NaN or inf names its file, map and sample).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probekit.combined import open_features
from probekit.errors import FeatureFileError, ProbekitError
from probekit.devices import resolve_device
from probekit.keys import DEFAULT_SITE, FeatureKey, feature_key, sites_of
from probekit.prefetch import prefetched
from probekit.probes.config import ProbeConfig
from probekit.probes.fusion import STACKED, STACKED_KEYS
from probekit.store import NonFiniteFeatures, as_tensor


def check_compatible(a, b, keys: Sequence[str], cross_dataset: bool = False) -> None:
    """Refuse feature files that do not belong together, naming both files and what differs."""
    ea, eb = a.provenance.get("extractor", {}), b.provenance.get("extractor", {})
    ignore = {"device", "dtype"}  # the same features may be computed on different hardware
    diffs = sorted(k for k in set(ea) | set(eb) if k not in ignore and ea.get(k) != eb.get(k))
    if diffs:
        raise FeatureFileError(f"{a.path} and {b.path} come from different extractor settings "
                               f"({', '.join(diffs)}); extract both with the same settings")
    sa, sb = _storage_identity(a), _storage_identity(b)
    if sa != sb:
        what = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))
        hint = (" (extract the other splits with --projection-from TRAIN.h5 to share the training split's "
                "projection)" if "projection" in what else "")
        raise FeatureFileError(f"{a.path} and {b.path} were stored differently ({', '.join(what)}: "
                               f"{[sa.get(k) for k in what]} vs {[sb.get(k) for k in what]}){hint}")
    da, db = a.dataset, b.dataset
    for name in (("classes",) if cross_dataset else ("dataset", "manifest_sha256", "params_hash", "classes")):
        if da.get(name) != db.get(name):
            raise FeatureFileError(f"{a.path} and {b.path} differ in dataset {name}: "
                                   f"{da.get(name)!r} vs {db.get(name)!r}")
    for key in keys:
        if key not in b.keys:
            raise FeatureFileError(f"{b.path} has no feature {key!r} (it has: {', '.join(b.keys)})")
        if a.shape(key) != b.shape(key):
            raise FeatureFileError(f"feature {key!r} has shape {a.shape(key)} in {a.path} but {b.shape(key)} "
                                   f"in {b.path}")
    shared = set(a.sample_ids) & set(b.sample_ids)
    if shared:
        raise FeatureFileError(f"{a.path} and {b.path} share {len(shared)} samples (e.g. {sorted(shared)[0]}): "
                               "train, validate and evaluate on disjoint splits")


def _storage_identity(reader) -> dict[str, Any]:
    """What of a file's storage must agree across splits: pooling and the projection itself (not the dtype)."""
    storage = reader.storage
    proj = storage.get("projection") or {}
    return {"pool": storage.get("pool"), "channels": storage.get("channels"), "projection": proj.get("sha256")}


def storage_label(reader) -> str:
    """"" for plain maps, else e.g. "pool8,pca64" (combined files: each source's, joined by '+')."""
    return str(reader.storage.get("label") or "")


def resolve_keys(reader, fusion: str, timestep: int | None = None, layer: int | None = None,
                 keys: Sequence[str] | None = None, site: str | None = None) -> list[str]:
    from probekit.probes.config import fusion_class

    cls = fusion_class(fusion)  # what the mode reads: one map, or at least min_maps of them
    one = cls.reads_one_map
    if not one and (timestep is not None or layer is not None):
        raise ProbekitError(f"--timestep/--layer pick the one map of a single-map probe; {fusion} fusion fuses "
                            "several maps (all of the file's by default): drop them, or use --fusion single")
    if keys is None and layer is not None:
        keys = [feature_key(timestep, layer, site or DEFAULT_SITE)]
    elif keys is None and site is not None:  # one capture site: its maps only
        keys = [k for k in reader.keys if FeatureKey(k).site == site]
        if not keys:
            raise ProbekitError(f"{reader.path} holds no maps of capture site {site!r} (its sites: "
                                f"{', '.join(sites_of(reader.keys))})")
        if one and len(keys) > 1:
            raise ProbekitError(f"{reader.path} holds {len(keys)} maps of site {site!r}; choose one with --timestep "
                                "and --layer")
    if keys is None:
        if one:
            if len(reader.keys) == 1:
                return list(reader.keys)
            raise ProbekitError(f"{reader.path} holds {len(reader.keys)} feature maps; choose one with --timestep "
                                f"and --layer (available: {', '.join(reader.keys)})")
        keys = list(reader.keys)
    else:
        keys = [_match_key(reader, k) for k in keys]
        missing = [k for k in keys if k not in reader.keys]
        if missing:
            raise ProbekitError(f"{reader.path} has no feature {missing[0]!r}; available: {', '.join(reader.keys)}")
    if one and len(keys) != 1:
        raise ProbekitError(f"{fusion} fusion probes exactly one feature map, got {len(keys)}")
    if len(keys) < cls.min_maps:
        offers = "one" if len(keys) == 1 else str(len(keys))
        raise ProbekitError(f"{fusion} fusion {'learns weights over' if cls.learns_weights else 'fuses'} several "
                            f"maps, and {reader.path} offers {offers} ({', '.join(keys)}); probe it with --fusion single")
    return list(keys)


def _match_key(reader, key: str) -> str:
    """A key as given, or the one key of a combined file that ends with it ("src=a/t=5/layer=2" for "t=5/layer=2")."""
    if key in reader.keys:
        return key
    hits = [k for k in reader.keys if k.endswith("/" + key)]
    return hits[0] if len(hits) == 1 else key


def _paths(p) -> list[str]:
    return [str(p)] if isinstance(p, (str, Path)) else [str(x) for x in p]


def default_resident_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 3)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return int(min(ram // 4, 8 << 30))


@dataclass
class Split:
    """Rows of one feature file that play one role (train, val, eval)."""

    name: str
    reader: Any
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


class _Resident:
    """A split's features and labels in memory on the device, indexed per batch (no file reads). Fused maps of
    one shape are kept stacked, (N, K, C, h, w), so a batch of them is one gather and fusion reads it as is."""

    def __init__(self, split: Split, keys: list[str], stack: list[str], label: str, task, device: torch.device,
                 dtype: torch.dtype):
        r = split.reader
        self.stack_keys = tuple(stack) if len(stack) > 1 else ()
        self.features: dict[str, torch.Tensor] = {}
        self.stacked = None
        if self.stack_keys:  # filled map by map: no second copy of the whole stack is ever held
            shape = r.shape(self.stack_keys[0])
            self.stacked = torch.empty((len(split.rows), len(self.stack_keys), *shape), dtype=dtype, device=device)
        for key in keys:
            t = as_tensor(r.read_raw(key, split.rows), r.feature_dtype_of(key))
            _check_finite(t, key, r, split.rows)
            if key in self.stack_keys:
                self.stacked[:, self.stack_keys.index(key)] = t.to(device=device, dtype=dtype)
            else:
                self.features[key] = t.to(device=device, dtype=dtype)
            del t
        self.target = task.target(r.read_labels(label, split.rows)).to(device)

    def batch(self, idx: np.ndarray) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        index = torch.from_numpy(idx).to(self.target.device)
        feats: dict[str, Any] = {k: v.index_select(0, index).float() for k, v in self.features.items()}
        if self.stacked is not None:
            x = self.stacked.index_select(0, index).float()
            feats.update({k: x[:, i] for i, k in enumerate(self.stack_keys)})
            feats[STACKED], feats[STACKED_KEYS] = x, self.stack_keys
        return feats, self.target.index_select(0, index)

    def channel_stats(self, keys: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for key in keys:
            if key in self.stack_keys:
                x = self.stacked[:, self.stack_keys.index(key)]
            else:
                x = self.features[key]
            out[key] = _mean_std(x)
        return out


class _Moments:
    """Per-channel sums of (N, C, h, w) maps over samples and positions, in float64: the mean and std of a map
    from its chunks (resident rows in chunks of 64, streamed rows batch by batch)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        if self.total is None:
            self.total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self.squares = torch.zeros_like(self.total)
        self.total += x.sum(dim=(0, 2, 3))
        self.squares += (x * x).sum(dim=(0, 2, 3))
        self.count += x.shape[0] * x.shape[2] * x.shape[3]

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.count
        return mean.float(), (self.squares / self.count - mean * mean).clamp_min(0).sqrt().float()


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (N, C, h, w) over samples and positions, accumulated in chunks."""
    moments = _Moments()
    for a in range(0, len(x), 64):
        moments.add(x[a:a + 64])
    return moments.mean_std()


def _check_finite(t: torch.Tensor, key: str, reader, rows: np.ndarray) -> None:
    ok = torch.isfinite(t).flatten(1).all(1)
    if not bool(ok.all()):
        bad = torch.nonzero(~ok).flatten().tolist()
        raise NonFiniteFeatures(f"{reader.path}", key, [int(rows[i]) for i in bad],
                                [reader.sample_ids[int(rows[i])] for i in bad])


class ProbeData:
    """Readers, keys, rows and the task of one probe run; ``batches`` serves minibatches on the device."""

    def __init__(self, cfg: ProbeConfig, train_features, eval_features, *, val_features=None, guidance=None,
                 eval_guidance=None, val_guidance=None, timestep: int | None = None, layer: int | None = None,
                 site: str | None = None):
        from probekit.registries import TASKS

        if (guidance is None) != (eval_guidance is None) or (val_guidance is not None and val_features is None):
            raise ProbekitError("guidance maps are needed for every split a probe reads: give --guidance with "
                                "--eval-guidance (and --val-guidance with --val-features)")
        if val_features is not None and guidance is not None and val_guidance is None:
            raise ProbekitError("--val-features with --guidance needs --val-guidance too")
        with_guidance = (lambda f, g: _paths(f) + _paths(g)) if guidance is not None else (lambda f, g: f)
        self.paths = {"train": _paths(train_features), "eval": _paths(eval_features),
                      "val": _paths(val_features) if val_features is not None else None}
        self.readers: list = []
        try:
            self.readers.append(open_features(with_guidance(train_features, guidance)))
            self.readers.append(open_features(with_guidance(eval_features, eval_guidance)))
            if val_features is not None:
                self.readers.append(open_features(with_guidance(val_features, val_guidance)))
            self._setup(cfg, guidance, timestep, layer, site, TASKS)
        except BaseException:
            self.close()
            raise

    def _setup(self, cfg, guidance, timestep, layer, site, tasks) -> None:
        train, evaluation = self.readers[0], self.readers[1]
        val = self.readers[2] if len(self.readers) > 2 else None
        self.guidance_keys = [k for k in train.keys if "/concepts=" in k] if guidance is not None else []
        if guidance is not None and not self.guidance_keys:
            raise FeatureFileError(f"{_paths(guidance)[0]} holds no concept maps to use as guidance")
        self.keys = resolve_keys(_Without(train, self.guidance_keys), cfg.fusion, timestep, layer, cfg.keys, site)
        for other in self.readers[1:]:
            check_compatible(train, other, self.all_keys, cfg.cross_dataset)
        if val is not None:
            check_compatible(val, evaluation, self.all_keys, cfg.cross_dataset)
        self.reference = train.dataset
        crop = cfg.eval_crop
        if crop is None and tasks.get(cfg.task).load().dataset_eval_crop and evaluation.dataset.get("eval_crop"):
            crop = list(evaluation.dataset["eval_crop"])  # the dataset's protocol (e.g. NYU's Eigen crop)
        # The settings as resolved against these files (the keys read, the dataset's crop), recorded as the run's:
        # a copy, so the config the caller gave stays as given.
        self.cfg = cfg = replace(cfg, keys=list(self.keys), eval_crop=crop)
        try:
            self.task = tasks.get(cfg.task).build(reference=self.reference, depth_output=cfg.depth_output,
                                                  depth_loss=cfg.depth_loss,
                                                  crop=tuple(cfg.eval_crop) if cfg.eval_crop else None)
        except ValueError as exc:
            raise ProbekitError(f"{train.path}: {exc}") from None
        for r in self.readers:
            if self.task.label not in r.label_names:
                raise FeatureFileError(f"{r.path} holds no {self.task.label!r} labels (it has: "
                                       f"{', '.join(r.label_names) or 'none'})")
        self.label_size = tuple(train.label_shape(self.task.label))
        self.channels = {k: train.shape(k)[0] for k in self.all_keys}
        # Validation: a given file, or a seeded slice of the training file (recorded either way). It depends
        # on the first seed only, so that every seed of a run is selected on the same rows.
        if val is None:
            order = np.random.default_rng([cfg.seed, 7]).permutation(train.num_samples)
            n_val = max(1, int(round(cfg.val_fraction * train.num_samples)))
            if n_val >= train.num_samples:
                raise ProbekitError(f"{train.path} has {train.num_samples} samples: too few to hold out a validation "
                                    "slice; give --val-features")
            val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
            self.val = Split("val", train, val_rows)
            self.validation = {"from": "train", "fraction": cfg.val_fraction, "rows": int(n_val)}
        else:
            train_rows = np.arange(train.num_samples)
            self.val = Split("val", val, np.arange(val.num_samples))
            self.validation = {"from": str(Path(val.path).resolve()), "split": val.dataset.get("split"),
                               "rows": val.num_samples}
        if cfg.train_limit is not None:
            if cfg.train_limit > len(train_rows):
                raise ProbekitError(f"train_limit {cfg.train_limit} exceeds the {len(train_rows)} training rows of "
                                    f"{train.path}")
            train_rows = train_rows[: cfg.train_limit]
        self.train = Split("train", train, train_rows)
        self.eval = Split("eval", evaluation, np.arange(evaluation.num_samples))
        self.device = resolve_device(cfg.device)
        self._resident: dict[str, _Resident] = {}
        self._stats: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.mode = self._choose_mode()

    @property
    def all_keys(self) -> list[str]:
        return self.keys + self.guidance_keys

    @property
    def train_reader(self):
        return self.readers[0]

    @property
    def eval_reader(self):
        return self.readers[1]

    def bytes_needed(self, itemsize: int = 4) -> int:
        per_row = sum(int(np.prod(self.train.reader.shape(k))) for k in self.all_keys) * itemsize
        label = int(np.prod(self.label_size)) * 8
        return (per_row + label) * (len(self.train) + len(self.val) + len(self.eval))

    def _choose_mode(self) -> str:
        budget = self.cfg.resident_bytes if self.cfg.resident_bytes is not None else default_resident_bytes(self.device)
        if self.bytes_needed(4) <= budget:
            self._dtype = torch.float32
            return "resident"
        if self.bytes_needed(2) <= budget:
            # Half size, converted per batch: float16 when every map is stored so (no value changes); otherwise
            # bfloat16, whose range holds any finite float32 (float16 would turn values above 65,504 into inf).
            stored = {r.feature_dtype_of(k) for r in self.readers for k in self.all_keys}
            self._dtype = torch.float16 if stored == {"float16"} else torch.bfloat16
            return "resident"
        return "streamed"

    def _resident_split(self, split: Split) -> _Resident:
        if split.name not in self._resident:
            shapes = {self.train.reader.shape(k) for k in self.keys}
            stack = self.keys if len(shapes) == 1 else []
            self._resident[split.name] = _Resident(split, self.all_keys, stack, self.task.label, self.task,
                                                   self.device, self._dtype)
        return self._resident[split.name]

    def channel_stats(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-channel mean and std of every fused map over the training rows (fusion's fixed standardisation)."""
        if self._stats is None:
            if self.mode == "resident":
                self._stats = self._resident_split(self.train).channel_stats(self.keys)
            else:
                self._stats = self._streamed_stats()
        return self._stats

    def _streamed_stats(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        moments: dict[str, _Moments] = {}  # per key: combined backbones may have different grids
        for _, feats, _ in self.batches(self.train):
            for k in self.keys:
                moments.setdefault(k, _Moments()).add(feats[k])
        return {k: m.mean_std() for k, m in moments.items()}

    def batches(self, split: Split, *, shuffle: bool = False, seed: int = 0,
                epoch: int = 0) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], torch.Tensor]]:
        """(positions in the split's file, {key: (B, C, h, w) float32}, target) on the device."""
        n = len(split)
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        bs = self.cfg.batch_size
        if self.mode == "resident":
            res = self._resident_split(split)
            for a in range(0, n, bs):
                idx = order[a:a + bs]
                feats, target = res.batch(idx)
                yield split.rows[idx], feats, target
            return
        prefetch = self.cfg.prefetch if self.cfg.prefetch is not None else (2 if self.device.type == "cuda" else 0)
        reader = split.reader
        batches = reader.batches(self.all_keys, bs, labels=[self.task.label], subset=split.rows[order], raw=True)
        for batch in prefetched(batches, prefetch):
            feats = {}
            for k, v in batch["features"].items():
                t = as_tensor(v, reader.feature_dtype_of(k))
                _check_finite(t, k, reader, batch["positions"])
                feats[k] = t.to(self.device, non_blocking=True).float()
            yield batch["positions"], feats, self.task.target(batch["labels"][self.task.label]).to(self.device)

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "device": str(self.device),
                "rows": {"train": len(self.train), "val": len(self.val), "eval": len(self.eval)}}

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def __enter__(self) -> "ProbeData":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Without:
    """A reader view that hides some keys (guidance maps are not fused)."""

    def __init__(self, reader, hidden: list[str]):
        self._reader, self.keys = reader, [k for k in reader.keys if k not in hidden]
        self.path = reader.path


