"""Train a probe on frozen features: select the learning rate on val, score on eval, per seed; record it.

The three parts live apart: the data (``probes/data.py``: files, keys, rows, batches), the fit
(``probes/fit.py``: one learning rate, one seed; scoring), and the record (``probes/record.py``). This
module only sequences them: for every seed, every learning rate of the grid trains from that seed's
initialisation, the best on validation is scored once on the evaluation split; the record holds the mean and
spread over seeds, every trial, and says when the chosen rate sits at an edge of the grid.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from probekit import scores
from probekit.errors import ProbekitError
from probekit.keys import FeatureKey
from probekit.probes.config import ProbeConfig, fusion_class, probe_settings, probe_stem
from probekit.probes.data import ProbeData, resolve_keys, storage_label  # noqa: F401  (resolve_keys: public API)
from probekit.probes.fit import Diverged, NonFinitePredictions, evaluate, train_trials
from probekit.probes.model import Probe
from probekit.probes.record import (aggregate_metrics, check_writable, fusion_weights, mean_std, new_record,
                                    probe_fields, write_run)
from probekit.probes.trivial import learned_nothing, trivial_score
from probekit.results import check_overwrite, default_run_dir, read_record

PathOrPaths = "str | Path | Sequence[str | Path]"


def probe_name(cfg: ProbeConfig, keys: list[str]) -> str:
    name = probe_stem(cfg.head, cfg.fusion, cfg.fusion_level)
    if fusion_class(cfg.fusion).reads_one_map:  # one run per map: named by its map
        name += "-" + FeatureKey(keys[0]).short()
    return name


def _better(a: float, b: float | None, higher: bool) -> bool:
    return scores.better(a, b, higher)


def _edge(lrs: list[float], chosen: float) -> str | None:
    if len(lrs) < 2:
        return None
    return "lowest" if chosen == min(lrs) else "highest" if chosen == max(lrs) else None


def train_probe(train_features: PathOrPaths, eval_features: PathOrPaths, *, val_features: PathOrPaths | None = None,
                guidance: PathOrPaths | None = None, eval_guidance: PathOrPaths | None = None,
                val_guidance: PathOrPaths | None = None, timestep: int | None = None, layer: int | None = None,
                site: str | None = None, out: str | Path | None = None, results_root: str | Path = "results", overwrite: str = "error",
                progress: bool = True, tick: Callable[[str], None] | None = None, return_existing: bool = False,
                **options: Any) -> dict[str, Any] | None:
    """Train one probe; returns the result record as a dict (None when skipped as existing).

    Each ``*_features`` is one feature file, or several files of the same samples combined (keys prefixed
    with their source, see probekit.combined). ``options`` are `ProbeConfig` fields (task, fusion, head, keys,
    epochs, lrs, seeds, ...; ``seed``, ``lr`` and ``key`` are shorthands). ``timestep``/``layer``/``site`` pick
    the map of a single-map probe; ``site`` alone keeps a fused probe to one capture site. ``tick`` is called after each
    trained trial (for a progress display over many runs). ``overwrite``: "error" (refuse an existing run),
    "overwrite", "skip" (keep an existing run), or "reuse" (keep an existing run that covers these settings and
    seeds, replace one of other settings). A run kept returns None, or with ``return_existing`` its record
    marked ``"_skipped": True``.
    """
    cfg = ProbeConfig.build(**options)
    started = time.perf_counter()
    with ProbeData(cfg, train_features, eval_features, val_features=val_features, guidance=guidance,
                   eval_guidance=eval_guidance, val_guidance=val_guidance, timestep=timestep, layer=layer,
                   site=site) as data:
        cfg = data.cfg  # as resolved against the files: the keys read, the dataset's evaluation crop
        train = data.train_reader
        name = probe_name(cfg, data.keys) + ("-guided" if data.guidance_keys else "")
        storage = storage_label(train)
        extractor = f"{train.attr('extractor')}[{storage}]" if storage else str(train.attr("extractor"))
        run_dir = Path(out) if out else default_run_dir(results_root, extractor, data.reference.get("dataset"),
                                                         cfg.task, name)
        if overwrite == "reuse" and (run_dir / "result.json").is_file():
            existing = _readable(run_dir)
            if existing is not None and covers(existing, cfg, data):
                return {**existing, "_skipped": True} if return_existing else None
            overwrite = "overwrite"  # a run of other settings (or unreadable) is in the way: this one replaces it
        if not check_overwrite(run_dir, overwrite):
            return {**read_record(run_dir), "_skipped": True} if return_existing else None
        check_writable(run_dir)  # before hours of training, not after
        trivial = trivial_score(data)
        seeds = [_run_seed(data, cfg, seed, name, progress, tick, first=(seed == cfg.seeds[0])) for seed in cfg.seeds]
        return _record(data, cfg, seeds, name, extractor, run_dir, started, trivial)


SETTINGS = probe_settings()
# Settings that records made before they existed hold implicitly: their value then.
SETTING_BEFORE = {"fusion_level": "features"}


def recorded_setting(config: dict[str, Any], name: str) -> Any:
    """A setting as a record holds it, older records included: before the own-loss weights were a grid chosen
    on validation, a prediction-level run trained at one weight (``own_loss_weight``, before that 1); before the
    depth loss was a setting, depth probes trained on SigLoss alone."""
    if name == "own_loss_weights" and name not in config:
        level = config.get("fusion_level", SETTING_BEFORE["fusion_level"])
        return [float(config.get("own_loss_weight", 1.0))] if level == "predictions" else None
    if name == "depth_loss" and name not in config:  # before the choice, depth probes trained on SigLoss alone
        from probekit.registries import TASKS, capability

        return "silog" if capability(TASKS, config.get("task"), "losses") else None
    return config.get(name, SETTING_BEFORE.get(name))


def settings_differ(config: dict[str, Any], cfg: ProbeConfig, skip: tuple[str, ...] = ()) -> list[str]:
    """The settings (of ``SETTINGS``, less ``skip``) in which a record's config and ``cfg`` disagree."""
    return [name for name in SETTINGS if name not in skip and recorded_setting(config, name) != getattr(cfg, name)]


def covers(record: dict[str, Any], cfg: ProbeConfig, data: ProbeData) -> bool:
    """True when an existing record already answers this run: the same settings and features, and at least the
    seeds asked for (a 3-seed run covers a 1-seed request for its first seed)."""
    old = record.get("config") or {}
    if settings_differ(old, cfg):
        return False
    if not set(cfg.seeds) <= set(record.get("seeds") or [old.get("seed")]):
        return False
    return (old.get("train_features") == data.paths["train"] and old.get("eval_features") == data.paths["eval"]
            and old.get("val_features") == data.paths["val"])


def _readable(run_dir: Path) -> dict[str, Any] | None:
    from probekit.errors import ProbekitError

    try:
        return read_record(run_dir)
    except ProbekitError:
        return None


def _build(data: ProbeData, cfg: ProbeConfig, own_loss_weight: float | None = None) -> Probe:
    """``own_loss_weight`` None: a probe without read-outs of its own (or one not trained here), weight 1."""
    from probekit.registries import HEADS

    return Probe(cfg.fusion, HEADS.get(cfg.head).load(), data.keys, data.channels, data.task.out_channels,
                 cfg.fusion_dim, data.guidance_keys, getattr(data.task, "head_transform", None), cfg.fusion_level,
                 1.0 if own_loss_weight is None else own_loss_weight)


def _train_and_validate(data: ProbeData, cfg: ProbeConfig, seed: int, lrs: list[float], own_weight: float | None,
                        name: str, progress: bool, tick) -> list[tuple[dict, Probe | None]]:
    """Train one model per rate (from the seed's one initialisation, in lockstep) and score each on validation:
    each trial's record and its model (None when it diverged)."""
    models = []
    for _ in lrs:
        torch.manual_seed(seed)  # every trial of a seed starts from the same initialisation
        model = _build(data, cfg, own_weight).to(data.device)
        if not model.fusion.cls.reads_one_map:  # a single map is read as stored
            model.fusion.set_statistics(data.channel_stats())
        models.append(model)
    desc = f"{name} seed {seed}" + ("" if own_weight is None else f" own {own_weight:g}")
    t0 = time.perf_counter()
    histories = train_trials(models, lrs, data, seed, progress, desc)
    wall = round((time.perf_counter() - t0) / len(models), 3)  # trials share the wall time
    out = []
    for lr, model, history in zip(lrs, models, histories):
        trial = {"seed": seed, "lr": lr, **({} if own_weight is None else {"own_loss_weight": own_weight})}
        label = f"{desc} lr {lr:g}"
        try:
            if isinstance(history, Diverged):
                raise history
            score = float(evaluate(model, data, data.val).metrics[data.task.main_metric])
        except (Diverged, NonFinitePredictions) as exc:
            out.append(({**trial, "val_score": None, "val_metric": data.task.main_metric, "diverged": str(exc),
                         "wall_time_s": wall}, None))
            if tick:
                tick(f"{label} diverged")
            continue
        out.append(({**trial, "val_score": score, "val_metric": data.task.main_metric,
                     "train_loss_per_epoch": history, "wall_time_s": wall}, model))
        if tick:
            tick(label)
    return out


def _run_seed(data: ProbeData, cfg: ProbeConfig, seed: int, name: str, progress: bool, tick, first: bool) -> dict:
    """Every learning rate at the first own-loss weight, then every other weight at the rate chosen (one more
    trial per weight, not a full grid); the best on validation is scored on the evaluation split."""
    task = data.task
    weights = cfg.own_loss_weights or [None]
    trials, best, best_state, chosen, chosen_weight = [], None, None, None, None
    for i, weight in enumerate(weights):
        lrs = cfg.lrs if i == 0 else [chosen]
        for trial, model in _train_and_validate(data, cfg, seed, lrs, weight, name, progress, tick):
            trials.append(trial)
            if model is not None and _better(trial["val_score"], best, task.higher_is_better):
                best, best_state = trial["val_score"], copy.deepcopy(model.state_dict())
                chosen, chosen_weight = trial["lr"], weight
        if best_state is None:
            raise ProbekitError(f"every learning rate of {cfg.lrs} diverged for {name} (seed {seed}): the loss "
                                "became NaN or inf; try lower --lrs")
    model = _build(data, cfg, chosen_weight)
    model.load_state_dict(best_state)
    model.to(data.device)
    final = evaluate(model, data, data.eval, keep_examples=first)
    weights_learned = model.fusion.key_weights()
    if final.spatial is not None:
        weights_learned = {}
        for group, mean in zip(model.fusion.groups, final.spatial["mean"]):
            weights_learned.update(dict(zip(group.keys, mean)))
    return {"seed": seed, "trials": trials, "selected_lr": chosen, "val_score": best, "lr_at_edge": _edge(cfg.lrs, chosen),
            "selected_own_loss_weight": chosen_weight,
            # Only the top is flagged: below 1 the read-outs co-adapt more, which measured worse.
            "own_loss_weight_at_edge": ("highest" if _edge(cfg.own_loss_weights or [], chosen_weight) == "highest"
                                        else None),
            "metrics": final.metrics, "weights": weights_learned, "evaluation": final, "state": best_state,
            "normalised_over": "each layer's timesteps" if len(model.fusion.groups) > 1 else "all maps"}


def _examples(data: ProbeData, first: dict) -> tuple[dict[str, torch.Tensor] | None, dict[str, str]]:
    """What the reports draw for this run: the first evaluation images, their truth and the prediction."""
    pred = first["evaluation"].predictions
    if pred is None:
        return None, {}
    reader, rows = data.eval_reader, pred["rows"]
    out = {"pred": pred["pred"].float(), "truth": torch.from_numpy(reader.read_labels(data.task.label, rows))}
    thumbs = reader.read_thumbnails(rows) if hasattr(reader, "read_thumbnails") else None
    if thumbs is not None:
        out["image"] = torch.from_numpy(thumbs)
    meta = {"sample_ids": ",".join(reader.sample_ids[r] for r in rows),
            "dataset_indices": ",".join(str(int(reader.indices[r])) for r in rows), "task": data.cfg.task,
            "layout": "pred, truth: (image, H, W) class ids | saliency probability / mask | depth (m); "
                      "image: (image, h, w, 3) uint8 thumbnail"}
    return out, meta


def _notes(data: ProbeData, cfg: ProbeConfig, seeds: list[dict], name: str, trivial: dict[str, Any]) -> list[str]:
    """The record's caveats: the features' own, a probe that learned nothing, choices at an edge of their grid.
    Each names the probe and holds no number that differs between runs, so a report can group equal notes."""
    notes = list(data.train_reader.provenance.get("notes", []))
    if trivial["learned_nothing"]:
        notes.append(f"{name}: learned nothing: its validation {data.task.main_metric} is at or below the trivial "
                     f"predictor's ({trivial['predicts']})")
    edges = sorted({s["lr_at_edge"] for s in seeds if s["lr_at_edge"]})
    for edge in edges:
        lrs = [s["selected_lr"] for s in seeds if s["lr_at_edge"] == edge]
        notes.append(f"{name}: the chosen learning rate {lrs[0]:g} is the {edge} of the grid {cfg.lrs}; the best "
                     "rate may lie beyond it (widen --lrs)")
    heavy = [s["seed"] for s in seeds if s["own_loss_weight_at_edge"]]
    if heavy:
        notes.append(f"{name}: seed(s) {', '.join(map(str, heavy))} chose the highest own-loss weight of "
                     f"{cfg.own_loss_weights}; a higher one may do better (widen --own-loss-weights)")
    return notes


def _record(data: ProbeData, cfg: ProbeConfig, seeds: list[dict], name: str, extractor: str, run_dir: Path,
            started: float, trivial: dict[str, Any]) -> dict[str, Any]:
    task = data.task
    first = seeds[0]
    metrics, metrics_std = aggregate_metrics([s["metrics"] for s in seeds])
    main, main_std = mean_std([float(s["metrics"][task.main_metric]) for s in seeds])
    metrics[task.main_metric] = main
    spatial = fusion_class(cfg.fusion).spatial
    kind = "spatial-mean" if spatial else "global"
    fusion_info = fusion_weights(data.keys, [s["weights"] for s in seeds], kind, first["normalised_over"],
                                 cfg.fusion_level)
    if fusion_info is not None and spatial:
        fusion_info["examples_file"] = "spatial_weights.safetensors"
    examples, examples_meta = _examples(data, first)
    val_mean = mean_std([s["val_score"] for s in seeds])[0]
    trivial = {**trivial, "learned_nothing": learned_nothing(val_mean, trivial["val_score"], task.higher_is_better)}
    notes = _notes(data, cfg, seeds, name, trivial)
    readers = {"train": data.train_reader, "eval": data.eval_reader}
    if data.paths["val"] is not None:
        readers["val"] = data.readers[2]
    record = new_record(
        task=cfg.task, main_score_name=task.main_metric, main_score=main, main_score_std=main_std,
        higher_is_better=task.higher_is_better, metrics=metrics, metrics_std=metrics_std,
        metrics_info=task.metrics_info(), extractor=extractor, dataset=data.reference.get("dataset"),
        probe=probe_fields(name, cfg, data.keys, data.channels, data.guidance_keys, fusion_info,
                           examples is not None, spatial),
        config={**cfg.to_dict(), "selected_lr": first["selected_lr"], "val_score": first["val_score"],
                "lr_at_edge": first["lr_at_edge"], "selected_own_loss_weight": first["selected_own_loss_weight"],
                "validation": data.validation, "task_config": task.config(),
                "data": data.describe(), "train_features": data.paths["train"], "eval_features": data.paths["eval"],
                "val_features": data.paths["val"]},
        seeds=list(cfg.seeds),
        per_seed=[{"seed": s["seed"], "main_score": float(s["metrics"][task.main_metric]),
                   "selected_lr": s["selected_lr"], "val_score": s["val_score"], "lr_at_edge": s["lr_at_edge"],
                   **({"selected_own_loss_weight": s["selected_own_loss_weight"]} if cfg.own_loss_weights else {})}
                  for s in seeds],
        features={role: {"path": str(r.path), "num_samples": r.num_samples, "split": r.dataset.get("split"),
                         "storage": r.storage, "provenance": r.provenance} for role, r in readers.items()},
        wall_time_s=round(time.perf_counter() - started, 3),
        trials=[t for s in seeds for t in s["trials"]],
        notes=notes, trivial=trivial,
    )
    spatial = first["evaluation"].spatial
    path = write_run(run_dir, record, first["state"], examples, examples_meta,
                     spatial["examples"] if spatial is not None else None, data.keys)
    return {**record.to_dict(), "_path": str(path)}
