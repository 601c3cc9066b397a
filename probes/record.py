"""The result of a probe run: the record and the files beside it, written as one folder that appears whole.

A run folder holds ``result.json``, ``head.safetensors`` (the first seed's head), ``examples.safetensors``
(the first evaluation images: thumbnail, ground truth and prediction, so reports never need the dataset) and,
for spatial fusion, ``spatial_weights.safetensors``. It is written aside and swapped in (``probekit.atomic``):
a kill during ``--overwrite`` leaves the old run or the new one, never a mix, and no file of an earlier run
survives an overwrite.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probekit import atomic
from probekit.errors import ProbekitError
from probekit.keys import FeatureKey, columns_of, layers_of, timesteps_of
from probekit.provenance import base_provenance
from probekit.results import ResultRecord

EXAMPLES_FILE = "examples.safetensors"


def check_writable(run_dir: Path) -> None:
    """Fail before training, not after, when the run folder cannot be written (it is swapped in beside itself)."""
    atomic.check_writable_dir(run_dir, "the run folder (--out or --results-root)", parent=True)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def aggregate_metrics(per_seed: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mean (and std) over seeds of every numeric metric, nested ones (per-class IoU) entry by entry."""
    means: dict[str, Any] = {}
    stds: dict[str, Any] = {}
    for name, first in per_seed[0].items():
        values = [m.get(name) for m in per_seed]
        if isinstance(first, dict):
            means[name], stds[name] = {}, {}
            for sub in first:
                vals = [v.get(sub) for v in values if isinstance(v, dict)]
                if all(isinstance(x, (int, float)) for x in vals):
                    means[name][sub], stds[name][sub] = mean_std(vals)
                else:
                    means[name][sub], stds[name][sub] = None, None
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            means[name], stds[name] = mean_std(values)
            if isinstance(first, int):
                means[name] = int(round(means[name]))
        else:
            means[name] = first
    return means, stds


READINGS = {
    "features": "a weight is the share of its (timestep, layer) map in the fused map the head reads; maps are "
                "normalised before weighting, so the weights are directly comparable",
    "predictions": "a weight is the share of its (timestep, layer) map's own linear read-out in the mixed "
                   "prediction; every read-out is also trained alone, so the weights compare calibrated "
                   "predictions of the maps",
}


def fusion_weights(keys: list[str], per_seed: list[dict[str, float] | None], kind: str,
                   normalised_over: str, level: str = "features") -> dict[str, Any] | None:
    """Per key (mean and std over seeds), plus (timestep x layer) matrices when the keys form a grid."""
    runs = [w for w in per_seed if w is not None]
    if not runs:
        return None
    mean = {k: float(np.mean([w[k] for w in runs])) for k in keys}
    std = {k: (float(np.std([w[k] for w in runs], ddof=1)) if len(runs) > 1 else None) for k in keys}
    timesteps, columns = timesteps_of(keys), columns_of(keys)
    cell = {(FeatureKey(k).timestep, FeatureKey(k).column): k for k in keys}

    def grid(values):
        return [[values.get(cell.get((t, c))) for c in columns] for t in timesteps] if timesteps else None

    return {"kind": kind, "per_key": mean, "per_key_std": std, "per_seed": runs, "seeds": len(runs),
            "timesteps": timesteps, "layers": columns, "matrix": grid(mean), "matrix_std": grid(std),
            "normalised_over": normalised_over, "level": level, "reading": READINGS[level]}


def probe_fields(name: str, cfg, keys: list[str], channels: dict[str, int], guidance_keys: list[str],
                 fusion_info: dict[str, Any] | None, examples: bool, spatial: bool) -> dict[str, Any]:
    from probekit.probes.config import fusion_class

    single = FeatureKey(keys[0]) if fusion_class(cfg.fusion).reads_one_map else None
    return {"name": name, "fusion": cfg.fusion, "head": cfg.head, "feature_keys": keys,
            "timestep": single.timestep if single else None, "layer": single.layer if single else None,
            "timesteps": timesteps_of(keys), "layers": layers_of(keys), "in_channels": channels,
            "guidance_keys": guidance_keys, "head_weights": "head.safetensors",
            "examples": EXAMPLES_FILE if examples else None, "fusion_weights": fusion_info,
            **({"spatial_weights": "spatial_weights.safetensors"} if spatial else {})}


def write_run(run_dir: Path, record: ResultRecord, head_state: dict[str, torch.Tensor],
              examples: dict[str, torch.Tensor] | None, examples_meta: dict[str, str],
              spatial_examples: torch.Tensor | None, keys: list[str]) -> Path:
    """Write every file of the run into a fresh folder, then swap it in for ``run_dir``."""
    from safetensors.torch import save_file

    if not math.isfinite(record.main_score):
        raise ProbekitError(f"refusing to save {run_dir}: its {record.main_score_name} is {record.main_score}")
    with atomic.atomic_dir(run_dir) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in head_state.items()}, str(tmp / "head.safetensors"))
        if examples:
            save_file({k: v.contiguous() for k, v in examples.items()}, str(tmp / EXAMPLES_FILE),
                      metadata=examples_meta)
        if spatial_examples is not None:
            save_file({"weights": spatial_examples.contiguous()}, str(tmp / "spatial_weights.safetensors"),
                      metadata={"keys": ",".join(keys), "layout": "(image, key, h, w) softmax weights on eval images"})
        record.write(tmp)
    return run_dir / "result.json"


def new_record(**fields: Any) -> ResultRecord:
    return ResultRecord(provenance={**base_provenance(), "stage": "probe"}, **fields)
