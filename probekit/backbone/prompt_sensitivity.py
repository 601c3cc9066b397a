"""How much does a text-conditioned denoiser use each part of its prompt? Held-out loss with edited captions.

For ShapeWorld test images of one visible object, the velocity loss at a noise level is measured three times
with the same noise: with the true caption, with the object's shape word swapped for another shape, and with
the empty prompt. ``shape_gain`` = loss(swapped) / loss(true) - 1 is how much the model relies on the shape
word (0: ignored); ``text_gain`` = loss(empty) / loss(true) - 1 the same for the whole caption. The judge of
samples (`sample_fidelity`) says whether sampled shapes are right; this says whether the model has begun to
learn them at all, long before samples show it, so it can follow a training run from its exports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from probekit.datasets.shapeworld import ShapeWorld

DEFAULT_NOISE_LEVELS = (0.6, 0.7, 0.8)  # where samples decide their outlines (model card: reconstructions)


def swap_shape(caption: str, shape: str, shapes: Sequence[str], rng: np.random.Generator) -> str:
    """``caption`` with its final shape word replaced by another of ``shapes``, chosen with ``rng``."""
    head, _, last = caption.rpartition(" ")
    if last != shape:
        raise ValueError(f"caption {caption!r} does not end with its shape {shape!r}")
    return f"{head} {rng.choice([s for s in shapes if s != shape])}"


def single_object_samples(dataset: ShapeWorld, n: int, min_size_px: float = 14.0) -> list:
    """The first ``n`` samples with exactly one object, of at least ``min_size_px`` projected size."""
    picked = []
    for i in range(len(dataset)):
        sample = dataset[i]
        objects = sample.meta["objects"]
        if len(objects) == 1 and objects[0]["visible_px"] > 0 and objects[0]["size_px"] >= min_size_px:
            picked.append(sample)
            if len(picked) == n:
                return picked
    raise ValueError(f"ShapeWorld {dataset.split} has only {len(picked)} single-object samples of "
                     f">= {min_size_px} px; ask for fewer")


@torch.no_grad()
def prompt_sensitivity(folder: str | Path, *, noise_levels: Sequence[float] = DEFAULT_NOISE_LEVELS, n: int = 48,
                       split: str = "test", seed: int = 0) -> dict:
    """Per noise level: the loss with true, shape-swapped and empty captions, and the two relative gains."""
    from probekit.backbone.model import load_denoiser
    from probekit.backbone.train import flow_loss, images_to_tensor

    transformer, conditioner, prediction = load_denoiser(folder)
    dataset = ShapeWorld(split)
    samples = single_object_samples(dataset, n)
    shapes = [c for c in dataset.classes if c != "background"]
    rng = np.random.default_rng(seed)
    captions = {"true": [s.caption for s in samples],
                "swapped_shape": [swap_shape(s.caption, s.meta["objects"][0]["shape"], shapes, rng) for s in samples],
                "empty": [""] * len(samples)}
    x0 = images_to_tensor([s.image for s in samples])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    out = {}
    for level in noise_levels:
        sigma = torch.full((len(samples),), float(level))
        loss = {k: float(flow_loss(transformer, conditioner, x0, c, sigma, eps, prediction=prediction).mean())
                for k, c in captions.items()}
        out[f"{level:g}"] = {**loss, "shape_gain": loss["swapped_shape"] / loss["true"] - 1.0,
                             "text_gain": loss["empty"] / loss["true"] - 1.0}
    return {"n": len(samples), "split": split, "seed": seed, "noise_levels": out}
