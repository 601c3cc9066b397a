import numpy as np
import pytest

from probekit.probes.metrics_depth import DepthMetrics, align_scale_shift, image_metrics


def test_hand_computed_values():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # the 0 is invalid
    pred = np.array([[2.0, 2.0], [2.0, 9.0]])
    m = DepthMetrics(min_depth=0.5, max_depth=10)
    m.update(pred, gt)
    out = m.compute()
    # valid pairs: (2,1), (2,2), (2,4)
    assert out["AbsRel"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert out["SqRel"] == pytest.approx((1 / 1 + 0 + 4 / 4) / 3)
    assert out["RMSE"] == pytest.approx(np.sqrt((1 + 0 + 4) / 3))
    d = np.log([2, 1, 0.5])
    assert out["RMSE_log"] == pytest.approx(np.sqrt(np.mean(d**2)))
    assert out["SILog"] == pytest.approx(100 * np.sqrt(np.mean(d**2) - np.mean(d) ** 2))
    assert out["log10"] == pytest.approx(np.mean(np.abs(np.log10([2, 1, 0.5]))))
    assert out["delta1"] == pytest.approx(1 / 3) and out["delta2"] == pytest.approx(1 / 3)
    assert out["delta3"] == pytest.approx(1 / 3)  # 1.25^3 = 1.953 < 2
    assert out["num_images"] == 1


def test_alignment_recovers_an_affine_prediction_exactly():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 20, size=(8, 8))
    pred = 0.3 * gt - 0.1
    np.testing.assert_allclose(align_scale_shift(pred.ravel(), gt.ravel()), gt.ravel(), rtol=1e-10)
    m = DepthMetrics(min_depth=0.01, max_depth=50)
    m.update(pred, gt)
    out = m.compute()
    assert out["AbsRel_aligned"] == pytest.approx(0, abs=1e-9) and out["delta1_aligned"] == 1.0
    assert out["AbsRel"] > 0.5


def test_images_are_averaged_not_pixels():
    m = DepthMetrics(min_depth=0.1, max_depth=10)
    m.update(np.full((1, 1), 2.0), np.full((1, 1), 1.0))  # AbsRel 1
    m.update(np.full((3, 3), 1.0), np.full((3, 3), 1.0))  # AbsRel 0, 9 pixels
    assert m.compute()["AbsRel"] == pytest.approx(0.5)


def test_crop_and_clamping():
    gt = np.ones((4, 4))
    pred = np.ones((4, 4))
    pred[0] = 100.0  # only in the top row, which the crop removes
    m = DepthMetrics(min_depth=0.1, max_depth=10, crop=(0.25, 1.0, 0.0, 1.0))
    m.update(pred, gt)
    assert m.compute()["RMSE"] == 0
    m = DepthMetrics(min_depth=0.1, max_depth=10)
    m.update(pred, gt)  # 100 clamps to 10
    assert m.compute()["RMSE"] == pytest.approx(np.sqrt(4 * 81 / 16))
    assert image_metrics(np.array([2.0]), np.array([2.0]))["SILog"] == 0
