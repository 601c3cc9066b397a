"""The trivial predictor a probe must beat, checked by hand; a probe that learned nothing is flagged in its record."""

import types

import numpy as np
import pytest

from helpers import informative, write_synthetic
from probekit.probes.tasks import DepthTask, SaliencyTask, SegmentationTask
from probekit.probes.trivial import learned_nothing, trivial_score


class _Reader:
    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def read_labels(self, name, rows):
        return self.labels[np.asarray(rows)]


def _data(task, train, val):
    split = lambda labels: types.SimpleNamespace(reader=_Reader(labels), rows=np.arange(len(labels)))  # noqa: E731
    return types.SimpleNamespace(task=task, train=split(train), val=split(val))


def test_segmentation_predicts_the_most_frequent_training_class_everywhere():
    task = SegmentationTask({"classes": ["background", "circle", "square"], "ignore_index": 255})
    # training pixels: class 0 three times, 1 once, 2 once (255 ignored, even though it is the most common)
    train = [[[0, 0, 1], [2, 255, 255]], [[0, 255, 255], [255, 255, 255]]]
    val = [[[0, 1], [1, 1]]]
    got = trivial_score(_data(task, train, val))
    # all-0 prediction on val: IoU(0) = 1 / (1 + 3) (one true 0; four predicted), IoU(1) = 0, class 2 absent
    assert got == {"predicts": "every pixel 'background', the training split's most frequent class",
                   "val_score": pytest.approx(0.125)}


def test_saliency_predicts_every_pixel_background():
    got = trivial_score(_data(SaliencyTask(), [[[0, 1], [0, 0]]], [[[0, 1], [0, 0]]]))
    # a constant map is found at the lowest threshold only, where every pixel is foreground: P = 1/4, R = 1,
    # F = 1.3 P R / (0.3 P + R)
    assert got["predicts"] == "every pixel background"
    assert got["val_score"] == pytest.approx(1.3 * 0.25 / (0.3 * 0.25 + 1))


def test_depth_predicts_the_training_mean_of_valid_pixels():
    task = DepthTask({"depth_range": [0.0, 50.0]})
    train = [[[1.0, 3.0], [50.0, 2.0]]]  # 50 is the far limit: not a measurement, so the mean is 2
    got = trivial_score(_data(task, train, [[[1.0, 3.0], [3.0, 1.0]]]))
    assert got == {"predicts": "every pixel at the training split's mean depth (2 m)", "val_score": pytest.approx(1.0)}


@pytest.mark.parametrize("val, trivial, higher, flagged", [
    (0.30, 0.30, True, True), (0.29, 0.30, True, True), (0.31, 0.30, True, False),  # at or below: nothing learned
    (2.0, 2.0, False, True), (2.1, 2.0, False, True), (1.9, 2.0, False, False),  # an error: at or above
    (None, 0.3, True, False), (0.3, None, True, False), (0.3, float("nan"), True, False)])  # unknown: not flagged
def test_learned_nothing_compares_with_the_direction_of_the_metric(val, trivial, higher, flagged):
    assert learned_nothing(val, trivial, higher) is flagged


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("trivial")
    for split, n, seed in (("train", 48, 0), ("test", 16, 1)):
        write_synthetic(root / f"{split}-good.h5", split, n, lambda oh, rng: {"t=100/layer=0": informative(oh, rng)},
                        seed)
        write_synthetic(root / f"{split}-flat.h5", split, n,
                        lambda oh, rng: {"t=100/layer=0": np.zeros_like(oh)}, seed)  # features that say nothing
    return root


@pytest.mark.parametrize("kind, flagged", [("good", False), ("flat", True)])
def test_a_probe_that_learned_nothing_is_flagged_in_its_record(files, tmp_path, kind, flagged):
    from probekit.probes.trainer import train_probe

    rec = train_probe(files / f"train-{kind}.h5", files / f"test-{kind}.h5", task="seg", epochs=3, lrs=[0.05],
                      device="cpu", out=tmp_path / "run", progress=False)
    trivial = rec["trivial"]
    assert trivial["predicts"].startswith("every pixel 'background'") and 0 < trivial["val_score"] < 1
    assert trivial["learned_nothing"] is flagged
    assert (rec["config"]["val_score"] <= trivial["val_score"]) is flagged
    notes = [n for n in rec["notes"] if "learned nothing" in n]
    assert notes == ([f"{rec['probe']['name']}: learned nothing: its validation mIoU is at or below the trivial "
                      f"predictor's ({trivial['predicts']})"] if flagged else [])
