"""Fitting one probe at one learning rate, and scoring a probe on a split.

The head and the bottlenecks train with AdamW at the trial's rate on a cosine schedule; the fusion weights
(``Fusion.weight_parameters``) have a group of their own: ``fusion_lr``, constant, no weight decay. A trial whose loss
stops being finite is reported as diverged (its rate is too high for these features) instead of yielding a
head of NaNs; predictions that are not finite are refused before any metric is computed. At the prediction level
(probes/model.py) every read-out also learns from its own loss; the recorded training loss is the mixed
prediction's alone, comparable with a single map's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from probekit.errors import ProbekitError
from probekit.probes.data import ProbeData, Split

SPATIAL_EXAMPLES = 8  # eval images whose per-location fusion weights (and predictions) are saved for the reports


class NonFinitePredictions(ProbekitError):
    """A probe whose outputs hold NaN or inf: its weights diverged."""


class Diverged(ProbekitError):
    def __init__(self, lr: float, epoch: int):
        self.lr, self.epoch = lr, epoch
        super().__init__(f"training at learning rate {lr:g} diverged (the loss stopped being finite in epoch "
                         f"{epoch + 1})")


WARMUP_FRACTION = 0.1  # of the steps (at least one epoch): fusion weights held uniform while the head starts


def optimizer_for(model, cfg, lr: float, total_steps: int, steps_per_epoch: int = 1):
    """AdamW in up to three groups: the head (cosine), the fusion weights (``fusion_lr``, constant, no decay),
    spatial fusion's gate (the head's rate, cosine); the last two after the warm-up."""
    weights = list(model.fusion.weight_parameters())
    gate = list(model.fusion.gate_parameters())
    ids = {id(p) for p in weights + gate}
    warmup = min(total_steps // 2, max(steps_per_epoch, round(WARMUP_FRACTION * total_steps))) if ids else 0

    def cosine(step):
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))

    groups = [{"params": [p for p in model.parameters() if id(p) not in ids], "lr": lr,
               "weight_decay": cfg.weight_decay}]
    schedules = [cosine]
    if weights:  # their own rate and no decay: decay would pull them back towards the uniform mix. Constant
        # after the warm-up: a decaying rate would halve how far they can travel from uniform.
        groups.append({"params": weights, "lr": cfg.fusion_lr, "weight_decay": 0.0})
        schedules.append(lambda step: 0.0 if step < warmup else 1.0)
    if gate:
        groups.append({"params": gate, "lr": lr, "weight_decay": cfg.weight_decay})
        schedules.append(lambda step: 0.0 if step < warmup else cosine(step))
    optimizer = torch.optim.AdamW(groups)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)


def train_trials(models: list, lrs: list[float], data: ProbeData, seed: int, progress: bool = False,
                 desc: str = "") -> list[list[float] | Diverged]:
    """Train one model per learning rate in lockstep on the same batches in the same order (each model as if
    trained alone): every batch is gathered once, and when fusion's standardised maps carry no learned
    parameters they are computed once for all trials. Returns each trial's mean training loss per epoch, or
    the ``Diverged`` that stopped it (the others go on)."""
    cfg, task = data.cfg, data.task
    per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    opts = [optimizer_for(m, cfg, lr, cfg.epochs * per_epoch, per_epoch) for m, lr in zip(models, lrs)]
    history: list[list[float] | Diverged] = [[] for _ in models]
    live = list(range(len(models)))
    shared = shared_projection(models[0])
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        for i in live:
            models[i].train()
        totals = [torch.zeros((), device=data.device) for _ in models]
        count = 0
        for _, feats, target in data.batches(data.train, shuffle=True, seed=seed, epoch=epoch):
            if shared is not None:
                shared(feats)
            for i in live:
                optimizer, schedule = opts[i]
                model = models[i]
                loss = task.loss(model(feats, data.label_size), target)
                optimizer.zero_grad(set_to_none=True)
                own = model.own_loss_gradient(task.loss, target, data.label_size)
                if own is None:
                    loss.backward()
                else:  # the mixed loss and every read-out's own loss, in one pass back through the read-outs
                    torch.autograd.backward([loss, model.per_map], [None, own])
                    model.per_map = None  # (B, K, out, h, w): not kept alive beyond its step
                optimizer.step()
                schedule.step()
                totals[i] += loss.detach() * len(target)
            count += len(target)
        for i in list(live):
            mean = float(totals[i]) / max(count, 1)  # one device sync per trial and epoch
            if not math.isfinite(mean):
                history[i] = Diverged(lrs[i], epoch)
                live.remove(i)
            else:
                history[i].append(round(mean, 6))
        if not live:
            break
        bar.set_postfix(trials=len(live))
    bar.close()
    return history


def shared_projection(model):
    """A function that stores a batch's standardised maps in it once for every trial, when they hold nothing
    learned (one fusion group of uniform maps); else None."""
    from probekit.probes.fusion import PROJECTED, STACKED_KEYS

    groups = getattr(model.fusion, "groups", [])
    if len(groups) != 1 or not getattr(groups[0], "uniform", False):
        return None
    fusion = groups[0]

    def put(feats: dict) -> None:
        feats[PROJECTED] = fusion.projected(feats)
        feats[STACKED_KEYS] = tuple(fusion.keys)
    return put


def train_one(model, data: ProbeData, lr: float, seed: int, progress: bool = False, desc: str = "") -> list[float]:
    """Train ``model`` in place on the training split; returns the mean training loss of every epoch."""
    result = train_trials([model], [lr], data, seed, progress, desc)[0]
    if isinstance(result, Diverged):
        raise result
    return result


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    spatial: dict[str, Any] | None = None  # mean spatial fusion weights and examples
    predictions: dict[str, Any] | None = None  # the first evaluation images' predictions


def evaluate(model, data: ProbeData, split: Split, keep_examples: bool = False) -> Evaluation:
    """Metrics of ``model`` on ``split``; with ``keep_examples``, the first images' predictions and spatial
    fusion weights too (for the reports)."""
    task = data.task
    model.eval()
    metric = task.new_metric()
    spatial_mode = keep_examples and model.fusion.cls.spatial
    sums, count, examples = None, 0, []
    rows, preds = [], []
    with torch.inference_mode():
        for positions, feats, target in data.batches(split):
            out = model(feats, data.label_size)
            if not bool(torch.isfinite(out).all()):
                bad = [split.reader.sample_ids[int(p)] for p, ok in
                       zip(positions, torch.isfinite(out).flatten(1).all(1).tolist()) if not ok]
                raise NonFinitePredictions(f"the probe's predictions on {split.reader.path} are not finite (e.g. for "
                                           f"{bad[0]}): its weights hold NaN or inf; nothing is saved")
            out, target = out.cpu(), target.cpu()
            task.update(metric, out, target)
            if keep_examples and len(rows) < SPATIAL_EXAMPLES:
                take = SPATIAL_EXAMPLES - len(rows)
                rows.extend(int(p) for p in positions[:take])
                preds.append(task.predict(out[:take]).float())
            if spatial_mode:
                maps = model.fusion.spatial_weights()
                means = [m.mean(dim=(0, 2, 3)) * m.shape[0] for m in maps]
                sums = means if sums is None else [s + m for s, m in zip(sums, means)]
                count += maps[0].shape[0]
                if sum(m.shape[0] for m in examples) < SPATIAL_EXAMPLES:
                    examples.append(torch.cat([m.cpu() for m in maps], dim=1))  # (B, keys, h, w)
    metrics = task.compute(metric)
    main = metrics.get(task.main_metric)
    if main is None or not math.isfinite(float(main)):
        raise ProbekitError(f"{task.main_metric} on {split.reader.path} is not a number (no valid pixels among its "
                            f"{len(split)} samples?); nothing is saved")
    spatial = None
    if spatial_mode and count:
        spatial = {"mean": [(s / count).tolist() for s in sums], "examples": torch.cat(examples)[:SPATIAL_EXAMPLES]}
    predictions = {"rows": rows, "pred": torch.cat(preds)} if keep_examples and preds else None
    return Evaluation(metrics, spatial, predictions)
