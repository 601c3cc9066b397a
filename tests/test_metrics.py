import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, jaccard_score

from probekit.probes.metrics import ConfusionMatrix


def test_hand_computed_example_with_ignore():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(pred, target)
    # Ignored pixels (255) are dropped whatever was predicted there.
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    out = cm.compute(["bg", "a", "b"])
    # IoU: bg 1/(2+2-1)=1/3, a 2/(2+3-2)=2/3, b 1/(2+1-1)=1/2
    assert out["per_class_iou"] == pytest.approx({"bg": 1 / 3, "a": 2 / 3, "b": 1 / 2})
    assert out["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert out["pixel_acc"] == pytest.approx(4 / 6)
    assert out["num_pixels"] == 6


def test_absent_class_is_left_out_of_the_mean():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    out = cm.compute()
    assert out["per_class_iou"]["2"] is None and out["per_class_iou"]["3"] is None
    assert out["mIoU"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_matches_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(6, ignore_index=255)
    all_t, all_p = [], []
    for _ in range(5):  # several batches accumulate into one dataset-level matrix
        t = rng.integers(0, 6, size=(3, 17, 19))
        t[rng.random(t.shape) < 0.1] = 255
        p = np.where(rng.random(t.shape) < 0.6, t, rng.integers(0, 6, size=t.shape)) % 6
        cm.update(p, t)
        keep = t != 255
        all_t.append(t[keep]), all_p.append(p[keep])
    t, p = np.concatenate(all_t), np.concatenate(all_p)
    np.testing.assert_array_equal(cm.matrix, confusion_matrix(t, p, labels=range(6)))
    ref = jaccard_score(t, p, labels=range(6), average=None)
    got = cm.compute()
    np.testing.assert_allclose([got["per_class_iou"][str(i)] for i in range(6)], ref)
    assert got["mIoU"] == pytest.approx(jaccard_score(t, p, labels=range(6), average="macro"))


def test_dataset_level_miou_differs_from_a_mean_of_batch_ious():
    cm = ConfusionMatrix(2)
    batches = [(np.array([1, 1, 1, 1]), np.array([1, 1, 1, 0])), (np.array([0]), np.array([1]))]
    per_batch = []
    for p, t in batches:
        cm.update(p, t)
        one = ConfusionMatrix(2)
        one.update(p, t)
        per_batch.append(one.compute()["mIoU"])
    # Whole set: class0 IoU 0/2, class1 IoU 3/5 -> 0.3; the mean of batch mIoUs would be 0.1875.
    assert cm.compute()["mIoU"] == pytest.approx(0.3)
    assert np.mean(per_batch) != pytest.approx(0.3)


def test_out_of_range_labels_are_reported():
    cm = ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(ValueError, match=r"outside \[0, 3\).*\[7\]"):
        cm.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError, match="prediction"):
        cm.update(np.array([0, 5]), np.array([0, 1]))


def test_class_ids_at_the_top_of_the_range_are_refused_on_either_side():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target holds class ids outside \[0, 3\).*\[3\]"):
        cm.update(np.array([0, 1]), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"prediction holds class ids outside \[0, 3\)"):
        cm.update(np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(ValueError, match="target holds class ids"):
        cm.update(np.array([0, 1]), np.array([0, -1]))
    assert cm.matrix.sum() == 0  # nothing was counted from a refused update


def test_a_class_of_one_pixel_has_an_iou_and_a_one_class_matrix_is_allowed():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 2]), np.array([0, 0, 2]))  # class 2: one pixel, predicted right
    assert cm.compute()["per_class_iou"] == {"0": 1.0, "1": None, "2": 1.0}
    one = ConfusionMatrix(1)
    one.update(np.zeros(4, int), np.zeros(4, int))
    assert one.compute()["mIoU"] == 1.0
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        ConfusionMatrix(0)


def test_an_empty_matrix_scores_nan_quietly():
    import warnings

    cm = ConfusionMatrix(2, ignore_index=255)
    cm.update(np.array([0, 1]), np.array([255, 255]))  # every pixel ignored
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" or 0/0 warning either
        out = cm.compute(["a", "b"])
    assert np.isnan(out["mIoU"]) and np.isnan(out["pixel_acc"]) and out["num_pixels"] == 0
    assert out["per_class_iou"] == {"a": None, "b": None}


def test_tensors_from_a_model_are_read_detached():
    import torch

    cm = ConfusionMatrix(2)
    pred = torch.tensor([[0.0, 1.0]], requires_grad=True)  # e.g. ids computed inside a graph
    cm.update(pred, torch.tensor([[0, 1]]))
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [0, 1]])
