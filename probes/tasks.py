"""Tasks: what a head predicts, its loss, its metrics and its main score.

A task is built from the dataset reference stored in the feature file (classes, ignore index, depth range),
so a probe never needs the dataset itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from probekit import scores
from probekit.probes.config import DEPTH_LOSSES
from probekit.probes.metrics import ConfusionMatrix
from probekit.probes.metrics_depth import DepthMetrics


class _FromClass:
    """A class attribute computed from the class: readable on the class (reports, without a reference) and on
    its instances."""

    def __init__(self, fget):
        self.fget = fget

    def __get__(self, obj, owner=None):
        return self.fget(owner if owner is not None else type(obj))


class Task:
    """What every task says of itself, read from the class by every other place (trainer, reports, suites):

    - ``name``: its registry name, ``label``: the label field it reads from feature files;
    - ``title``: how figures name it, ``order``: its place among the tasks in tables and figures;
    - ``main_metric`` (chooses and ranks), ``metrics`` (``metric_names()``: what ``metrics_info`` describes),
      ``secondary_metrics`` (the leaderboard's extra columns);
    - ``metric_info``: direction and unit of the metrics ``probekit.scores`` does not know;
    - ``higher_is_better``: its main metric's direction, from ``metrics_info`` (never written twice);
    - ``label_kind``: how figures draw its labels: "classes", "mask" (0..1) or "values";
    - ``losses``: the training losses ``--depth-loss`` chooses among, the first the default (empty: one loss);
    - ``dataset_eval_crop``: whether it scores inside the dataset's evaluation crop (NYU's Eigen crop) unless
      ``--eval-crop`` says otherwise.
    """

    name = ""
    label = ""
    title = ""
    order = 9
    main_metric = ""
    metrics: tuple[str, ...] = ()
    secondary_metrics: tuple[str, ...] = ()
    metric_info: dict[str, dict[str, Any]] = {}
    label_kind = "values"
    losses: tuple[str, ...] = ()
    dataset_eval_crop = False

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        return tuple(cls.metrics)

    @classmethod
    def info(cls, metric: str) -> dict[str, Any]:
        return cls.metric_info.get(metric) or scores.info(metric)

    @classmethod
    def metrics_info(cls) -> dict[str, dict[str, Any]]:
        """Direction and unit of each metric the task reports (written into every record)."""
        return {name: cls.info(name) for name in cls.metric_names()}

    higher_is_better = _FromClass(lambda cls: bool(cls.info(cls.main_metric)["higher_is_better"]))


class SegmentationTask(Task):
    name = "seg"
    label = "seg"
    title = "segmentation"
    order = 0
    main_metric = "mIoU"
    metrics = ("mIoU", "pixel_acc", "num_pixels")
    secondary_metrics = ("pixel_acc",)
    label_kind = "classes"

    def __init__(self, reference: dict[str, Any], **_: Any):
        self.classes = list(reference.get("classes") or [])
        if not self.classes:
            raise ValueError("segmentation needs the class names in the feature file's dataset reference")
        self.ignore_index = reference.get("ignore_index")

    @property
    def out_channels(self) -> int:
        return len(self.classes)

    def target(self, labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(labels.astype(np.int64))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(logits, target, ignore_index=ignore)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1)

    def new_metric(self) -> ConfusionMatrix:
        return ConfusionMatrix(len(self.classes), self.ignore_index)

    def update(self, metric: ConfusionMatrix, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.score_predictions(metric, self.predict(logits), target)

    def score_predictions(self, metric: ConfusionMatrix, pred: torch.Tensor, target: torch.Tensor) -> None:
        metric.update(pred, target)

    def trivial_fit(self, labels: Iterable[np.ndarray]) -> tuple[float, str]:
        """The trivial predictor: the training split's most frequent class everywhere (background on
        ShapeWorld), as (class id, what it predicts)."""
        counts = np.zeros(len(self.classes), dtype=np.int64)
        for chunk in labels:
            ids = chunk[chunk != self.ignore_index] if self.ignore_index is not None else chunk.ravel()
            ids = ids[(ids >= 0) & (ids < len(self.classes))].astype(np.int64)
            counts += np.bincount(ids, minlength=len(self.classes))
        best = int(np.argmax(counts))
        return float(best), f"every pixel {self.classes[best]!r}, the training split's most frequent class"

    def trivial_prediction(self, value: float, target: torch.Tensor) -> torch.Tensor:
        return torch.full_like(target, int(value))

    def compute(self, metric: ConfusionMatrix) -> dict[str, Any]:
        return metric.compute(self.classes)

    def config(self) -> dict[str, Any]:
        return {"classes": self.classes, "ignore_index": self.ignore_index, "loss": "cross-entropy with ignore"}


class SaliencyTask(Task):
    name = "saliency"
    label = "saliency"
    title = "saliency"
    order = 1
    main_metric = "maxF"
    secondary_metrics = ("MAE", "Sm", "maxE")
    label_kind = "mask"
    out_channels = 1

    def __init__(self, reference: dict[str, Any] | None = None, **_: Any):
        pass

    def target(self, labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((labels > 0).astype(np.float32))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE + soft IoU, the usual pairing for salient-object detection."""
        logits = logits[:, 0]
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        inter = (p * target).sum((1, 2))
        union = (p + target - p * target).sum((1, 2))
        return bce + (1 - (inter + 1) / (union + 1)).mean()

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits[:, 0])

    def new_metric(self):
        from probekit.probes.metrics_saliency import SaliencyMetrics

        return SaliencyMetrics()

    def update(self, metric, logits, target) -> None:
        self.score_predictions(metric, self.predict(logits), target)

    def score_predictions(self, metric, pred: torch.Tensor, target: torch.Tensor) -> None:
        for p, g in zip(pred.numpy(), target.numpy()):
            metric.update(p, g)

    def trivial_fit(self, labels: Iterable[np.ndarray]) -> tuple[float, str]:
        """The trivial predictor: every pixel background (probability 0)."""
        return 0.0, "every pixel background"

    def trivial_prediction(self, value: float, target: torch.Tensor) -> torch.Tensor:
        return torch.full_like(target, value)

    def compute(self, metric) -> dict[str, Any]:
        return metric.compute()

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        from probekit.probes.metrics_saliency import KEYS

        return tuple(KEYS)

    def config(self) -> dict[str, Any]:
        return {"loss": "BCE + soft IoU"}


class DepthTask(Task):
    """Depth as classification into bins over the depth range (output = softmax-weighted bin centres), as the
    DINOv2 and probe3d depth probes do, or as bounded regression; trained with the scale-invariant log loss,
    by default plus the relative RMSE (``depth_loss``, see probes/config.py)."""

    name = "depth"
    label = "depth"
    title = "depth"
    order = 2
    main_metric = "RMSE"
    secondary_metrics = ("AbsRel", "delta1", "RMSE_aligned")
    losses = DEPTH_LOSSES
    dataset_eval_crop = True

    def __init__(self, reference: dict[str, Any], depth_output: str = "bins", bins: int = 256,
                 silog_lambda: float = 0.85, crop: tuple[float, float, float, float] | None = None,
                 depth_loss: str = DEPTH_LOSSES[0], **_: Any):
        lo, hi = reference.get("depth_range") or (None, None)
        if hi is None:
            raise ValueError("depth needs 'depth_range' in the feature file's dataset reference")
        if depth_output not in ("bins", "regression"):
            raise ValueError(f"depth_output must be 'bins' or 'regression', got {depth_output!r}")
        if depth_loss not in DEPTH_LOSSES:
            raise ValueError(f"depth_loss must be one of {', '.join(DEPTH_LOSSES)}, got {depth_loss!r}")
        self.depth_loss = depth_loss
        self.min_depth, self.max_depth = max(float(lo), 1e-3), float(hi)
        self.depth_output, self.bins, self.silog_lambda, self.crop = depth_output, int(bins), silog_lambda, crop
        self.centres = torch.linspace(self.min_depth, self.max_depth, self.bins + 1)
        self.centres = 0.5 * (self.centres[1:] + self.centres[:-1])

    @property
    def out_channels(self) -> int:
        return self.bins if self.depth_output == "bins" else 1

    def target(self, labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(labels.astype(np.float32))

    def head_transform(self, logits: torch.Tensor) -> torch.Tensor:
        """Head logits -> a (B, 1, h, w) depth map on the feature grid, upsampled afterwards by the probe.

        Bins are turned into depth before upsampling (softmax over 256 channels at 16x16, not at label size),
        which is 16x cheaper at ShapeWorld's sizes and gives the same kind of smooth map.
        """
        if self.depth_output == "bins":
            probs = torch.softmax(logits, dim=1)
            return (probs * self.centres.to(logits.device).view(1, -1, 1, 1)).sum(1, keepdim=True)
        return self.min_depth + (self.max_depth - self.min_depth) * torch.sigmoid(logits[:, :1])

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return output[:, 0]

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """SigLoss: sqrt(mean(d^2) - lambda * mean(d)^2), d = ln(pred) - ln(gt), over valid pixels; with
        "silog+rmse" plus sqrt(mean((pred - gt)^2)) / mean(gt), the RMSE in units of the batch's mean depth
        (the two terms are of one size: both about a relative error)."""
        pred = self.predict(output)
        valid = (target > self.min_depth) & (target < self.max_depth)  # as the metrics: the far limit is invalid
        p, g = pred[valid].clamp_min(1e-6), target[valid]
        d = torch.log(p) - torch.log(g)
        loss = torch.sqrt((d**2).mean() - self.silog_lambda * d.mean() ** 2 + 1e-8)
        if self.depth_loss == "silog+rmse":
            loss = loss + torch.sqrt(((p - g) ** 2).mean() + 1e-8) / g.mean()
        return loss

    def new_metric(self) -> DepthMetrics:
        return DepthMetrics(self.min_depth, self.max_depth, crop=self.crop)

    def update(self, metric: DepthMetrics, logits, target) -> None:
        self.score_predictions(metric, self.predict(logits), target)

    def score_predictions(self, metric: DepthMetrics, pred: torch.Tensor, target: torch.Tensor) -> None:
        for p, g in zip(pred.numpy(), target.numpy()):
            metric.update(p, g)

    def trivial_fit(self, labels: Iterable[np.ndarray]) -> tuple[float, str]:
        """The trivial predictor: the mean depth of the training split's valid pixels, everywhere."""
        total, count = 0.0, 0
        for chunk in labels:
            gt = np.asarray(chunk, dtype=np.float64)
            valid = (gt > self.min_depth) & (gt < self.max_depth) & np.isfinite(gt)
            total, count = total + float(gt[valid].sum()), count + int(valid.sum())
        mean = total / count if count else 0.5 * (self.min_depth + self.max_depth)
        return mean, f"every pixel at the training split's mean depth ({mean:.3g} m)"

    def trivial_prediction(self, value: float, target: torch.Tensor) -> torch.Tensor:
        return torch.full_like(target, value)

    def compute(self, metric: DepthMetrics) -> dict[str, Any]:
        return metric.compute()

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        from probekit.probes.metrics_depth import METRICS

        return (*METRICS, *(f"{m}_aligned" for m in METRICS), "num_images")

    def config(self) -> dict[str, Any]:
        return {"depth_output": self.depth_output, "bins": self.bins if self.depth_output == "bins" else None,
                "depth_range": [self.min_depth, self.max_depth], "loss": f"SigLoss (lambda {self.silog_lambda})"
                + (" + RMSE / mean depth" if self.depth_loss == "silog+rmse" else ""),
                "crop": self.crop}
