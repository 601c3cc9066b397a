"""Dataset -> extractor -> feature file: the extraction stage as a library function."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from probekit.extractors.base import Extractor
from probekit.provenance import base_provenance
from probekit.store import FeatureWriter


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)


def extract_dataset(extractor: Extractor, dataset, out: str | os.PathLike, *, limit: int | None = None,
                    batch_size: int = 8, overwrite: bool = False, progress: bool = True,
                    run_params: dict[str, Any] | None = None) -> Path:
    """Extract features for the first ``limit`` samples of ``dataset`` into a new HDF5 file."""
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n <= 0:
        raise ValueError(f"nothing to extract: the dataset has {len(dataset)} samples and limit is {limit}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    indices = list(range(n))
    reference = dataset.reference()
    provenance = {
        **base_provenance(),
        "stage": "extract",
        "extractor": extractor.config(),
        "weights": extractor.weights_identity(),
        "dataset": reference,
        "run": {"limit": limit, "batch_size": batch_size, **(run_params or {})},
        "notes": extractor.notes(),
    }
    attrs = {
        "extractor": extractor.name, "timesteps": extractor.timesteps, "layers": extractor.layers,
        "seed": extractor.config().get("seed"), "ensemble": extractor.config().get("ensemble"),
        "dataset": reference, "provenance": provenance,
    }
    out = Path(out)
    start = time.perf_counter()
    with FeatureWriter(out, sample_ids=[dataset.sample_id(i) for i in indices], indices=indices, attrs=attrs,
                       overwrite=overwrite) as writer:
        bar = tqdm(total=n, desc=f"extract {extractor.name} -> {out.name}", unit="img", disable=not progress)
        for start_pos in range(0, n, batch_size):
            positions = list(range(start_pos, min(start_pos + batch_size, n)))
            samples = [dataset[indices[p]] for p in positions]
            feats = extractor.extract(_to_tensor([s.image for s in samples]), [s.caption for s in samples],
                                      [s.index for s in samples])
            labels = {name: np.stack([getattr(s, name) for s in samples])
                      for name in ("seg", "depth", "saliency") if getattr(samples[0], name) is not None}
            writer.write_batch(positions, {k: v.numpy() for k, v in feats.items()}, labels,
                               [s.caption for s in samples])
            bar.update(len(positions))
        bar.close()
        writer.set_attr("extract_wall_time_s", round(time.perf_counter() - start, 3))
        writer.finalize()
    return out
