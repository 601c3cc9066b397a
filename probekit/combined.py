"""Several feature files of the same samples read as one (e.g. DiT + DINOv3 features, concatenated).

Samples are aligned by id; every key is prefixed with its source (``src=<extractor>/t=.../layer=...``);
maps keep their own grids and the probe's fusion resamples them to a common one. Files from different
datasets, splits or sample sets are refused, naming the files and what differs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probekit.errors import FeatureFileError
from probekit.store import FeatureReader


class CombinedReader:
    def __init__(self, paths: Sequence[str | Path], allow_incomplete: bool = False):
        if len(paths) < 2:
            raise ValueError("CombinedReader needs at least two feature files")
        self.readers = [FeatureReader(p, allow_incomplete=allow_incomplete) for p in paths]
        try:
            self._check()
        except FeatureFileError:
            self.close()
            raise
        first = self.readers[0]
        self.path = Path("+".join(str(r.path) for r in self.readers))
        self.num_samples = first.num_samples
        self.sample_ids = list(first.sample_ids)
        self.indices = first.indices
        self.label_names = list(first.label_names)
        names = [str(r.attr("extractor")) for r in self.readers]
        self.sources = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
        self._key_map: dict[str, tuple[int, str]] = {}
        for i, (src, r) in enumerate(zip(self.sources, self.readers)):
            for key in r.keys:
                self._key_map[f"src={src}/{key}"] = (i, key)
        self.keys = list(self._key_map)
        # row in reader i for each row of the first reader
        self._rows = [np.array([{s: j for j, s in enumerate(r.sample_ids)}[s] for s in self.sample_ids])
                      for r in self.readers]

    def _check(self) -> None:
        first = self.readers[0]
        for other in self.readers[1:]:
            da, db = first.dataset, other.dataset
            for name in ("dataset", "split", "manifest_sha256", "params_hash"):
                if da.get(name) != db.get(name):
                    raise FeatureFileError(f"cannot combine {first.path} and {other.path}: they differ in dataset "
                                           f"{name} ({da.get(name)!r} vs {db.get(name)!r})")
            if set(first.sample_ids) != set(other.sample_ids):
                only_a = sorted(set(first.sample_ids) - set(other.sample_ids))
                only_b = sorted(set(other.sample_ids) - set(first.sample_ids))
                raise FeatureFileError(
                    f"cannot combine {first.path} ({first.num_samples} samples) and {other.path} "
                    f"({other.num_samples} samples): different sample sets"
                    + (f"; e.g. {only_a[0]} only in the first" if only_a else "")
                    + (f"; e.g. {only_b[0]} only in the second" if only_b else ""))

    # -- the FeatureReader interface used by probes ------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        if name == "extractor":
            return "+".join(self.sources)
        return self.readers[0].attr(name, default)

    @property
    def dataset(self) -> dict[str, Any]:
        return self.readers[0].dataset

    @property
    def provenance(self) -> dict[str, Any]:
        return {"combined": True,
                "extractor": {src: r.provenance.get("extractor", {}) for src, r in zip(self.sources, self.readers)},
                "sources": [{"path": str(r.path), "provenance": r.provenance} for r in self.readers],
                "notes": [n for r in self.readers for n in r.provenance.get("notes", [])]}

    @property
    def storage(self) -> dict[str, Any]:
        """Each source's storage, side by side ({} when every source stores plain maps)."""
        sources = [r.storage for r in self.readers]
        if not any(s.get("label") for s in sources):
            return {}
        return {"label": "+".join(s.get("label") or "plain" for s in sources),
                "pool": [s.get("pool") for s in sources], "channels": [s.get("channels") for s in sources],
                "projection": {"sha256": "+".join(str((s.get("projection") or {}).get("sha256")) for s in sources)}}

    def feature_dtype_of(self, key: str) -> str:
        i, k = self._resolve(key)
        return self.readers[i].feature_dtype_of(k)

    def shape(self, key: str) -> tuple[int, ...]:
        i, k = self._resolve(key)
        return self.readers[i].shape(k)

    def label_shape(self, name: str) -> tuple[int, ...]:
        return self.readers[0].label_shape(name)

    def _resolve(self, key: str) -> tuple[int, str]:
        if key not in self._key_map:
            raise FeatureFileError(f"{self.path} has no feature {key!r}; it has: {', '.join(self.keys)}")
        return self._key_map[key]

    def read(self, key: str, positions: Sequence[int]) -> np.ndarray:
        return self.read_raw(key, positions).astype(np.float32)

    def read_raw(self, key: str, positions: Sequence[int]) -> np.ndarray:
        i, k = self._resolve(key)
        return self.readers[i].read_raw(k, self._rows[i][np.asarray(positions, dtype=np.int64)])

    def read_labels(self, name: str, positions: Sequence[int]) -> np.ndarray:
        return self.readers[0].read_labels(name, positions)

    def read_thumbnails(self, positions: Sequence[int]) -> np.ndarray | None:
        return self.readers[0].read_thumbnails(positions)

    def batches(self, keys: Sequence[str], batch_size: int, *, labels: Sequence[str] = (), shuffle: bool = False,
                seed: int = 0, epoch: int = 0, subset: Sequence[int] | None = None,
                raw: bool = False) -> Iterator[dict[str, Any]]:
        read = self.read_raw if raw else self.read
        for batch in self.readers[0].batches([], batch_size, labels=labels, shuffle=shuffle, seed=seed, epoch=epoch,
                                             subset=subset):
            batch["features"] = {k: read(k, batch["positions"]) for k in keys}
            yield batch

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def __enter__(self) -> "CombinedReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_features(paths: str | Path | Sequence[str | Path]):
    """One feature file -> FeatureReader; several -> CombinedReader."""
    if isinstance(paths, (str, Path)):
        return FeatureReader(paths)
    paths = list(paths)
    return FeatureReader(paths[0]) if len(paths) == 1 else CombinedReader(paths)
