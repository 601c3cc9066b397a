"""Train a probe head on frozen features streamed from feature files, evaluate it, record the result."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from probekit.errors import FeatureFileError, ProbekitError
from probekit.provenance import base_provenance
from probekit.registries import HEADS, TASKS
from probekit.results import ResultRecord, check_overwrite, default_run_dir
from probekit.store import FeatureReader, feature_key


def check_compatible(train: FeatureReader, evaluation: FeatureReader, key: str) -> None:
    """Refuse feature files that do not belong together, naming both files and what differs."""
    a, b = train.provenance.get("extractor", {}), evaluation.provenance.get("extractor", {})
    ignore = {"device", "dtype"}  # the same features may be computed on different hardware
    diffs = sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))
    if diffs:
        raise FeatureFileError(f"{train.path} and {evaluation.path} come from different extractor settings "
                               f"({', '.join(diffs)}); extract both with the same settings")
    da, db = train.dataset, evaluation.dataset
    for field in ("dataset", "manifest_sha256", "params_hash", "classes"):
        if da.get(field) != db.get(field):
            raise FeatureFileError(f"{train.path} and {evaluation.path} differ in dataset {field}: "
                                   f"{da.get(field)!r} vs {db.get(field)!r}")
    if train.shape(key) != evaluation.shape(key):
        raise FeatureFileError(f"feature {key!r} has shape {train.shape(key)} in {train.path} but "
                               f"{evaluation.shape(key)} in {evaluation.path}")
    shared = set(train.sample_ids) & set(evaluation.sample_ids)
    if shared:
        raise FeatureFileError(f"{train.path} and {evaluation.path} share {len(shared)} samples "
                               f"(e.g. {sorted(shared)[0]}): evaluate on a held-out split")


def resolve_key(reader: FeatureReader, timestep: int | None, layer: int | None, key: str | None) -> str:
    if key is None:
        if layer is None:
            if len(reader.keys) == 1:
                return reader.keys[0]
            raise ProbekitError(f"{reader.path} holds {len(reader.keys)} feature maps; choose one with --timestep "
                                f"and --layer (available: {', '.join(reader.keys)})")
        key = feature_key(timestep, layer)
    if key not in reader.keys:
        raise ProbekitError(f"{reader.path} has no feature {key!r}; available: {', '.join(reader.keys)}")
    return key


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train_probe(train_features: str | Path, eval_features: str | Path, *, task: str = "seg",
                timestep: int | None = None, layer: int | None = None, key: str | None = None,
                head: str = "linear", epochs: int = 10, batch_size: int = 16, lr: float = 1e-2,
                weight_decay: float = 1e-4, seed: int = 0, device: str = "cpu", out: str | Path | None = None,
                results_root: str | Path = "results", overwrite: str = "error",
                progress: bool = True) -> dict[str, Any] | None:
    """Train one probe; returns the result record as a dict (None when skipped as existing)."""
    started = time.perf_counter()
    task_entry, head_entry = TASKS.get(task), HEADS.get(head)  # unknown names fail before any work
    with FeatureReader(train_features) as train, FeatureReader(eval_features) as evaluation:
        key = resolve_key(train, timestep, layer, key)
        check_compatible(train, evaluation, key)
        ref = train.dataset
        task_obj = task_entry.build(classes=ref.get("classes"), ignore_index=ref.get("ignore_index"))
        if task_obj.label not in train.label_names:
            raise FeatureFileError(f"{train.path} holds no {task_obj.label!r} labels (it has: "
                                   f"{', '.join(train.label_names) or 'none'})")
        parts = dict(p.split("=") for p in key.split("/"))
        probe_name = f"{head}-single-" + "-".join(f"{k[0]}{v}" for k, v in parts.items())
        extractor = train.attr("extractor")
        run_dir = Path(out) if out else default_run_dir(results_root, extractor, ref.get("dataset"), task, probe_name)
        if not check_overwrite(run_dir, overwrite):
            return None

        _seed_everything(seed)
        channels = train.shape(key)[0]
        label_size = train.label_shape(task_obj.label)
        model = head_entry.build(in_channels=channels, out_channels=task_obj.out_channels).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(train.num_samples / batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
        history = []
        bar = tqdm(range(epochs), desc=f"probe {probe_name}", unit="epoch", disable=not progress)
        for epoch in bar:
            model.train()
            total, count = 0.0, 0
            for batch in train.batches([key], batch_size, labels=[task_obj.label], shuffle=True, seed=seed, epoch=epoch):
                x = torch.from_numpy(batch["features"][key]).to(device)
                y = task_obj.target(batch["labels"][task_obj.label]).to(device)
                loss = task_obj.loss(model(x, label_size), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += float(loss.detach()) * len(x)
                count += len(x)
            history.append(round(total / count, 6))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
        bar.close()

        model.eval()
        metric = task_obj.new_metric()
        with torch.inference_mode():
            for batch in evaluation.batches([key], batch_size, labels=[task_obj.label]):
                x = torch.from_numpy(batch["features"][key]).to(device)
                y = task_obj.target(batch["labels"][task_obj.label])
                task_obj.update(metric, model(x, label_size).cpu(), y)
        metrics = task_obj.compute(metric)

        run_dir.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(run_dir / "head.safetensors"))
        notes = list(train.provenance.get("notes", []))
        record = ResultRecord(
            task=task, main_score_name=task_obj.main_metric, main_score=float(metrics[task_obj.main_metric]),
            higher_is_better=task_obj.higher_is_better, metrics=metrics, extractor=extractor,
            dataset=ref.get("dataset"),
            probe={"name": probe_name, "fusion": "single", "head": head, "feature_keys": [key],
                   "timestep": int(parts["t"]) if "t" in parts else None, "layer": parts.get("layer"),
                   "in_channels": channels, "head_weights": "head.safetensors"},
            config={"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                    "optimizer": "AdamW", "schedule": "cosine", "seed": seed, "device": device,
                    "train_features": str(train_features), "eval_features": str(eval_features),
                    "ignore_index": task_obj.ignore_index, "classes": task_obj.classes,
                    "train_loss_per_epoch": history},
            features={
                name: {"path": str(Path(r.path).resolve()), "num_samples": r.num_samples,
                       "split": r.dataset.get("split"), "provenance": r.provenance}
                for name, r in (("train", train), ("eval", evaluation))
            },
            provenance={**base_provenance(), "stage": "probe"},
            wall_time_s=round(time.perf_counter() - started, 3),
            notes=notes,
        )
        record.write(run_dir)
        return {**record.to_dict(), "_path": str(run_dir / "result.json")}
