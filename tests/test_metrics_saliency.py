"""SaliencyMetrics against golden values from PySODMetrics (tests/golden/make_saliency_golden.py), plus
hand-computed cases. PySODMetrics itself is not needed here."""

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest

from probekit.probes.metrics_saliency import KEYS, SaliencyMetrics

GOLDEN = json.loads((Path(__file__).parent / "golden" / "saliency_golden.json").read_text())
# Both sides do the same float64 operations in the same order, so agreement is to rounding error;
# 1e-12 leaves room for a different numpy / BLAS summation order without hiding a real difference.
TOL = 1e-12


def _decode(case):
    shape = tuple(case["shape"])
    pred = np.frombuffer(base64.b64decode(case["pred_uint8_b64"]), np.uint8).reshape(shape)
    gt = np.frombuffer(base64.b64decode(case["gt_uint8_b64"]), np.uint8).reshape(shape)
    # Ours takes probabilities and a 0/1 mask: the uint8 map / 255 and the 0/255 mask > 128.
    return pred / 255.0, (gt > 128).astype(np.uint8)


def _scores(pairs):
    m = SaliencyMetrics()
    for pred, gt in pairs:
        m.update(pred, gt)
    return m.compute()


def _assert_matches(ours, reference, skip=()):
    assert set(ours) == set(KEYS) == set(reference)
    for key in KEYS:
        if key not in skip:
            assert ours[key] == pytest.approx(reference[key], abs=TOL, rel=0), key


def test_golden_file_is_from_pysodmetrics():
    assert GOLDEN["versions"]["pysodmetrics"]
    assert len(GOLDEN["cases"]) >= 20


def test_whole_set_matches_pysodmetrics():
    _assert_matches(_scores([_decode(c) for c in GOLDEN["cases"]]), GOLDEN["whole_set"])


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_each_image_matches_pysodmetrics(case):
    _assert_matches(_scores([_decode(case)]), case["reference"])


@pytest.mark.parametrize("case", GOLDEN["deviation_cases"], ids=[c["name"] for c in GOLDEN["deviation_cases"]])
def test_documented_deviation_centroid_on_border(case):
    """PySODMetrics' S-measure is NaN when a split quadrant is empty; ours skips it (its weight is 0), which is
    PySODMetrics' own S-measure with that quadrant's SSIM taken as 0. All else agrees."""
    ours = _scores([_decode(case)])
    _assert_matches(ours, case["reference"], skip=("Sm",))
    assert case["reference"]["Sm"] is None
    assert ours["Sm"] == pytest.approx(case["sm_skipping_empty_quadrants"], abs=TOL, rel=0)
    assert case["reference"]["Sm"] is None
    assert math.isfinite(ours["Sm"]) and 0 <= ours["Sm"] <= 1


def test_accepts_bool_gt_and_float32_pred():
    case = GOLDEN["cases"][0]
    pred, gt = _decode(case)
    _assert_matches(_scores([(pred.astype(np.float32), gt.astype(bool))]), case["reference"])


def test_mae_of_a_tiny_case_by_hand():
    # Values are k/255 so quantisation keeps them; min 0 and max 1, so min-max normalisation too.
    pred = np.array([[0, 51], [255, 102]]) / 255  # 0, 0.2, 1, 0.4
    gt = np.array([[0, 1], [1, 0]])
    assert _scores([(pred, gt)])["MAE"] == pytest.approx((0 + 0.8 + 0 + 0.4) / 4, abs=1e-15)


def test_mae_is_a_mean_over_images_not_pixels():
    small = (np.array([[1.0, 0.0]]), np.array([[0, 0]]))  # MAE 0.5 on 2 pixels
    big = (np.eye(4), np.eye(4))  # MAE 0 on 16 pixels
    assert _scores([small, big])["MAE"] == pytest.approx(0.25, abs=1e-15)


def test_perfect_prediction_by_hand():
    gt = np.zeros((10, 12), np.uint8)
    gt[2:7, 3:9] = 1
    n, y = gt.size, gt.mean()
    out = _scores([(gt.astype(float), gt)])
    assert out["MAE"] == 0 and out["adpF"] == pytest.approx(1, abs=1e-15)
    assert out["Sm"] == pytest.approx(1, abs=1e-12)
    # F curve: 1 at the 255 thresholds k >= 1; at k = 0 every pixel is foreground: P = y, R = 1.
    f0 = 1.3 * y / (0.3 * y + 1)
    assert out["maxF"] == pytest.approx(1, abs=1e-15)
    assert out["meanF"] == pytest.approx((255 + f0) / 256, abs=1e-12)
    # E curve: all N pixels aligned gives N / (N - 1) (just above 1); at k = 0 the prediction is all
    # foreground, its deviation from its mean is 0, so every pixel scores (0 + 1)^2 / 4.
    assert out["maxE"] == pytest.approx(n / (n - 1), abs=1e-12)
    assert out["meanE"] == pytest.approx((255 * n / (n - 1) + n / 4 / (n - 1)) / 256, abs=1e-12)


def test_prediction_is_min_max_normalised():
    gt = np.zeros((6, 6), np.uint8)
    gt[1:4, 2:5] = 1
    squeezed = 0.2 + 0.4 * gt  # after min-max normalisation this is the perfect map
    assert _scores([(squeezed, gt)]) == pytest.approx(_scores([(gt.astype(float), gt)]), abs=1e-15)


def test_all_background_gt_by_hand():
    gt = np.zeros((5, 7), np.uint8)
    n = gt.size
    out = _scores([(np.zeros((5, 7)), gt)])
    assert out["MAE"] == 0 and out["Sm"] == 1  # Sm = 1 - mean(pred)
    assert out["maxF"] == out["meanF"] == out["adpF"] == 0  # no foreground: recall 0 by convention
    # E = predicted-background pixels / (N - 1): N of them for k >= 1, none at k = 0.
    assert out["maxE"] == pytest.approx(n / (n - 1), abs=1e-12)
    assert out["meanE"] == pytest.approx(255 / 256 * n / (n - 1), abs=1e-12)
    pred = np.full((5, 7), 0.4)  # constant: not normalised, Sm = 1 - 0.4 (after 8-bit rounding)
    assert _scores([(pred, gt)])["Sm"] == pytest.approx(1 - round(0.4 * 255) / 255, abs=1e-15)


def test_all_foreground_gt_by_hand():
    gt = np.ones((4, 4), np.uint8)
    out = _scores([(np.ones((4, 4)), gt)])
    assert out["MAE"] == 0 and out["Sm"] == 1  # Sm = mean(pred)
    assert out["maxF"] == pytest.approx(1, abs=1e-15)
    assert out["maxE"] == pytest.approx(16 / 15, abs=1e-12)  # E = predicted-foreground pixels / (N - 1)


def test_pred_is_quantised_to_8_bits_by_rounding():
    rng = np.random.default_rng(0)
    gt = (rng.random((16, 16)) > 0.6).astype(np.uint8)
    pred_u8 = rng.integers(0, 256, (16, 16))
    jitter = rng.uniform(-0.49, 0.49, (16, 16)) / 255  # less than half a level: rounds back to pred_u8
    jittered = np.clip(pred_u8 / 255 + jitter, 0, 1)
    assert _scores([(jittered, gt)]) == _scores([(pred_u8 / 255, gt)])


def test_input_validation():
    m = SaliencyMetrics()
    with pytest.raises(ValueError):
        m.compute()
    with pytest.raises(ValueError):
        m.update(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError):
        m.update(np.full((3, 3), 1.5), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        m.update(np.full((3, 3), np.nan), np.zeros((3, 3)))
    with pytest.raises(TypeError):
        m.update(np.zeros((3, 3), np.uint8), np.zeros((3, 3)))
    assert m.num_images == 0


def test_a_soft_gt_is_foreground_strictly_above_one_half():
    # As PySODMetrics' gt > 128 on 0..255: a mask value of exactly 1/2 is background.
    pred = np.array([[1.0, 0.0, 0.0, 0.0]])
    assert _scores([(pred, np.array([[1.0, 0.5, 0.0, 0.0]]))]) == _scores([(pred, np.array([[1, 0, 0, 0]]))])


def test_a_probability_map_straight_from_a_model_is_read_detached():
    import torch

    logits = torch.tensor([[2.0, -1.0], [0.5, -3.0]], requires_grad=True)
    gt = np.array([[1, 0], [1, 0]])
    assert _scores([(torch.sigmoid(logits), gt)]) == _scores([(torch.sigmoid(logits).detach().numpy(), gt)])
