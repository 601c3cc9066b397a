"""The trivial predictor a probe must beat: one constant prediction, fitted on the training labels alone.

Segmentation predicts the training split's most frequent class everywhere (background on ShapeWorld), saliency
every pixel background, depth the training split's mean depth. Its score on the validation rows is what a
probe that learned nothing from the features reaches; a probe whose validation score is at or below it is
flagged in its record (``trivial``), in the leaderboard and in the report. Only labels are read: no features.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from probekit import scores

CHUNK = 256  # label rows read at a time: large splits never sit in memory whole


def _labels(split, label: str) -> Iterator[np.ndarray]:
    for a in range(0, len(split.rows), CHUNK):
        yield np.asarray(split.reader.read_labels(label, split.rows[a:a + CHUNK]))


def trivial_score(data) -> dict[str, Any]:
    """The trivial predictor fitted on ``data.train``'s labels, scored on ``data.val``: what it predicts and its
    validation score (the task's main metric)."""
    task = data.task
    value, predicts = task.trivial_fit(_labels(data.train, task.label))
    metric = task.new_metric()
    for labels in _labels(data.val, task.label):
        target = task.target(labels)
        task.score_predictions(metric, task.trivial_prediction(value, target), target)
    score = float(task.compute(metric)[task.main_metric])
    return {"predicts": predicts, "val_score": score}


def learned_nothing(val_score: float | None, trivial_val_score: float | None, higher_is_better: bool) -> bool:
    """True when a validation score is at or below the trivial predictor's (at or above it for an error)."""
    if val_score is None or trivial_val_score is None or not np.isfinite(trivial_val_score):
        return False
    if not np.isfinite(val_score):
        return False
    return not scores.better(val_score, trivial_val_score, higher_is_better)
