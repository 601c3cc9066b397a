"""Segmentation metrics from a dataset-level confusion matrix.

mIoU is computed once from the confusion matrix accumulated over the whole evaluation set, never
as a mean of per-batch or per-image IoUs (which weights small images up and is not the field's
protocol). Pixels whose target equals ``ignore_index`` are dropped before counting. A class that
appears in neither prediction nor target has no IoU (NaN) and is left out of the mean, as in
mmsegmentation.
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: target, cols: prediction

    def update(self, pred, target) -> None:
        pred = np.asarray(_to_numpy(pred)).reshape(-1).astype(np.int64)
        target = np.asarray(_to_numpy(target)).reshape(-1).astype(np.int64)
        if pred.shape != target.shape:
            raise ValueError(f"prediction has {pred.size} pixels, target {target.size}")
        keep = np.ones_like(target, dtype=bool) if self.ignore_index is None else target != self.ignore_index
        pred, target = pred[keep], target[keep]
        bad = (target < 0) | (target >= self.num_classes)
        if bad.any():
            raise ValueError(f"target holds class ids outside [0, {self.num_classes}) that are not ignore_index "
                             f"({self.ignore_index}): {np.unique(target[bad])[:10].tolist()}")
        if ((pred < 0) | (pred >= self.num_classes)).any():
            raise ValueError(f"prediction holds class ids outside [0, {self.num_classes})")
        self.matrix += np.bincount(target * self.num_classes + pred, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes)

    def iou(self) -> np.ndarray:
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def compute(self, class_names: list[str] | None = None) -> dict[str, object]:
        iou = self.iou()
        total = self.matrix.sum()
        names = class_names or [str(i) for i in range(self.num_classes)]
        return {
            "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "pixel_acc": float(np.trace(self.matrix) / total) if total else float("nan"),
            "per_class_iou": {names[i]: (None if np.isnan(v) else float(v)) for i, v in enumerate(iou)},
            "num_pixels": int(total),
        }


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x
