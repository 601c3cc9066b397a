"""Tasks against hand-computed values: the target each builds from stored labels, its loss, its prediction, the
depth head's mapping onto the depth range (bins and regression), and what it records.

What could break: the sigmoid or bin centres landing outside (or off) the dataset's depth range, a loss that
ignores the ignore index or the far limit, a prediction read from the wrong channel, a record naming the
wrong metric or direction.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probekit.probes.tasks import DepthTask, SaliencyTask, SegmentationTask

SEG_REF = {"classes": ["background", "a", "b"], "ignore_index": 255}


def test_regression_depth_maps_the_sigmoid_onto_the_depth_range_by_hand():
    task = DepthTask({"depth_range": [0.5, 20.0]}, depth_output="regression")
    assert task.out_channels == 1
    logits = torch.tensor([0.0, math.log(3.0), -math.log(3.0), 40.0, -40.0]).view(1, 1, 1, 5)
    depth = task.head_transform(logits)
    # min + (max - min) * sigmoid(x): sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4, and the limits
    expected = [0.5 + 19.5 * s for s in (0.5, 0.75, 0.25, 1.0, 0.0)]
    torch.testing.assert_close(depth.flatten(), torch.tensor(expected), rtol=1e-6, atol=1e-5)
    assert depth.shape == (1, 1, 1, 5)
    # Only the first channel is read (a head with more channels gets no say through the others).
    two = torch.cat([logits, torch.full_like(logits, 9.0)], dim=1)
    torch.testing.assert_close(task.head_transform(two), depth)


def test_a_depth_range_starting_at_zero_starts_at_a_millimetre():
    task = DepthTask({"depth_range": [0.0, 10.0]}, depth_output="regression")
    assert (task.min_depth, task.max_depth) == (1e-3, 10.0)
    out = task.head_transform(torch.tensor([-50.0, 0.0]).view(1, 1, 1, 2)).flatten()
    torch.testing.assert_close(out, torch.tensor([1e-3, 1e-3 + 9.999 / 2]))
    assert task.config()["depth_range"] == [1e-3, 10.0]


def test_bins_are_the_softmax_weighted_centres_of_equal_bins_over_the_range():
    task = DepthTask({"depth_range": [1.0, 9.0]}, bins=4)  # bins of 2 m: centres 2, 4, 6, 8
    assert task.out_channels == 4
    torch.testing.assert_close(task.centres, torch.tensor([2.0, 4.0, 6.0, 8.0]))
    one_hot = torch.full((1, 4, 1, 3), -60.0)
    one_hot[0, 0, 0, 0] = one_hot[0, 2, 0, 1] = one_hot[0, 3, 0, 2] = 60.0
    torch.testing.assert_close(task.head_transform(one_hot).flatten(), torch.tensor([2.0, 6.0, 8.0]))
    uniform = torch.zeros(2, 4, 1, 1)
    torch.testing.assert_close(task.head_transform(uniform).flatten(), torch.tensor([5.0, 5.0]))  # the mean centre
    mixed = torch.log(torch.tensor([1.0, 3.0, 0.0, 0.0]) + 1e-30).view(1, 4, 1, 1)  # probabilities 1/4, 3/4
    torch.testing.assert_close(task.head_transform(mixed).flatten(), torch.tensor([0.25 * 2 + 0.75 * 4]))
    assert task.config()["bins"] == 4 and task.config()["depth_output"] == "bins"


def test_depth_predictions_targets_and_metrics_read_the_right_values():
    task = DepthTask({"depth_range": [0.5, 20.0]}, crop=(0.0, 1.0, 0.0, 0.5))
    target = task.target(np.array([[[3, 4]]], dtype=np.uint16))
    assert target.dtype == torch.float32 and target.tolist() == [[[3.0, 4.0]]]
    output = torch.tensor([[[[2.0, 5.0]]], [[[1.0, 1.0]]]])  # (B, 1, H, W)
    torch.testing.assert_close(task.predict(output), output[:, 0])
    metric = task.new_metric()
    assert (metric.min_depth, metric.max_depth, metric.crop) == (0.5, 20.0, (0.0, 1.0, 0.0, 0.5))
    task.update(metric, output, torch.tensor([[[2.0, 9.0]], [[2.0, 9.0]]]))
    out = task.compute(metric)  # the crop keeps the left column: |2 - 2| / 2 and |1 - 2| / 2
    assert out["num_images"] == 2 and out["AbsRel"] == pytest.approx(0.25)
    assert task.main_metric == "RMSE" and task.higher_is_better is False and task.label == "depth"
    info = task.metrics_info()
    assert info["RMSE"] == {"higher_is_better": False, "unit": "m"} and info["delta1_aligned"]["higher_is_better"]
    assert "num_images" in info and len(info) == 2 * 9 + 1


def test_depth_settings_are_checked_and_recorded():
    with pytest.raises(ValueError, match="depth_range"):
        DepthTask({})
    with pytest.raises(ValueError, match="depth_output must be"):
        DepthTask({"depth_range": [0.5, 20.0]}, depth_output="logits")
    task = DepthTask({"depth_range": [0.5, 20.0]}, depth_output="regression", silog_lambda=0.5,
                     depth_loss="silog")
    assert task.config() == {"depth_output": "regression", "bins": None, "depth_range": [0.5, 20.0],
                             "loss": "SigLoss (lambda 0.5)", "crop": None}
    assert DepthTask({"depth_range": [0.5, 20.0]}).config()["loss"] == "SigLoss (lambda 0.85) + RMSE / mean depth"
    assert DepthTask({"depth_range": [0.5, 20.0]}).bins == 256


def test_the_depth_loss_skips_pixels_outside_the_range_and_uses_lambda():
    task = DepthTask({"depth_range": [1.0, 10.0]}, depth_loss="silog", silog_lambda=0.5)
    pred = torch.tensor([2.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    target = torch.tensor([1.0, 4.0, 3.0, 10.0]).view(1, 1, 4)  # 1 m and 10 m are the limits: not scored
    d = [math.log(2 / 4), 0.0]
    expected = math.sqrt(sum(x * x for x in d) / 2 - 0.5 * (sum(d) / 2) ** 2 + 1e-8)
    assert task.loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    # A prediction below a metre is its own value in the log (floored at 1e-6 m only against log(0)).
    near = DepthTask({"depth_range": [0.1, 10.0]}, depth_loss="silog", silog_lambda=0.0)
    d = math.log(0.5 / 2.0)
    assert near.loss(torch.tensor([0.5]).view(1, 1, 1, 1), torch.tensor([2.0]).view(1, 1, 1)).item() == \
        pytest.approx(abs(d), rel=1e-6)
    assert math.isfinite(near.loss(torch.zeros(1, 1, 1, 1), torch.tensor([2.0]).view(1, 1, 1)).item())


def test_segmentation_target_loss_and_prediction():
    task = SegmentationTask(SEG_REF)
    assert task.out_channels == 3 and task.ignore_index == 255
    target = task.target(np.array([[[0, 2], [255, 1]]], dtype=np.uint8))
    assert target.dtype == torch.int64 and target.tolist() == [[[0, 2], [255, 1]]]
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [5.0, 3.0]], [[0.0, 1.0], [0.0, 0.0]]]])
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1).reshape(-1, 3)[[0, 1, 3]], torch.tensor([0, 2, 1]))
    torch.testing.assert_close(task.loss(logits, target), expected)  # the ignored pixel counts for nothing
    assert task.predict(logits).tolist() == [[[0, 2], [1, 1]]]
    metric = task.new_metric()
    task.update(metric, logits, target)
    out = task.compute(metric)
    assert out["per_class_iou"] == {"background": 1.0, "a": 1.0, "b": 1.0} and out["num_pixels"] == 3
    assert task.config() == {"classes": SEG_REF["classes"], "ignore_index": 255,
                             "loss": "cross-entropy with ignore"}
    assert set(task.metrics_info()) == {"mIoU", "pixel_acc", "num_pixels"}
    assert task.main_metric == "mIoU" and task.higher_is_better is True and task.label == "seg"


def test_segmentation_without_an_ignore_index_scores_every_pixel():
    task = SegmentationTask({"classes": ["x", "y"]})
    assert task.ignore_index is None
    logits = torch.tensor([[[[3.0]], [[0.0]]]])
    target = torch.tensor([[[1]]])
    torch.testing.assert_close(task.loss(logits, target), F.cross_entropy(logits, target))
    many = SegmentationTask({"classes": [str(i) for i in range(150)]})  # ADE20K-sized: class 100 is a class
    logits = torch.randn(1, 150, 1, 2, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([[[100, 3]]])
    expected = (F.cross_entropy(logits[..., 0], target[..., 0]) + F.cross_entropy(logits[..., 1], target[..., 1])) / 2
    torch.testing.assert_close(many.loss(logits, target), expected)
    with pytest.raises(ValueError, match="class names"):
        SegmentationTask({"classes": []})


def test_saliency_target_loss_and_prediction_by_hand():
    task = SaliencyTask({})
    assert task.out_channels == 1 and task.main_metric == "maxF" and task.higher_is_better is True
    target = task.target(np.array([[[0, 1], [255, 0]]], dtype=np.uint8))
    assert target.dtype == torch.float32 and target.tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    logits = torch.tensor([[[[0.0, math.log(3.0)], [-math.log(3.0), 0.0]]]])
    p = [0.5, 0.75, 0.25, 0.5]
    g = [0.0, 1.0, 1.0, 0.0]
    bce = -sum(gi * math.log(pi) + (1 - gi) * math.log(1 - pi) for pi, gi in zip(p, g)) / 4
    inter = sum(pi * gi for pi, gi in zip(p, g))
    union = sum(pi + gi - pi * gi for pi, gi in zip(p, g))
    assert task.loss(logits, target).item() == pytest.approx(bce + 1 - (inter + 1) / (union + 1), rel=1e-6)
    torch.testing.assert_close(task.predict(logits), torch.tensor([[[0.5, 0.75], [0.25, 0.5]]]))
    metric = task.new_metric()
    task.update(metric, logits, target)
    assert metric.num_images == 1 and set(task.compute(metric)) == set(task.metrics_info())
    # Two images: the soft IoU is each image's own, averaged (not one IoU of the whole batch).
    batch = torch.cat([logits, torch.full_like(logits, 4.0)])
    targets = torch.cat([target, torch.zeros_like(target)])
    per_image = [task.loss(batch[i:i + 1], targets[i:i + 1]) for i in range(2)]
    bce = F.binary_cross_entropy_with_logits(batch[:, 0], targets)
    iou_terms = [l - F.binary_cross_entropy_with_logits(batch[i:i + 1, 0], targets[i:i + 1])
                 for i, l in enumerate(per_image)]
    torch.testing.assert_close(task.loss(batch, targets), bce + sum(iou_terms) / 2)
    assert task.config() == {"loss": "BCE + soft IoU"}


def test_a_task_says_its_direction_on_the_class_and_its_own_metrics_info():
    """``higher_is_better`` is read from the class itself (reports ask the registered class, not an instance)
    and follows the main metric; a metric only the task knows is described by the task's ``metric_info``."""
    from probekit.probes.tasks import Task

    assert SegmentationTask.higher_is_better is True and SaliencyTask.higher_is_better is True
    assert DepthTask.higher_is_better is False

    class Hits(Task):
        name, main_metric, metrics = "hits-task", "hits", ("hits",)
        metric_info = {"hits": {"higher_is_better": False, "unit": "count"}}

    assert Hits.info("hits") == {"higher_is_better": False, "unit": "count"}
    assert Hits.metrics_info() == {"hits": {"higher_is_better": False, "unit": "count"}}
    assert Hits.higher_is_better is False and Hits().higher_is_better is False
