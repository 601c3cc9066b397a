"""Train the ShapeWorld MM-DiT: rectified flow with SD3-style shifted timestep sampling.

x_t = (1 - s) x_0 + s eps, the loss is the MSE of the velocity eps - x_0 (predicted directly, SD3's choice,
or derived from a predicted x_0), s = shift(u) with u ~ logit-normal (SD3's sampling) and a shift (1.0 by
default). The text encoder trains jointly; captions are dropped to the empty prompt with probability
``caption_dropout`` so classifier-free guidance works at sampling time. Images come from ShapeWorld's
``pretrain`` split, disjoint from the train/val/test splits the probes use.

Resumable: a checkpoint (model, EMA, optimizer, step) is written every ``checkpoint_every`` steps with
safetensors + ``torch.load(weights_only=True)``-safe state; a rerun with the same ``out`` continues from it.
The data stream is a pure function of (step, batch_size), so a resumed run sees the same images.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from probekit.backbone.cache import ImageCache, Rendered
from probekit.datasets.shapeworld import ShapeWorld, checked_scene
from probekit.backbone.model import (
    PREDICTIONS, SAMPLE, VELOCITY, build_models, load_denoiser, save_folder, scheduler_config)
from probekit.models.noise import static_shift
from probekit.models.text_conditioning import TextConditioner
from probekit.provenance import base_provenance

CHECKPOINT = "checkpoint.pt"
TRAIN_MIN_SIGMA = 0.05  # floor of the velocity denominator for sample prediction
LOG_COLUMNS = ["step", "loss", "lr", "images_seen", "elapsed_s"]
LOG_EVERY = 25  # steps whose losses are read back from the device together (and a checkpoint flushes them)


def _log_rows_up_to(path: Path, step: int) -> list[list[str]]:
    if step == 0 or not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return [r for r in rows if r and int(r[0]) <= step]


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images -> float (B, 3, H, W) in [-1, 1], the model's pixel space."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def flow_loss(transformer, conditioner: TextConditioner, x0: torch.Tensor, prompts: list[str], sigma: torch.Tensor,
              eps: torch.Tensor, prediction: str = VELOCITY, min_sigma: float = 0.0) -> torch.Tensor:
    """Per-sample MSE between predicted and true velocity ``eps - x0`` at noise level ``sigma``.

    With ``prediction="sample"`` the network outputs the clean image and the velocity is derived from it,
    ``(x_t - x0_hat) / sigma``; ``min_sigma`` floors that denominator (training uses 0.05) so the loss, i.e.
    ``|x0_hat - x0|^2 / max(sigma, min_sigma)^2``, stays bounded at the cleanest noise levels.
    """
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1.0 - s) * x0 + s * eps
    cond = conditioner(prompts)
    pred = transformer(hidden_states=x_t, timestep=sigma * 1000.0, return_dict=False, **cond)[0].float()
    if prediction == SAMPLE:
        return ((pred - x0) ** 2).mean(dim=(1, 2, 3)) / sigma.clamp(min=min_sigma) ** 2
    return ((pred - (eps - x0)) ** 2).mean(dim=(1, 2, 3))


def _batch(source, image_size: int, step: int, batch_size: int, caption_dropout: float, seed: int):
    """The batch of ``step``: a pure function of (step, batch size, seed), whatever ``source`` serves the images
    (rendered on demand, or read from the image cache)."""
    rng = np.random.default_rng([seed, step])
    start = step * batch_size
    items = [source.item((start + i) % len(source)) for i in range(batch_size)]
    prompts = ["" if rng.random() < caption_dropout else caption for _, caption in items]
    # logit-normal u, as diffusers' compute_density_for_timestep_sampling("logit_normal", mean 0, std 1) draws it,
    # but from this step's numpy generator: the batch stays a pure function of (seed, step) in any loader worker,
    # and the shipped recipe reproduces its weights (a torch generator would draw other numbers)
    u = torch.from_numpy(1.0 / (1.0 + np.exp(-rng.normal(0.0, 1.0, batch_size)))).float()
    eps = torch.from_numpy(rng.standard_normal((batch_size, 3, image_size, image_size))).float()
    return images_to_tensor([image for image, _ in items]), prompts, u, eps


class _StepBatches(torch.utils.data.Dataset):
    """Batch ``i`` is the training batch of step ``start + i``: the same pure function of the step as in-process
    rendering, so any number of loader workers gives the same data in the same order."""

    def __init__(self, source, image_size: int, start: int, steps: int, batch_size: int, caption_dropout: float,
                 seed: int):
        self.source, self.image_size, self.start, self.steps = source, image_size, start, steps
        self.batch_size, self.caption_dropout, self.seed = batch_size, caption_dropout, seed

    def __len__(self) -> int:
        return self.steps - self.start

    def __getitem__(self, i: int):
        return _batch(self.source, self.image_size, self.start + i, self.batch_size, self.caption_dropout, self.seed)


def _batches(batches: _StepBatches, workers: int, pin: bool):
    """Iterate the batches in step order, rendered by ``workers`` processes (0: in this process)."""
    if workers == 0:
        return (batches[i] for i in range(len(batches)))
    return iter(torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                            pin_memory=pin, prefetch_factor=4, persistent_workers=False))


@dataclass(frozen=True)
class Recipe:
    """Everything that changes the weights (not where, how fast or how often they are saved): recorded with the
    model, and a checkpoint resumes only under the same recipe."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    caption_dropout: float = 0.1
    shift: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    prediction: str = VELOCITY
    precision: str = "fp32"
    scene: dict[str, Any] | None = None
    config_overrides: dict[str, Any] | None = None

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, not {self.prediction!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {self.precision!r}")
        # recorded as checked numbers, whatever form they came in
        object.__setattr__(self, "scene", checked_scene(self.scene or {}) or None)

    def params(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        return json.dumps(self.params(), sort_keys=True)


@dataclass
class _Training:
    """What one run trains and keeps: the models, their average, the optimiser and its schedule."""

    trainable: torch.nn.ModuleDict
    ema: torch.nn.ModuleDict
    optimizer: torch.optim.Optimizer
    schedule: Any
    conditioner: TextConditioner
    forward: Any  # the transformer, compiled or not
    tokenizer: Any


def train_backbone(out: str | Path, *, steps: int = 3000, batch_size: int = 32, lr: float = 1e-3,
                   warmup: int = 100, weight_decay: float = 0.0, caption_dropout: float = 0.1, shift: float = 1.0,
                   ema_decay: float = 0.999, seed: int = 0, checkpoint_every: int = 100, threads: int | None = None,
                   workers: int = 0,
                   prediction: str = VELOCITY, precision: str = "fp32", export_every: int = 0,
                   device: str = "cpu", scene: dict[str, Any] | None = None,
                   config_overrides: dict[str, Any] | None = None, cache: bool = False, compile: bool = False,
                   progress: bool = True, log=print) -> Path:
    """Train (or resume) and export the EMA weights to ``out/model``; returns that folder.

    ``prediction``: what the network outputs, ``velocity`` (``eps - x0``, SD3's choice) or ``sample`` (the
    clean image, from which the velocity is derived); ``precision="bf16"`` runs forward and backward under
    bfloat16 autocast (weights, optimizer and EMA stay float32). ``export_every`` > 0 also exports the EMA
    weights every that many steps to ``out/model-step{N}`` (to follow sample quality along training).
    ``device`` ("cpu", "cuda", "cuda:1") only moves the work: data order and noise are drawn on the CPU, so
    the recipe is the same on any device (the arithmetic, and so the last digits, are not). ``workers`` > 0
    renders the training images in that many loader processes (same images, same order; worth it when the
    model's step is faster than rendering a batch, as on a GPU), and builds the image cache in as many
    processes. ``config_overrides`` change the transformer's architecture (``model.architecture``). ``scene``
    overrides ShapeWorld's scene ranges for the training images (e.g. ``{"objects_per_image": [1, 2]}``);
    the probes' splits are untouched. ``cache`` renders the training images once into a memory map
    (``probekit.backbone.cache``; same images, same order) and trains from it; ``compile`` runs the transformer
    through ``torch.compile``. Neither is part of the recipe: they change speed, not the data or the model.
    """
    recipe = Recipe(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, weight_decay=weight_decay,
                    caption_dropout=caption_dropout, shift=shift, ema_decay=ema_decay, seed=seed,
                    prediction=prediction, precision=precision, scene=scene, config_overrides=config_overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    dataset = ShapeWorld("pretrain", scene=recipe.scene)
    # The cache holds the rows this run reads (its steps x batch size, wrapping at the split's end).
    source = (ImageCache(dataset).build(rows=steps * batch_size, progress=progress, log=log, workers=workers)
              if cache else Rendered(dataset))
    dev = torch.device(device)
    run = _setup(recipe, dataset, dev, compile)
    start_step, elapsed = _resume(out / CHECKPOINT, recipe, run, dev, log)
    t0 = _train(out, recipe, run, source, dataset.image_size, start_step, elapsed, dev,
                {"checkpoint_every": checkpoint_every, "export_every": export_every, "workers": workers},
                progress)
    total = time.perf_counter() - t0
    info = _training_info(recipe, run, dataset, dev, total, {"image_cache": bool(cache), "torch_compile": bool(compile),
                                                              "workers": workers})
    folder = save_folder(out / "model", run.ema["transformer"], run.ema["text_encoder"], run.tokenizer, extra=info,
                         shift=shift, prediction=prediction)
    log(f"trained {steps} steps in {total / 60:.1f} min -> {folder}")
    return folder


def _setup(recipe: Recipe, dataset, dev: torch.device, compile: bool) -> _Training:
    transformer, text_encoder, tokenizer = build_models(dataset.manifest, seed=recipe.seed,
                                                        overrides=recipe.config_overrides)
    transformer, text_encoder = transformer.to(dev), text_encoder.to(dev)
    trainable = torch.nn.ModuleDict({"transformer": transformer, "text_encoder": text_encoder})
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                  betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, recipe.warmup, recipe.steps))
    return _Training(trainable, copy.deepcopy(trainable).requires_grad_(False), optimizer, schedule,
                     TextConditioner(tokenizer, text_encoder), torch.compile(transformer) if compile else transformer,
                     tokenizer)


def _resume(ckpt: Path, recipe: Recipe, run: _Training, dev: torch.device, log) -> tuple[int, float]:
    """(step, seconds trained) of the checkpoint in ``ckpt``, loaded into ``run``; (0, 0) when there is none."""
    if not ckpt.is_file():
        return 0, 0.0
    state = torch.load(ckpt, weights_only=True, map_location=dev)
    if state["params"] != recipe.fingerprint():
        raise ValueError(f"{ckpt} was written with other settings; use another --out or the same settings")
    run.trainable.load_state_dict(state["model"])
    run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    log(f"resuming from step {int(state['step'])} ({float(state['elapsed']) / 60:.1f} min already trained)")
    return int(state["step"]), float(state["elapsed"])


def _train(out: Path, recipe: Recipe, run: _Training, source, image_size: int, start_step: int, elapsed: float,
           dev: torch.device, every: dict[str, int], progress: bool) -> float:
    """The training loop from ``start_step``; returns the wall-clock origin (now minus the time trained)."""
    log_path = out / "train_log.csv"
    kept = _log_rows_up_to(log_path, start_step)  # rows after the checkpoint are redone, not duplicated
    with open(log_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(LOG_COLUMNS)
        writer.writerows(kept)
        run.trainable.train()
        bar = tqdm(range(start_step, recipe.steps), initial=start_step, total=recipe.steps, desc="train-backbone",
                   disable=not progress)
        t0 = time.perf_counter() - elapsed
        batches = _batches(_StepBatches(source, image_size, start_step, recipe.steps, recipe.batch_size,
                                        recipe.caption_dropout, recipe.seed), every["workers"],
                           pin=dev.type == "cuda")
        pending: list[tuple] = []  # log rows whose loss is still on the device
        for step, (x0, prompts, u, eps) in zip(bar, batches):
            loss = _step(run, recipe, step, x0.to(dev, non_blocking=True), prompts, u.to(dev),
                         eps.to(dev, non_blocking=True), dev)
            pending.append((step + 1, loss, run.schedule.get_last_lr()[0], time.perf_counter() - t0))
            last = step + 1 == recipe.steps
            if len(pending) >= LOG_EVERY or last or (step + 1) % every["checkpoint_every"] == 0:
                _write_log_rows(writer, pending, recipe.batch_size, bar)
            if (step + 1) % every["checkpoint_every"] == 0 or last:
                fh.flush()
                _save_checkpoint(out / CHECKPOINT, run.trainable, run.ema, run.optimizer, run.schedule, step + 1,
                                 time.perf_counter() - t0, recipe.params())
            if every["export_every"] and (step + 1) % every["export_every"] == 0 and not last:
                save_folder(out / f"model-step{step + 1}", run.ema["transformer"], run.ema["text_encoder"],
                            run.tokenizer, shift=recipe.shift, prediction=recipe.prediction,
                            extra={"recipe": recipe.params(), "steps": step + 1})
        bar.close()
    return t0


def _step(run: _Training, recipe: Recipe, step: int, x0, prompts, u, eps, dev: torch.device) -> torch.Tensor:
    """One optimiser step and the average's update; returns the loss, still on the device."""
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=recipe.precision == "bf16"):
        loss = flow_loss(run.forward, run.conditioner, x0, prompts, static_shift(u, recipe.shift), eps,
                         prediction=recipe.prediction, min_sigma=TRAIN_MIN_SIGMA).mean()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.trainable.parameters(), 1.0)
    run.optimizer.step()
    run.schedule.step()
    with torch.no_grad():
        # diffusers' EMAModel warm-up, min(decay, (1 + step) / (10 + step)), as one fused update over all tensors
        # (on a GPU a loop over the parameters, as EMAModel runs it, is ~150 tiny kernels per step)
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(run.ema.parameters()), [p.detach() for p in run.trainable.parameters()],
                             1.0 - decay)
        for b_ema, b in zip(run.ema.buffers(), run.trainable.buffers()):
            b_ema.copy_(b)
    return loss.detach()


def _training_info(recipe: Recipe, run: _Training, dataset, dev: torch.device, total: float,
                   speed: dict[str, Any]) -> dict[str, Any]:
    """What the exported model records of its training."""
    return {
        "recipe": recipe.params(), "steps": recipe.steps, "images_seen": recipe.steps * recipe.batch_size,
        "wall_time_s": round(total, 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "device": str(dev),
                    **({"gpu": torch.cuda.get_device_name(dev)} if dev.type == "cuda" else {})},
        "parameters": {name: sum(p.numel() for p in run.trainable[name].parameters())
                       for name in ("transformer", "text_encoder")},
        "weights": "exponential moving average of the training weights",
        "speed": speed,
        "data": "ShapeWorld split 'pretrain' (disjoint from train/val/test)"
                + (f", scene overrides {json.dumps(dataset.scene)}" if dataset.scene else ""),
        "scheduler": scheduler_config(recipe.shift), "provenance": base_provenance(),
    }


def _write_log_rows(writer, pending: list[tuple], batch_size: int, bar) -> None:
    """Write the pending rows of the training log, reading their losses back from the device at once: one host
    sync per block of steps rather than per step, so on a GPU the host can queue the next steps meanwhile."""
    losses = torch.stack([row[1] for row in pending]).float().cpu().tolist()
    for (step, _, lr, elapsed), loss in zip(pending, losses):
        writer.writerow([step, f"{loss:.5f}", f"{lr:.3g}", step * batch_size, f"{elapsed:.1f}"])
    bar.set_postfix(loss=f"{losses[-1]:.4f}")
    pending.clear()


def lr_factor(step: int, warmup: int, steps: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor`` times the peak rate.

    transformers' get_cosine_with_min_lr_schedule_with_warmup has the same cosine but starts its warm-up at 0
    (step / warmup, not (step + 1) / warmup): kept so that the shipped model's recipe still reproduces it."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _save_checkpoint(path: Path, model, ema, optimizer, schedule, step: int, elapsed: float, params) -> None:
    from probekit import atomic

    with atomic.atomic_path(path, durable=True) as tmp:  # a kill mid-write never corrupts the last good one
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "step": step, "elapsed": elapsed,
                    "params": json.dumps(params, sort_keys=True)}, tmp)


@torch.no_grad()
def denoising_loss_per_timestep(folder: str | Path, timesteps=(50, 150, 250, 350, 450, 550, 650, 750, 850, 950),
                                n: int = 128, split: str = "test", seed: int = 0, batch_size: int = 32,
                                shift: float | None = None) -> dict[int, float]:
    """Held-out velocity MSE at each timestep (fixed noise, captions as prompts).

    t maps to a noise level with ``shift``, by default the folder's own scheduler shift; pass the same shift
    when comparing two models so that they are measured at the same noise levels.
    """
    folder = Path(folder)
    if shift is None:
        shift = float(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()).get("shift", 1.0))
    transformer, conditioner, prediction = load_denoiser(folder)
    dataset = ShapeWorld(split)
    out: dict[int, float] = {}
    for t in timesteps:
        total = 0.0
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            samples = [dataset[i] for i in idx]
            gen = torch.Generator().manual_seed(seed * 100003 + start)
            x0 = images_to_tensor([s.image for s in samples])
            eps = torch.randn(x0.shape, generator=gen)
            sigma = torch.full((len(samples),), float(static_shift(torch.tensor(t / 1000.0), shift)))
            total += float(flow_loss(transformer, conditioner, x0, [s.caption for s in samples], sigma, eps,
                                     prediction=prediction).sum())
        out[int(t)] = total / n
    return out
