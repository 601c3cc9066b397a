"""The ablation grid: every single (t, layer), then concat, global and spatial fusion over all of them (every
registered fusion mode: those that read one map first, one run per map, then the others by name)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probekit import scores
from probekit.combined import open_features
from probekit.errors import ProbekitError
from probekit.keys import FeatureKey
from probekit.probes.config import fusion_class
from probekit.probes.trainer import train_probe


def fusion_modes() -> tuple[str, ...]:
    """The grid's order: each map alone (modes that read one map), then the fusing modes by name (single, then
    concat, global, spatial)."""
    from probekit.registries import FUSIONS

    return tuple(sorted(FUSIONS.names(), key=lambda name: (not fusion_class(name).reads_one_map, name)))


def grid_cells(keys: Sequence[str], fusions: Sequence[str] | None = None) -> list[dict[str, Any]]:
    cells = []
    for fusion in fusion_modes() if fusions is None else fusions:
        if fusion_class(fusion).reads_one_map:
            cells.extend({"fusion": fusion, "keys": [k]} for k in keys)
        else:
            cells.append({"fusion": fusion, "keys": list(keys)})
    return cells


def run_grid(train_features: str | Path, eval_features: str | Path, *, val_features: str | Path | None = None,
             results_root: str | Path = "results", fusions: Sequence[str] | None = None, overwrite: str = "skip",
             progress: bool = True, echo=print, site: str | None = None, **config: Any) -> list[dict[str, Any]]:
    """One result record per cell, at the default run directory of each; existing cells are kept by default.
    ``site`` keeps the grid to one capture site's maps."""
    with open_features(train_features) as reader:
        keys = [k for k in (config.pop("keys", None) or reader.keys) if site is None or FeatureKey(k).site == site]
    if not keys:
        raise ProbekitError(f"{train_features}: no maps of capture site {site!r}")
    records = []
    for cell in grid_cells(keys, fusions):
        record = train_probe(train_features, eval_features, val_features=val_features, results_root=results_root,
                             overwrite=overwrite, progress=progress, **{**config, **cell})
        if record is None:
            one = fusion_class(cell["fusion"]).reads_one_map
            echo(f"kept existing {cell['fusion']} {','.join(cell['keys']) if one else ''}")
            continue
        echo(f"{record['task']} {record['main_score_name']} {describe_score(record)}  {record['probe']['name']}")
        records.append(record)
    return records


def describe_score(record: dict[str, Any]) -> str:
    unit = scores.info(record["main_score_name"], record)["unit"]
    return scores.format_score(record["main_score"], unit, record.get("main_score_std"))
