"""Monocular depth metrics, raw and after per-image least-squares scale-and-shift alignment.

Per image, over valid pixels (min_depth < ground truth < max_depth, as the NYU and KITTI protocols do, and
inside the evaluation crop, if any), predictions clamped to the dataset's depth range:

    AbsRel = mean(|p - g| / g)          SqRel = mean((p - g)^2 / g)
    RMSE   = sqrt(mean((p - g)^2))      RMSE_log = sqrt(mean((ln p - ln g)^2))
    log10  = mean(|log10 p - log10 g|)  SILog = 100 * sqrt(mean(d^2) - mean(d)^2),  d = ln p - ln g
    delta_k = fraction of pixels with max(p / g, g / p) < 1.25^k,  k = 1, 2, 3

Each metric is computed per image and averaged over images (the BTS/AdaBins NYU protocol). "Aligned"
metrics first fit s, b minimising sum((s p + b - g)^2) over the image's valid pixels, the usual protocol for
relative-depth predictors.
"""

from __future__ import annotations

import numpy as np

METRICS = ("AbsRel", "SqRel", "RMSE", "RMSE_log", "log10", "SILog", "delta1", "delta2", "delta3")


def align_scale_shift(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """s * pred + b with (s, b) the least-squares fit of pred to gt (both 1-D, valid pixels only)."""
    a = np.stack([pred, np.ones_like(pred)], axis=1)
    (s, b), *_ = np.linalg.lstsq(a, gt, rcond=None)
    return s * pred + b


def image_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    pred, gt = pred.astype(np.float64), gt.astype(np.float64)
    ratio = np.maximum(pred / gt, gt / pred)
    d = np.log(pred) - np.log(gt)
    return {
        "AbsRel": float(np.mean(np.abs(pred - gt) / gt)),
        "SqRel": float(np.mean((pred - gt) ** 2 / gt)),
        "RMSE": float(np.sqrt(np.mean((pred - gt) ** 2))),
        "RMSE_log": float(np.sqrt(np.mean(d**2))),
        "log10": float(np.mean(np.abs(np.log10(pred) - np.log10(gt)))),
        "SILog": float(100.0 * np.sqrt(max(np.mean(d**2) - np.mean(d) ** 2, 0.0))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


class DepthMetrics:
    def __init__(self, min_depth: float = 1e-3, max_depth: float = 80.0,
                 crop: tuple[float, float, float, float] | None = None):
        """``crop`` = (top, bottom, left, right) as fractions of the image height/width kept for evaluation."""
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        self.min_depth, self.max_depth, self.crop = float(min_depth), float(max_depth), crop
        self._raw: list[dict[str, float]] = []
        self._aligned: list[dict[str, float]] = []

    def _valid(self, gt: np.ndarray) -> np.ndarray:
        # gt at max_depth is out of range (a sky, a sensor's far limit), not a measurement: excluded, as with "<"
        # in the NYU (Eigen) and KITTI (Garg) protocols.
        valid = (gt > self.min_depth) & (gt < self.max_depth) & np.isfinite(gt)
        if self.crop is not None:
            h, w = gt.shape
            top, bottom, left, right = self.crop
            box = np.zeros_like(valid)
            box[int(top * h):int(np.ceil(bottom * h)), int(left * w):int(np.ceil(right * w))] = True
            valid &= box
        return valid

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """One image: predicted and true depth, (H, W), in metres."""
        pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
        valid = self._valid(gt)
        if not valid.any():
            return  # an image with no valid depth contributes nothing (as in the NYU/KITTI protocols)
        p, g = pred[valid], gt[valid]
        self._raw.append(image_metrics(np.clip(p, self.min_depth, self.max_depth), g))
        self._aligned.append(image_metrics(np.clip(align_scale_shift(p, g), self.min_depth, self.max_depth), g))

    def compute(self) -> dict[str, float]:
        if not self._raw:
            return {name: float("nan") for name in METRICS} | {"num_images": 0}
        out: dict[str, float] = {}
        for name in METRICS:
            out[name] = float(np.mean([m[name] for m in self._raw]))
            out[f"{name}_aligned"] = float(np.mean([m[name] for m in self._aligned]))
        out["num_images"] = len(self._raw)
        return out
