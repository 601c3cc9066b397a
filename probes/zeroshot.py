"""Zero-shot segmentation from concept-attention maps: argmax over concepts, scored like any seg probe."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from probekit.errors import FeatureFileError, ProbekitError
from probekit.probes.tasks import SegmentationTask
from probekit.provenance import base_provenance
from probekit.results import ResultRecord, check_overwrite, default_run_dir
from probekit.store import FeatureReader

# The fusion a zero-shot record names: no registered fusion (nothing is fused or trained; `probekit probe`
# refuses it, and readers that need a registered fusion, e.g. probes/load.py, skip such records).
FUSION = "zero-shot"


def zero_shot_segmentation(features: str | Path, *, mode: str = "output", out: str | Path | None = None,
                           results_root: str | Path = "results", overwrite: str = "error",
                           batch_size: int = 32) -> dict[str, Any] | None:
    started = time.perf_counter()
    with FeatureReader(features) as reader:
        key = f"concepts={mode}"
        if key not in reader.keys:
            raise FeatureFileError(f"{reader.path} holds no concept maps {key!r} (extract with --concept-attention)")
        concepts = reader.provenance.get("extractor", {}).get("concepts") or []
        task = SegmentationTask(reader.dataset)
        missing = [c for c in task.classes if c not in concepts]
        if missing:
            raise ProbekitError(f"zero-shot segmentation needs one concept per class; {reader.path} lacks "
                                f"{', '.join(missing)} (concepts: {', '.join(concepts)})")
        order = torch.tensor([concepts.index(c) for c in task.classes])  # class id -> concept channel
        name = f"concept-{mode}-zeroshot"
        extractor = reader.attr("extractor")
        run_dir = Path(out) if out else default_run_dir(results_root, extractor, reader.dataset.get("dataset"),
                                                         task.name, name)
        if not check_overwrite(run_dir, overwrite):
            return None
        metric = task.new_metric()
        size = reader.label_shape(task.label)
        for batch in reader.batches([key], batch_size, labels=[task.label]):
            maps = torch.from_numpy(batch["features"][key])[:, order]
            if not bool(torch.isfinite(maps).all()):
                raise FeatureFileError(f"{reader.path}: concept maps of rows {batch['positions'][:3].tolist()} hold "
                                       "NaN or inf")
            logits = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            task.update(metric, logits, task.target(batch["labels"][task.label]))
        metrics = task.compute(metric)
        record = ResultRecord(
            task=task.name, main_score_name=task.main_metric, main_score=float(metrics[task.main_metric]),
            higher_is_better=task.higher_is_better, metrics=metrics, metrics_info=task.metrics_info(), extractor=extractor,
            dataset=reader.dataset.get("dataset"), seeds=[],
            probe={"name": name, "fusion": FUSION, "head": f"argmax-{mode}", "feature_keys": [key],
                   "timestep": None, "layer": None, "timesteps": reader.attr("timesteps"),
                   "layers": reader.provenance.get("extractor", {}).get("concept_layers"), "fusion_weights": None},
            config={"mode": mode, "concepts": concepts, "classes": task.classes, "trained": False,
                    "eval_features": str(features)},
            features={"eval": {"path": str(Path(reader.path).resolve()), "num_samples": reader.num_samples,
                               "split": reader.dataset.get("split"), "provenance": reader.provenance}},
            provenance={**base_provenance(), "stage": "zeroshot"},
            wall_time_s=round(time.perf_counter() - started, 3), notes=list(reader.provenance.get("notes", [])))
        record.write(run_dir)
        return {**record.to_dict(), "_path": str(run_dir / "result.json")}
