"""Tasks: what a head predicts, its loss and its metrics."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from probekit.probes.metrics import ConfusionMatrix


class SegmentationTask:
    name = "seg"
    label = "seg"
    main_metric = "mIoU"
    higher_is_better = True

    def __init__(self, classes: list[str], ignore_index: int | None = 255):
        self.classes = list(classes)
        self.ignore_index = ignore_index

    @property
    def out_channels(self) -> int:
        return len(self.classes)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(logits, target.long(), ignore_index=ignore)

    def new_metric(self) -> ConfusionMatrix:
        return ConfusionMatrix(len(self.classes), self.ignore_index)

    def update(self, metric: ConfusionMatrix, logits: torch.Tensor, target: torch.Tensor) -> None:
        metric.update(logits.argmax(1), target)

    def compute(self, metric: ConfusionMatrix) -> dict[str, object]:
        return metric.compute(self.classes)

    @staticmethod
    def target(labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(labels.astype(np.int64))
