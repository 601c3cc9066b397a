import numpy as np
import pytest

from probekit.probes.metrics_depth import METRICS, DepthMetrics, align_scale_shift, image_metrics


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


def test_silog_takes_out_the_mean_log_error_and_thresholds_are_strict():
    # d = ln 2, ln 2, 0: mean(d) = 2/3 ln 2, mean(d^2) = 2/3 ln^2 2, so SILog = 100 ln 2 sqrt(2/3 - 4/9)
    out = image_metrics(np.array([2.0, 4.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    assert out["SILog"] == pytest.approx(100 * np.log(2) * np.sqrt(2 / 3 - 4 / 9), rel=1e-12)
    # ratios exactly 1.25, 1.25^2 and 1.25^3 (exact in binary) fall outside their own threshold: "<", as published
    ratios = np.array([1.25, 1.5625, 1.953125, 1.8])
    out = image_metrics(ratios, np.ones(4))
    assert (out["delta1"], out["delta2"], out["delta3"]) == (0.0, 0.25, 0.75)


def test_the_depth_range_is_checked_and_its_limits_are_not_measurements():
    m = DepthMetrics()
    assert (m.min_depth, m.max_depth, m.crop) == (1e-3, 80.0, None)  # the defaults: 1 mm to 80 m (KITTI's cap)
    for lo, hi in ((0.0, 10.0), (-1.0, 10.0), (5.0, 5.0), (6.0, 5.0)):
        with pytest.raises(ValueError, match="need 0 < min_depth < max_depth"):
            DepthMetrics(min_depth=lo, max_depth=hi)
    m = DepthMetrics(min_depth=0.5, max_depth=10)
    m.update(np.full((1, 4), 2.0), np.array([[0.5, 10.0, 4.0, np.inf]]))  # only the 4 m pixel is valid
    assert m.compute()["AbsRel"] == pytest.approx(0.5)
    # A float32 label equal to float32(min_depth) lies above min_depth in float64: it is compared as stored.
    m = DepthMetrics(min_depth=0.1, max_depth=10)
    m.update(np.ones((1, 2), np.float32), np.array([[np.float32(0.1), 2.0]], np.float32))
    assert m.compute()["RMSE"] == pytest.approx(np.sqrt((0.9 ** 2 + 1.0) / 2), rel=1e-6)


def test_float32_inputs_score_exactly_as_their_float64_values():
    rng = np.random.default_rng(1)
    gt = rng.uniform(1, 20, size=(6, 7)).astype(np.float32)
    pred = (gt * rng.uniform(0.7, 1.3, size=gt.shape)).astype(np.float32)
    pred[0, :3] = 0.01  # clamped to 0.1, which float32 cannot hold: the clamp must happen in float64
    a, b = DepthMetrics(min_depth=0.1, max_depth=30), DepthMetrics(min_depth=0.1, max_depth=30)
    a.update(pred, gt)
    b.update(pred.astype(np.float64), gt.astype(np.float64))
    assert a.compute() == b.compute()


def test_crop_keeps_a_box_of_columns_and_rows_and_still_drops_invalid_pixels():
    gt = np.ones((4, 8))
    pred = np.full((4, 8), 3.0)
    pred[:, 2:6] = 1.0  # right inside the columns kept by (0, 1, 0.25, 0.75): 2..5
    gt[1, 3] = 0.0  # invalid, inside the box
    m = DepthMetrics(min_depth=0.1, max_depth=10, crop=(0.0, 1.0, 0.25, 0.75))
    m.update(pred, gt)
    assert m.compute()["RMSE"] == 0.0
    pred[1, 3] = 5.0  # an invalid pixel does not count, even inside the box
    m = DepthMetrics(min_depth=0.1, max_depth=10, crop=(0.0, 1.0, 0.25, 0.75))
    m.update(pred, gt)
    assert m.compute()["RMSE"] == 0.0
    m = DepthMetrics(min_depth=0.1, max_depth=10, crop=(0.3, 0.7, 0.0, 1.0))  # rows int(1.2)..ceil(2.8): 1, 2
    m.update(np.where(np.arange(4)[:, None] == 1, 2.0, 1.0) * np.ones((4, 8)), np.ones((4, 8)))
    assert m.compute()["RMSE"] == pytest.approx(np.sqrt(0.5))


def test_predictions_are_clamped_to_the_range_below_and_above_raw_and_aligned():
    gt = np.array([[1.0, 2.0, 3.0, 4.0]])
    m = DepthMetrics(min_depth=0.5, max_depth=10)
    m.update(np.array([[-4.0, 0.1, 30.0, 4.0]]), gt)  # clamped to 0.5, 0.5, 10, 4
    out = m.compute()
    assert out["RMSE"] == pytest.approx(np.sqrt((0.25 + 2.25 + 49 + 0) / 4))
    # aligned: the least-squares line through these runs below 0.5 and above 10 at its ends; it is clamped after
    # the fit (-0.33 -> 0.5, 10.83 -> 10)
    pred, gt = np.array([[0.0, 1.0, 2.0, 3.0]]), np.array([[0.6, 0.6, 9.9, 9.9]])
    fit = align_scale_shift(pred.ravel(), gt.ravel())
    assert fit.min() < 0.5 and fit.max() > 10
    m = DepthMetrics(min_depth=0.5, max_depth=10)
    m.update(pred, gt)
    expected = np.sqrt(np.mean((np.clip(fit, 0.5, 10) - gt.ravel()) ** 2))
    assert m.compute()["RMSE_aligned"] == pytest.approx(expected, rel=1e-12)
    assert expected < np.sqrt(np.mean((fit - gt.ravel()) ** 2))


def test_no_valid_pixel_anywhere_gives_nan_scores_of_no_image():
    m = DepthMetrics(min_depth=0.5, max_depth=10)
    assert set(m.compute()) == set(METRICS) | {"num_images"}
    m.update(np.ones((2, 2)), np.full((2, 2), 20.0))  # every pixel beyond the range
    out = m.compute()
    assert out["num_images"] == 0 and all(np.isnan(out[name]) for name in METRICS)
    assert "AbsRel_aligned" not in out
