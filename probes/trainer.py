"""Train a probe on frozen features streamed from feature files, select it on val, score it on eval, record it.

Training reads minibatches from the HDF5 files each epoch (never the whole file). Every learning rate of the
sweep trains from the same seeded initialisation; the one with the best validation score is kept and scored
once on the evaluation split. Every trial is recorded.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from probekit.combined import open_features
from probekit.errors import FeatureFileError, ProbekitError
from probekit.prefetch import prefetched
from probekit.probes.model import Probe
from probekit.provenance import base_provenance
from probekit.registries import HEADS, TASKS
from probekit.results import ResultRecord, check_overwrite, default_run_dir
from probekit.store import FeatureReader, feature_key, parse_key

FUSION_MODES = ("single", "concat", "global", "spatial")
SPATIAL_EXAMPLES = 8  # eval images whose per-location fusion weights are saved for the reports


@dataclass
class ProbeConfig:
    task: str = "seg"
    fusion: str = "single"
    head: str = "linear"
    keys: list[str] | None = None  # feature maps to fuse; None = all (single: exactly one)
    epochs: int = 10
    batch_size: int = 16
    lrs: list[float] = field(default_factory=lambda: [1e-3, 1e-2])
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    fusion_dim: int = 64
    depth_output: str = "bins"
    val_fraction: float = 0.15  # of the training file, when no validation file is given
    cross_dataset: bool = False  # allow train and eval features from different datasets with the same classes
    train_limit: int | None = None  # train on the first N training rows only (learning curves)
    eval_crop: list[float] | None = None  # depth: (top, bottom, left, right) fractions kept for evaluation
    # Minibatches read ahead on a background thread (0: inline); never changes results. None: 2 on a GPU, 0 on
    # CPU, where the reader thread competes with torch for the cores (docs/benchmarks.md measured it slower).
    prefetch: int | None = None


def check_compatible(a: FeatureReader, b: FeatureReader, keys: Sequence[str], cross_dataset: bool = False) -> None:
    """Refuse feature files that do not belong together, naming both files and what differs."""
    ea, eb = a.provenance.get("extractor", {}), b.provenance.get("extractor", {})
    ignore = {"device", "dtype"}  # the same features may be computed on different hardware
    diffs = sorted(k for k in set(ea) | set(eb) if k not in ignore and ea.get(k) != eb.get(k))
    if diffs:
        raise FeatureFileError(f"{a.path} and {b.path} come from different extractor settings "
                               f"({', '.join(diffs)}); extract both with the same settings")
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


def resolve_keys(reader: FeatureReader, fusion: str, timestep: int | None = None, layer: int | None = None,
                 keys: Sequence[str] | None = None) -> list[str]:
    if fusion not in FUSION_MODES:
        raise ProbekitError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSION_MODES)}")
    if keys is None and layer is not None:
        keys = [feature_key(timestep, layer)]
    if keys is None:
        if fusion == "single":
            if len(reader.keys) == 1:
                return list(reader.keys)
            raise ProbekitError(f"{reader.path} holds {len(reader.keys)} feature maps; choose one with --timestep "
                                f"and --layer (available: {', '.join(reader.keys)})")
        return list(reader.keys)
    keys = [_match_key(reader, k) for k in keys]
    missing = [k for k in keys if k not in reader.keys]
    if missing:
        raise ProbekitError(f"{reader.path} has no feature {missing[0]!r}; available: {', '.join(reader.keys)}")
    if fusion == "single" and len(keys) != 1:
        raise ProbekitError(f"single fusion probes exactly one feature map, got {len(keys)}")
    return list(keys)


def _match_key(reader, key: str) -> str:
    """A key as given, or the one key of a combined file that ends with it ("src=a/t=5/layer=2" for "t=5/layer=2")."""
    if key in reader.keys:
        return key
    hits = [k for k in reader.keys if k.endswith("/" + key)]
    return hits[0] if len(hits) == 1 else key


def probe_name(cfg: ProbeConfig, keys: list[str]) -> str:
    name = f"{cfg.head}-{cfg.fusion}"
    if cfg.fusion == "single":
        name += "-" + "-".join(f"{k[0]}{v}" for k, v in parse_key(keys[0]).items() if k != "src")
    return name


def _batches(reader, keys, cfg, label, *, shuffle=False, epoch=0, subset=None):
    """Minibatches read from the feature file(s), ``cfg.prefetch`` batches ahead on a background thread: memory
    stays bounded by the batch size whatever the file's size."""
    batches = reader.batches(keys, cfg.batch_size, labels=[label], shuffle=shuffle, seed=cfg.seed, epoch=epoch,
                             subset=subset, raw=True)
    for batch in prefetched(batches, cfg.prefetch):
        # float16 as stored -> float32 in torch (on the device when there is one): much faster than numpy
        feats = {k: torch.from_numpy(v).to(cfg.device).float() for k, v in batch["features"].items()}
        yield batch["positions"], feats, batch["labels"][label]


def _evaluate(model, task, reader, keys, cfg, subset=None, capture_spatial=False, predictions=None):
    """Metrics over ``reader`` (rows ``subset``); optionally spatial fusion weights and the first predictions."""
    model.eval()
    metric = task.new_metric()
    label_size = reader.label_shape(task.label)
    sums, count, examples = None, 0, []
    with torch.inference_mode():
        for positions, feats, labels in _batches(reader, keys, cfg, task.label, subset=subset):
            logits = model(feats, label_size).cpu()
            task.update(metric, logits, task.target(labels))
            if predictions is not None and len(predictions["rows"]) < SPATIAL_EXAMPLES:
                take = SPATIAL_EXAMPLES - len(predictions["rows"])
                predictions["rows"].extend(int(p) for p in positions[:take])
                predictions["pred"].append(task.predict(logits[:take]).float())
            if capture_spatial:
                maps = model.fusion.spatial_weights()
                means = [m.mean(dim=(0, 2, 3)) * m.shape[0] for m in maps]
                sums = means if sums is None else [s + m for s, m in zip(sums, means)]
                count += maps[0].shape[0]
                if sum(m.shape[0] for m in examples) < SPATIAL_EXAMPLES:
                    examples.append(torch.cat([m.cpu() for m in maps], dim=1))  # (B, keys, h, w)
    spatial = None
    if capture_spatial and count:
        spatial = {"mean": [(s / count).tolist() for s in sums],
                   "examples": torch.cat(examples)[:SPATIAL_EXAMPLES]}
    return task.compute(metric), spatial


def _train_one(model, task, reader, keys, cfg, lr, subset, progress, desc):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    n = len(subset) if subset is not None else reader.num_samples
    total_steps = max(1, cfg.epochs * math.ceil(n / cfg.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    label_size = reader.label_shape(task.label)
    history = []
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for _, feats, labels in _batches(reader, keys, cfg, task.label, shuffle=True, epoch=epoch, subset=subset):
            target = task.target(labels).to(cfg.device)
            loss = task.loss(model(feats, label_size), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(target)
            count += len(target)
        history.append(round(total / max(count, 1), 6))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()
    return history


def _better(a: float, b: float | None, higher: bool) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return True
    return a > b if higher else a < b


PathOrPaths = "str | Path | Sequence[str | Path]"


def train_probe(train_features: PathOrPaths, eval_features: PathOrPaths, *, val_features: PathOrPaths | None = None,
                guidance: PathOrPaths | None = None, eval_guidance: PathOrPaths | None = None,
                val_guidance: PathOrPaths | None = None,
                timestep: int | None = None, layer: int | None = None, out: str | Path | None = None,
                results_root: str | Path = "results", overwrite: str = "error", progress: bool = True,
                **config: Any) -> dict[str, Any] | None:
    """Train one probe; returns the result record as a dict (None when skipped as existing).

    Each ``*_features`` is one feature file, or several files of the same samples combined (keys prefixed
    with their source, see probekit.combined).

    ``config`` fields are those of `ProbeConfig` (task, fusion, head, keys, epochs, lrs, seed, ...).
    """
    if "key" in config:  # a single feature map named directly
        config["keys"] = [config.pop("key")]
    if "lr" in config:
        config["lrs"] = [config.pop("lr")]
    cfg = ProbeConfig(**config)
    if cfg.prefetch is None:
        cfg.prefetch = 2 if str(cfg.device).startswith("cuda") else 0
    started = time.perf_counter()
    task_entry, head_entry = TASKS.get(cfg.task), HEADS.get(cfg.head)  # unknown names fail before any work
    if (guidance is None) != (eval_guidance is None) or (val_guidance is not None and val_features is None):
        raise ProbekitError("guidance maps are needed for every split a probe reads: give --guidance with "
                            "--eval-guidance (and --val-guidance with --val-features)")
    if val_features is not None and guidance is not None and val_guidance is None:
        raise ProbekitError("--val-features with --guidance needs --val-guidance too")
    with_guidance = (lambda f, g: _paths(f) + _paths(g)) if guidance is not None else (lambda f, g: f)
    readers = [open_features(with_guidance(train_features, guidance)),
               open_features(with_guidance(eval_features, eval_guidance))]
    if val_features is not None:
        readers.append(open_features(with_guidance(val_features, val_guidance)))
    try:
        train, evaluation = readers[0], readers[1]
        val = readers[2] if len(readers) > 2 else None
        guidance_keys = [k for k in train.keys if "/concepts=" in k] if guidance is not None else []
        if guidance is not None and not guidance_keys:
            raise FeatureFileError(f"{_paths(guidance)[0]} holds no concept maps to use as guidance")
        keys = resolve_keys(_without(train, guidance_keys), cfg.fusion, timestep, layer, cfg.keys)
        cfg.keys = keys
        for other in readers[1:]:
            check_compatible(train, other, keys + guidance_keys, cfg.cross_dataset)
        if val is not None:
            check_compatible(val, evaluation, keys + guidance_keys, cfg.cross_dataset)
        reference = train.dataset
        if cfg.eval_crop is None and cfg.task == "depth" and evaluation.dataset.get("eval_crop"):
            cfg.eval_crop = list(evaluation.dataset["eval_crop"])  # the dataset's protocol (e.g. NYU's Eigen crop)
        task = task_entry.build(reference=reference, depth_output=cfg.depth_output,
                                crop=tuple(cfg.eval_crop) if cfg.eval_crop else None)
        for r in readers:
            if task.label not in r.label_names:
                raise FeatureFileError(f"{r.path} holds no {task.label!r} labels (it has: "
                                       f"{', '.join(r.label_names) or 'none'})")
        name = probe_name(cfg, keys) + ("-guided" if guidance_keys else "")
        extractor = train.attr("extractor")
        run_dir = Path(out) if out else default_run_dir(results_root, extractor, reference.get("dataset"),
                                                         cfg.task, name)
        if not check_overwrite(run_dir, overwrite):
            return None

        # Validation: a given file, or a seeded slice of the training file (recorded either way).
        if val is None:
            order = np.random.default_rng([cfg.seed, 7]).permutation(train.num_samples)
            n_val = max(1, int(round(cfg.val_fraction * train.num_samples)))
            val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
            val_reader, val_source = train, {"from": "train", "fraction": cfg.val_fraction, "rows": int(n_val)}
        else:
            val_rows, train_rows, val_reader = None, None, val
            val_source = {"from": str(Path(val.path).resolve()), "split": val.dataset.get("split"),
                          "rows": val.num_samples}

        if cfg.train_limit is not None:
            rows = np.arange(train.num_samples) if train_rows is None else train_rows
            if cfg.train_limit > len(rows):
                raise ProbekitError(f"train_limit {cfg.train_limit} exceeds the {len(rows)} training rows of {train.path}")
            train_rows = rows[: cfg.train_limit]
        channels = {k: train.shape(k)[0] for k in keys + guidance_keys}
        all_keys = keys + guidance_keys
        def build() -> Probe:
            return Probe(cfg.fusion, head_entry.load(), keys, channels, task.out_channels, cfg.fusion_dim,
                         guidance_keys, getattr(task, "head_transform", None))

        trials, best, best_state = [], None, None
        for lr in cfg.lrs:
            torch.manual_seed(cfg.seed)  # every trial starts from the same initialisation
            model = build().to(cfg.device)
            t0 = time.perf_counter()
            history = _train_one(model, task, train, all_keys, cfg, lr, train_rows, progress, f"{name} lr={lr:g}")
            val_metrics, _ = _evaluate(model, task, val_reader, all_keys, cfg, subset=val_rows)
            score = float(val_metrics[task.main_metric])
            trials.append({"lr": lr, "val_score": score, "val_metric": task.main_metric,
                           "train_loss_per_epoch": history, "wall_time_s": round(time.perf_counter() - t0, 3)})
            if _better(score, best, task.higher_is_better):
                best, best_state = score, copy.deepcopy(model.state_dict())
        chosen = next(t for t in trials if t["val_score"] == best)

        model = build()
        model.load_state_dict(best_state)
        model.to(cfg.device)
        predictions = {"rows": [], "pred": []}
        metrics, spatial = _evaluate(model, task, evaluation, all_keys, cfg, capture_spatial=cfg.fusion == "spatial",
                                     predictions=predictions)

        run_dir.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        # The first evaluation images' predictions, for the reports' qualitative panels.
        save_file({"pred": torch.cat(predictions["pred"]).contiguous()}, str(run_dir / "predictions.safetensors"),
                  metadata={"sample_ids": ",".join(evaluation.sample_ids[r] for r in predictions["rows"]),
                            "dataset_indices": ",".join(str(int(evaluation.indices[r])) for r in predictions["rows"]),
                            "task": cfg.task, "layout": "(image, H, W): class ids | saliency probability | depth (m)"})

        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(run_dir / "head.safetensors"))
        fusion_info = _fusion_weights(model, keys, spatial, run_dir)
        record = ResultRecord(
            task=cfg.task, main_score_name=task.main_metric, main_score=float(metrics[task.main_metric]),
            higher_is_better=task.higher_is_better, metrics=metrics, extractor=extractor,
            dataset=reference.get("dataset"),
            probe={"name": name, "fusion": cfg.fusion, "head": cfg.head, "feature_keys": keys,
                   "timestep": int(parse_key(keys[0])["t"]) if cfg.fusion == "single" and "t" in parse_key(keys[0])
                   else None,
                   "layer": parse_key(keys[0]).get("layer") if cfg.fusion == "single" else None,
                   "timesteps": sorted({int(parse_key(k)["t"]) for k in keys if "t" in parse_key(k)}),
                   "layers": list(dict.fromkeys(parse_key(k).get("layer") for k in keys)),
                   "in_channels": channels, "guidance_keys": guidance_keys, "head_weights": "head.safetensors",
                   "predictions": "predictions.safetensors",
                   "fusion_weights": fusion_info},
            config={**asdict(cfg), "selected_lr": chosen["lr"], "val_score": best, "validation": val_source,
                    "task_config": task.config(), "train_features": _paths(train_features),
                    "eval_features": _paths(eval_features),
                    "val_features": _paths(val_features) if val_features is not None else None},
            features={
                role: {"path": str(r.path), "num_samples": r.num_samples,
                       "split": r.dataset.get("split"), "provenance": r.provenance}
                for role, r in zip(("train", "eval", "val"), readers)
            },
            provenance={**base_provenance(), "stage": "probe"},
            wall_time_s=round(time.perf_counter() - started, 3),
            trials=trials,
            notes=list(train.provenance.get("notes", [])),
        )
        record.write(run_dir)
        return {**record.to_dict(), "_path": str(run_dir / "result.json")}
    finally:
        for r in readers:
            r.close()


class _without:
    """A reader view that hides some keys (guidance maps are not fused)."""

    def __init__(self, reader, hidden: list[str]):
        self._reader, self.keys = reader, [k for k in reader.keys if k not in hidden]
        self.path = reader.path


def _paths(p) -> list[str]:
    return [str(p)] if isinstance(p, (str, Path)) else [str(x) for x in p]


def _fusion_weights(model: Probe, keys: list[str], spatial, run_dir: Path) -> dict[str, Any] | None:
    """Learned fusion weights for the reports: per key, plus a (timestep x layer) matrix when it is a grid."""
    per_key = model.fusion.key_weights()
    kind = "global"
    if spatial is not None:
        kind = "spatial-mean"
        per_key = {}
        for group, mean in zip(model.fusion.groups, spatial["mean"]):
            per_key.update(dict(zip(group.keys, mean)))
        from safetensors.torch import save_file

        save_file({"weights": spatial["examples"].contiguous()}, str(run_dir / "spatial_weights.safetensors"),
                  metadata={"keys": ",".join(keys), "layout": "(image, key, h, w) softmax weights on eval images"})
    if per_key is None:
        return None
    timesteps = sorted({int(parse_key(k)["t"]) for k in keys if "t" in parse_key(k)})
    layers = list(dict.fromkeys(parse_key(k).get("layer") for k in keys))
    matrix = [[per_key.get(feature_key(t, layer)) for layer in layers] for t in timesteps] if timesteps else None
    out = {"kind": kind, "per_key": per_key, "timesteps": timesteps, "layers": layers, "matrix": matrix,
           "normalised_over": "each layer's timesteps" if len(model.fusion.groups) > 1 else "all maps"}
    if spatial is not None:
        out["examples_file"] = "spatial_weights.safetensors"
    return out
