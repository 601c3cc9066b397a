"""The grid ceiling: the best segmentation a probe on a token grid could draw.

A probe predicts one vector per feature token and its logits are brought to the label's size by bilinear
upsampling, so it cannot draw detail finer than the grid. Two ceilings put a probe's score in scale:

- *majority*: every token predicts the class most of its pixels hold, drawn at full size as blocks;
- *fractions*: every token knows the exact share of each class among its pixels, and the shares are upsampled
  bilinearly as a probe's logits are, then the largest wins; the most a perfect token-level probe can reach.

and the floor, *all background*: every pixel predicts class 0. Scored as probes are scored (one confusion matrix
over the whole set, ``ignore_index`` left out).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from probekit.probes.metrics import ConfusionMatrix


def class_fractions(seg: np.ndarray, grid: int, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(num_classes, grid, grid): the share of each class among the labelled pixels under each token."""
    h, w = seg.shape
    if h % grid or w % grid:
        raise ValueError(f"a {h}x{w} label does not split into a {grid}x{grid} token grid")
    seg = seg.astype(np.int64)
    valid = np.ones_like(seg, dtype=bool) if ignore_index is None else seg != ignore_index
    onehot = (np.arange(num_classes)[:, None, None] == np.where(valid, seg, -1)[None]).astype(np.float64)
    counts = onehot.reshape(num_classes, grid, h // grid, grid, w // grid).sum(axis=(2, 4))
    return counts / np.maximum(counts.sum(0, keepdims=True), 1)


def grid_ceiling(labels: Iterable[np.ndarray], grid: int, num_classes: int,
                 ignore_index: int | None = None) -> dict[str, float]:
    """mIoU (0-1) of the majority, fractions and all-background predictions over ``labels`` (each (H, W))."""
    scores = {name: ConfusionMatrix(num_classes, ignore_index) for name in ("majority", "fractions",
                                                                             "all_background")}
    seen = 0
    for seg in labels:
        seg = np.asarray(seg)
        h, w = seg.shape
        frac = class_fractions(seg, grid, num_classes, ignore_index)
        majority = np.repeat(np.repeat(frac.argmax(0), h // grid, 0), w // grid, 1)
        smooth = F.interpolate(torch.from_numpy(frac)[None], size=(h, w), mode="bilinear", align_corners=False)
        scores["majority"].update(majority, seg)
        scores["fractions"].update(smooth[0].argmax(0).numpy(), seg)
        scores["all_background"].update(np.zeros_like(seg), seg)
        seen += 1
    if not seen:
        raise ValueError("no labels to score the grid ceiling on")
    return {name: float(m.compute()["mIoU"]) for name, m in scores.items()}
