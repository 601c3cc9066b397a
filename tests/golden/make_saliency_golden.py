"""Write ``saliency_golden.json``: saliency metrics computed by PySODMetrics itself, for
``tests/test_metrics_saliency.py`` to check ``probekit.probes.metrics_saliency`` against.

PySODMetrics needs OpenCV, scipy and scikit-image and pins numpy, so it lives in its own virtualenv,
never in the project's. From the repository root:

    python3 -m venv /tmp/sodenv
    /tmp/sodenv/bin/pip install pysodmetrics "numpy<2.3.5" opencv-python-headless scipy
    /tmp/sodenv/bin/python tests/golden/make_saliency_golden.py

(The golden file in the repository was made with pysodmetrics 1.6.2 and numpy 2.3.4; the versions
used are recorded in the JSON under ``"versions"``.) The script uses numpy only to build the inputs,
from a fixed seed, so rerunning it rewrites the same inputs; it overwrites the JSON next to itself.

Cases: 14 uint8 (prediction, ground truth) pairs of sizes 32x32, 40x56 and 24x36: smooth random blob
scenes with noisy predictions of several value ranges (exercising min-max normalisation), an all-zero
gt, an all-one gt, a constant prediction, a perfect prediction, an all-zero prediction, a binary
(shifted) prediction, an inverted prediction, a few-pixel object, and a gt whose centroid lies on a
half pixel (exercising np.round's ties-to-even in the S-measure split); then 7 cases built without a
random draw (so the ones above keep their inputs): a one-pixel and a two-pixel object, a prediction mostly at
its maximum (the adaptive threshold capped at 1), two objects in opposite corners predicted exactly (quadrants
where both maps are constant), 2x2 / 3x3 images split into one- and two-pixel quadrants, and a lone
foreground pixel predicted exactly in a 64x64 image (an SSIM denominator near eps). Reference values
are given for the whole set (images averaged as PySODMetrics does) and for each image alone.

A separate list ``deviation_cases`` holds inputs on which our implementation knowingly differs: a gt
whose foreground centroid is on the last column or row, where PySODMetrics' S-measure is NaN (written
as null); the other metrics there must still agree, and ``sm_skipping_empty_quadrants`` is PySODMetrics'
S-measure with an empty quadrant's SSIM taken as 0 (it has weight 0), which is what ours computes there.

Metrics, read out as in the PySODMetrics README: ``MAE().get_results()["mae"]``; ``Fmeasure()``:
``fm["curve"].max()``, ``fm["curve"].mean()``, ``fm["adp"]``; ``Smeasure()["sm"]``; ``Emeasure()``:
``em["curve"].max()``, ``em["curve"].mean()``, ``em["adp"]``. ``Fmeasure`` is the legacy class (it warns that it will be
removed); the script checks that ``FmeasureV2`` with ``FmeasureHandler(beta=0.3)`` gives the same numbers.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import math
import platform
import warnings
from pathlib import Path

import numpy as np
import py_sod_metrics as sod

OUT = Path(__file__).with_name("saliency_golden.json")
SEED = 20240521


def _blob_field(rng, h, w, n_blobs):
    """A smooth random field in [0, 1]: a sum of Gaussian bumps (stand-in for an object mask)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    field = np.zeros((h, w))
    for _ in range(n_blobs):
        cy, cx = rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.15 * w, 0.85 * w)
        sy, sx = rng.uniform(0.06, 0.2) * h, rng.uniform(0.06, 0.2) * w
        field += rng.uniform(0.6, 1.0) * np.exp(-((yy - cy) ** 2 / (2 * sy**2) + (xx - cx) ** 2 / (2 * sx**2)))
    return field / field.max()


def _to_u8(x):
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _blob_case(rng, h, w, *, lo, hi, noise):
    """gt: a thresholded blob field; pred: the field blurred by noise, spanning [lo, hi] before uint8."""
    field = _blob_field(rng, h, w, rng.integers(1, 4))
    gt = (field > 0.5).astype(np.uint8) * 255
    pred = np.clip(field + rng.normal(0, noise, (h, w)), 0, 1)
    return _to_u8(lo + (hi - lo) * pred), gt


def build_cases():
    rng = np.random.default_rng(SEED)
    cases = []

    def add(name, pred, gt):
        assert pred.dtype == np.uint8 and gt.dtype == np.uint8 and pred.shape == gt.shape
        assert set(np.unique(gt).tolist()) <= {0, 255}
        cases.append((name, pred, gt))

    add("blob_full_range_32x32", *_blob_case(rng, 32, 32, lo=0.0, hi=1.0, noise=0.15))
    add("blob_narrow_range_40x56", *_blob_case(rng, 40, 56, lo=0.2, hi=0.6, noise=0.1))
    add("blob_noisy_24x36", *_blob_case(rng, 24, 36, lo=0.0, hi=0.9, noise=0.4))
    add("blob_clean_40x56", *_blob_case(rng, 40, 56, lo=0.05, hi=0.95, noise=0.02))
    add("blob_low_range_32x32", *_blob_case(rng, 32, 32, lo=0.0, hi=0.3, noise=0.1))

    pred, _ = _blob_case(rng, 32, 32, lo=0.0, hi=1.0, noise=0.2)
    add("gt_all_zero_32x32", pred, np.zeros((32, 32), np.uint8))
    pred, _ = _blob_case(rng, 40, 56, lo=0.1, hi=0.9, noise=0.2)
    add("gt_all_one_40x56", pred, np.full((40, 56), 255, np.uint8))

    _, gt = _blob_case(rng, 32, 32, lo=0.0, hi=1.0, noise=0.0)
    add("pred_constant_77_32x32", np.full((32, 32), 77, np.uint8), gt)
    _, gt = _blob_case(rng, 40, 56, lo=0.0, hi=1.0, noise=0.0)
    add("pred_perfect_40x56", gt.copy(), gt)
    _, gt = _blob_case(rng, 24, 36, lo=0.0, hi=1.0, noise=0.0)
    add("pred_all_zero_24x36", np.zeros((24, 36), np.uint8), gt)

    _, gt = _blob_case(rng, 40, 56, lo=0.0, hi=1.0, noise=0.0)
    add("pred_binary_shifted_40x56", np.roll(gt, (3, -4), axis=(0, 1)), gt)
    pred, gt = _blob_case(rng, 32, 32, lo=0.0, hi=1.0, noise=0.1)
    add("pred_inverted_32x32", 255 - pred, gt)

    gt = np.zeros((24, 36), np.uint8)
    gt[2:4, 3:5] = 255  # a 2x2 object near the top-left corner
    pred = _to_u8(np.clip(rng.normal(0.1, 0.08, gt.shape), 0, 1))
    pred[2:4, 3:6] = 230
    add("tiny_object_24x36", pred, gt)

    gt = np.zeros((32, 32), np.uint8)
    gt[8:20, 10:12] = 255  # centroid x = 10.5, y = 13.5: np.round gives 10 and 14 (ties to even)
    pred = _to_u8(np.clip(rng.normal(0.3, 0.2, gt.shape) + (gt > 0) * 0.4, 0, 1))
    add("half_pixel_centroid_32x32", pred, gt)

    deviation = []
    for name, sl in (("object_on_last_column_32x32", (slice(5, 27), slice(31, 32))),
                     ("object_on_last_row_24x36", (slice(23, 24), slice(4, 30)))):
        h, w = (32, 32) if "32x32" in name else (24, 36)
        gt = np.zeros((h, w), np.uint8)
        gt[sl] = 255
        pred = _to_u8(np.clip(rng.normal(0.2, 0.1, (h, w)) + (gt > 0) * 0.5, 0, 1))
        deviation.append((name, pred, gt))
    cases.extend(_exact_cases())
    return cases, deviation


def _exact_cases():
    """Small cases without a random draw: the edges the blob scenes do not reach."""
    cases = []
    yy, xx = np.mgrid[0:8, 0:8]
    gt = np.zeros((8, 8), np.uint8)
    gt[3, 4] = 255  # one foreground pixel: recall over |G| = 1, the object score of a single value
    pred = ((yy * 8 + xx) * 3).astype(np.uint8)
    pred[3, 4] = 250
    cases.append(("one_pixel_object_8x8", pred, gt))
    yy, xx = np.mgrid[0:7, 0:9]
    gt = np.zeros((7, 9), np.uint8)
    gt[2, 3:5] = 255  # two foreground pixels of different predictions: std with ddof = 1 over two values
    pred = ((yy * 9 + xx) * 2).astype(np.uint8)
    pred[2, 3], pred[2, 4] = 180, 240
    cases.append(("two_pixel_object_7x9", pred, gt))
    gt = np.zeros((8, 8), np.uint8)
    gt[:, :4] = 255
    pred = np.full((8, 8), 255, np.uint8)  # mean above 1/2: the adaptive threshold min(2 mean, 1) is 1
    pred[6:, 6:] = 0
    pred[0, 7] = 100
    cases.append(("mostly_foreground_prediction_8x8", pred, gt))
    gt = np.zeros((16, 16), np.uint8)
    gt[1:5, 1:5] = gt[11:15, 11:15] = 255  # the off-diagonal quadrants hold background only, in both maps
    cases.append(("two_corner_objects_perfect_16x16", gt.copy(), gt))
    gt = np.zeros((2, 2), np.uint8)
    gt[0, 0] = 255  # four one-pixel quadrants
    cases.append(("corner_pixel_2x2", np.array([[200, 30], [90, 10]], np.uint8), gt))
    gt = np.zeros((3, 3), np.uint8)
    gt[0, 0] = 255  # quadrants of 1, 2, 2 and 4 pixels
    cases.append(("corner_pixel_3x3", np.array([[220, 40, 60], [90, 10, 130], [70, 20, 250]], np.uint8), gt))
    gt = np.zeros((64, 64), np.uint8)
    gt[40, 40] = 255  # one pixel in a 41x41 quadrant: the SSIM denominator is ~1e-9, where its eps shows
    cases.append(("lone_pixel_perfect_64x64", gt.copy(), gt))
    return cases


class _SkippingEmptyQuadrants(sod.Smeasure):
    """PySODMetrics' S-measure with the SSIM of an empty quadrant taken as 0 (its weight is 0): our deviation."""

    def ssim(self, pred, gt):
        return 0.0 if pred.size == 0 else super().ssim(pred, gt)


def _sm_skipping_empty_quadrants(pred, gt):
    sm = _SkippingEmptyQuadrants()
    sm.step(pred=pred, gt=gt)
    return float(sm.get_results()["sm"])


def _reference(pairs):
    """PySODMetrics' numbers for a list of (pred, gt) uint8 pairs, images averaged as it does."""
    mae, fm, sm, em = sod.MAE(), sod.Fmeasure(), sod.Smeasure(), sod.Emeasure()
    fm2 = sod.FmeasureV2(metric_handlers={"fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)})
    for pred, gt in pairs:
        for metric in (mae, fm, sm, em, fm2):
            metric.step(pred=pred, gt=gt)
    f = fm.get_results()["fm"]
    e = em.get_results()["em"]
    out = {
        "MAE": mae.get_results()["mae"],
        "maxF": f["curve"].max(),
        "meanF": f["curve"].mean(),
        "adpF": f["adp"],
        "Sm": sm.get_results()["sm"],
        "maxE": e["curve"].max(),
        "meanE": e["curve"].mean(),
        "adpE": e["adp"],
    }
    f2 = fm2.get_results()["fm"]
    for key, ours, v2 in (("maxF", out["maxF"], f2["dynamic"].max()), ("meanF", out["meanF"], f2["dynamic"].mean()),
                          ("adpF", out["adpF"], f2["adaptive"])):
        assert abs(ours - v2) <= 1e-12, f"Fmeasure and FmeasureV2 disagree on {key}: {ours} vs {v2}"
    # JSON has no NaN: write null (PySODMetrics' NaN S-measure in the deviation cases).
    return {k: (None if math.isnan(float(v)) else float(v)) for k, v in out.items()}


def _encode(name, pred, gt):
    return {"name": name, "shape": list(pred.shape),
            "pred_uint8_b64": base64.b64encode(pred.tobytes()).decode("ascii"),
            "gt_uint8_b64": base64.b64encode(gt.tobytes()).decode("ascii")}


def main():
    warnings.filterwarnings("ignore", message="This class will be removed in the future")  # legacy Fmeasure
    cases, deviation = build_cases()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty quadrant in the deviation cases
        golden = {
            "description": "PySODMetrics reference values; see tests/golden/make_saliency_golden.py",
            "versions": {"pysodmetrics": importlib.metadata.version("pysodmetrics"), "numpy": np.__version__,
                         "python": platform.python_version()},
            "encoding": "pred/gt: uint8 bytes, C order, base64; gt is 0/255 as PySODMetrics expects",
            "whole_set": _reference([(p, g) for _, p, g in cases]),
            "cases": [dict(_encode(n, p, g), reference=_reference([(p, g)])) for n, p, g in cases],
            "deviation_cases": [dict(_encode(n, p, g), reference=_reference([(p, g)]),
                                     sm_skipping_empty_quadrants=_sm_skipping_empty_quadrants(p, g))
                                for n, p, g in deviation],
        }
    OUT.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes), {len(cases)} cases + {len(deviation)} deviation cases")
    print("whole set:", json.dumps(golden["whole_set"]))
    for case in golden["cases"] + golden["deviation_cases"]:
        print(f"  {case['name']:32s}", {k: (None if v is None else round(v, 4)) for k, v in case["reference"].items()})


if __name__ == "__main__":
    main()
