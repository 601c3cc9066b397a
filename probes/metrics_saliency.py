"""Salient-object-detection metrics that reproduce PySODMetrics (``pysodmetrics`` 1.6.2, ``py_sod_metrics``).

The numbers are those of ``py_sod_metrics.MAE``, ``Fmeasure``, ``Smeasure`` and ``Emeasure`` with their
default arguments, read out the way the PySODMetrics README does (``curve.max()``, ``curve.mean()``, ``adp``).
``tests/golden/make_saliency_golden.py`` records golden values from PySODMetrics itself and
``tests/test_metrics_saliency.py`` checks this module against them.

Inputs and their preparation
----------------------------
PySODMetrics takes the uint8 maps that SOD methods save as PNG files. Ours takes what a probe produces:
``pred`` a float (H, W) map of foreground probabilities in [0, 1] and ``gt`` an (H, W) binary mask
(0/1 or bool). ``update`` turns them into exactly what PySODMetrics would see:

* Quantisation (our choice, not part of PySODMetrics): ``q = rint(pred * 255)`` as uint8, which is how a
  probability map is written to an 8-bit PNG (``cv2.imwrite`` and PIL round; ``astype(uint8)`` would
  truncate). Rounding also inverts ``q / 255`` exactly, so ``update(pred_uint8 / 255.0, gt)`` here equals
  ``step(pred_uint8, gt_uint8 * 255)`` there, to the last bit.
* PySODMetrics' ``prepare_data``: ``p = q / 255``, then min-max normalisation of each map on its own,
  ``p = (p - p.min()) / (p.max() - p.min())``, skipped when the map is constant (MATLAB ``mapminmax``).
  Every metric, MAE included, is computed on this normalised map, so a map whose values span [0.2, 0.6]
  is scored as if it spanned [0, 1].
* Ground truth: PySODMetrics binarises the uint8 mask with ``gt > 128``; for a 0/1 or bool mask that is
  ``gt > 0.5`` (a 0/255 mask also passes unchanged).

Definitions (per image; N pixels, G the foreground set, ``eps`` = ``np.spacing(1)``)
-------------------------------------------------------------------------------------
* MAE: ``mean(|p - g|)``.
* F-measure, ``beta2 = 0.3`` (PySODMetrics' ``beta`` argument is already beta squared):
  ``F = (1 + beta2) P R / (beta2 P + R)``, taken as 0 when ``P R = 0``.
  Curve: the normalised map is re-quantised by truncation, ``t = floor(p * 255)`` (``astype(uint8)``), and
  binarised at ``t >= k`` for the 256 thresholds k = 255 .. 0; P = TP / max(#predicted, 1),
  R = TP / max(|G|, 1). So an all-background gt gives a curve of zeros.
  Adaptive: binarise ``p >= min(2 mean(p), 1)`` (on the float map, not ``t``); F = 0 when TP = 0.
* S-measure, ``alpha = 0.5`` (Fan et al., ICCV 2017): with ``y = |G| / N``,
  ``y == 0``: ``1 - mean(p)``; ``y == 1``: ``mean(p)``; otherwise
  ``max(0, alpha * S_object + (1 - alpha) * S_region)``.
  S_object = ``y * s(p[G]) + (1 - y) * s(1 - p[~G])`` with ``s(x) = 2 mean / (mean^2 + 1 + std + eps)``
  (std with ddof = 1, 0 for a single pixel). S_region splits the image at the rounded foreground
  centroid ``(cy, cx) = round(mean of G's coordinates) + 1`` (MATLAB's 1-based convention; ``np.round``
  rounds halves to even) into four quadrants, weighted by area, each scored with the one-window SSIM
  ``4 mx my sxy / ((mx^2 + my^2)(sx + sy) + eps)`` (variances over ``n - 1 + eps``); a quadrant scores 1
  when numerator and denominator are both 0, and 0 when only the numerator is.
* E-measure (Fan et al., IJCAI 2018) for a binary map B: with ``mb, mg`` the means of B and g and the
  four cells TP, FP, FN, TN, each cell contributes ``count * ((a + 1)^2 / 4)`` with
  ``a = 2 db dg / (db^2 + dg^2 + eps)``, ``db = b - mb``, ``dg = g - mg``; E = sum / (N - 1 + eps).
  If G is empty, E = #predicted background / (N - 1 + eps); if G is the whole image,
  E = #predicted foreground / (N - 1 + eps). The curve uses the same 256 thresholds as F. Because of
  the ``N - 1`` a perfect map scores N / (N - 1), slightly above 1.
  Adaptive: the binary map ``p >= min(2 mean(p), 1)`` (on the float map, as for adaptive F).

Aggregation over a dataset (as PySODMetrics)
--------------------------------------------
Every metric is a mean over images, not a pooled pixel count: MAE, adpF and Sm are means of per-image
values, and so is adpE; for F and E the 256-point curves are averaged over images first, then
``maxF``/``maxE`` = max of the mean curve and ``meanF``/``meanE`` = mean of the mean curve. A small image
therefore weighs as much as a large one.

Deviation from PySODMetrics
---------------------------
One, in S_region: when the foreground centroid falls in the last row or column (e.g. an object one pixel
wide along the right or bottom border), a quadrant is empty. PySODMetrics takes the SSIM of the empty
array (NaN) times its zero weight and returns Sm = NaN for that image, which then makes the dataset Sm
NaN. Here an empty quadrant is skipped, i.e. contributes its weight of 0. Everywhere else the same
float64 operations run in the same order: on the golden cases every value agrees bit for bit (the tests
allow 1e-12).
"""

from __future__ import annotations

import numpy as np

from .metrics import _to_numpy

_EPS = np.spacing(1)  # PySODMetrics' (and MATLAB's) eps
_BETA2 = 0.3
_ALPHA = 0.5
_NUM_THRESHOLDS = 256

KEYS = ("MAE", "maxF", "meanF", "adpF", "Sm", "maxE", "meanE", "adpE")


class SaliencyMetrics:
    """Accumulates per-image saliency metrics over a dataset; matches PySODMetrics."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        # Scalars are kept per image so that compute() takes np.mean of the same array PySODMetrics does.
        self._mae: list[float] = []
        self._adp_f: list[float] = []
        self._adp_e: list[float] = []
        self._sm: list[float] = []
        # Curves are summed as they come: adding rows one by one is what np.mean(axis=0) does over an
        # (images, 256) array, so this is the same arithmetic without keeping every curve.
        self._f_curve_sum = np.zeros(_NUM_THRESHOLDS, dtype=np.float64)
        self._e_curve_sum = np.zeros(_NUM_THRESHOLDS, dtype=np.float64)

    @property
    def num_images(self) -> int:
        return len(self._mae)

    def update(self, pred, gt) -> None:
        """Add one image. ``pred``: float (H, W) in [0, 1]; ``gt``: (H, W) binary mask (0/1 or bool)."""
        p, g = _prepare(pred, gt)
        # Thresholded counts shared by the F and E curves.
        t = (p * 255).astype(np.uint8)  # PySODMetrics truncates here (not rint): keep it for exactness
        tp = np.cumsum(np.bincount(t[g], minlength=256)[::-1])  # index i: pixels with t >= 255 - i
        fp = np.cumsum(np.bincount(t[~g], minlength=256)[::-1])
        n_fg = int(np.count_nonzero(g))

        self._mae.append(float(np.mean(np.abs(p - g))))
        self._adp_f.append(_adaptive_f(p, g, n_fg))
        self._adp_e.append(_adaptive_e(p, g, n_fg))
        self._sm.append(_s_measure(p, g))
        self._f_curve_sum += _f_curve(tp, fp, n_fg)
        self._e_curve_sum += _e_curve(tp, fp, n_fg, g.size)

    def compute(self) -> dict[str, float]:
        if not self._mae:
            raise ValueError("SaliencyMetrics.compute() called before any update()")
        n = len(self._mae)
        f_curve = self._f_curve_sum / n
        e_curve = self._e_curve_sum / n
        return {
            "MAE": float(np.mean(np.array(self._mae, dtype=np.float64))),
            "maxF": float(f_curve.max()),
            "meanF": float(f_curve.mean()),
            "adpF": float(np.mean(np.array(self._adp_f, dtype=np.float64))),
            "Sm": float(np.mean(np.array(self._sm, dtype=np.float64))),
            "maxE": float(e_curve.max()),
            "meanE": float(e_curve.mean()),
            "adpE": float(np.mean(np.array(self._adp_e, dtype=np.float64))),
        }


def _prepare(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(_to_numpy(pred))
    gt = np.asarray(_to_numpy(gt))
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt must be (H, W) arrays of the same shape, got {pred.shape} and {gt.shape}")
    if pred.dtype != bool and not np.issubdtype(pred.dtype, np.floating):
        # A uint8 map would be ambiguous (0..255 or a 0/1 mask): make the caller say which.
        raise TypeError(f"pred must be a float probability map in [0, 1] (divide a uint8 map by 255), got {pred.dtype}")
    pred = pred.astype(np.float64)
    if not np.all((pred >= 0) & (pred <= 1)):  # also rejects NaN
        raise ValueError("pred values must lie in [0, 1]")
    # 8-bit quantisation as when the map is saved to PNG; rint makes q / 255 -> q exact.
    q = np.rint(pred * 255).astype(np.uint8)
    # From here on PySODMetrics' prepare_data, operation for operation.
    p = q / 255
    lo, hi = p.min(), p.max()
    if hi != lo:
        p = (p - lo) / (hi - lo)
    return p, gt > 0.5


def _adaptive_f(p: np.ndarray, g: np.ndarray, n_fg: int) -> float:
    binary = p >= min(2 * p.mean(), 1)
    inter = int(np.count_nonzero(binary & g))
    if inter == 0:  # also covers an empty gt, where recall is undefined
        return 0.0
    pre = inter / np.count_nonzero(binary)
    rec = inter / n_fg
    return float((1 + _BETA2) * pre * rec / (_BETA2 * pre + rec))


def _adaptive_e(p: np.ndarray, g: np.ndarray, n_fg: int) -> float:
    """E-measure of the map binarised at the adaptive threshold (the same cells as one point of the curve)."""
    binary = p >= min(2 * p.mean(), 1)
    tp = np.array([np.count_nonzero(binary & g)])
    fp = np.array([np.count_nonzero(binary & ~g)])
    return float(_e_curve(tp, fp, n_fg, g.size)[0])


def _f_curve(tp: np.ndarray, fp: np.ndarray, n_fg: int) -> np.ndarray:
    predicted = tp + fp
    predicted[predicted == 0] = 1  # TP is 0 there too, so P = 0
    precision = tp / predicted
    recall = tp / max(n_fg, 1)
    num = (1 + _BETA2) * precision * recall
    den = np.where(num == 0, 1, _BETA2 * precision + recall)
    return num / den


def _e_curve(tp: np.ndarray, fp: np.ndarray, n_fg: int, n: int) -> np.ndarray:
    pred_fg = tp + fp
    pred_bg = n - pred_fg
    if n_fg == 0:  # the alignment terms are degenerate; E counts pixels predicted background
        total = pred_bg
    elif n_fg == n:
        total = pred_fg
    else:
        fn = n_fg - tp
        tn = pred_bg - fn
        counts = np.stack([tp, fp, fn, tn])  # (4, 256): the four (pred, gt) cells
        mean_pred = pred_fg / n
        mean_gt = n_fg / n
        d_pred = np.stack([1 - mean_pred, 1 - mean_pred, 0 - mean_pred, 0 - mean_pred])
        d_gt = np.array([1 - mean_gt, 0 - mean_gt, 1 - mean_gt, 0 - mean_gt])[:, None]
        align = 2 * (d_pred * d_gt) / (d_pred**2 + d_gt**2 + _EPS)
        enhanced = (align + 1) ** 2 / 4
        total = (enhanced * counts).sum(axis=0)
    return total / (n - 1 + _EPS)


def _s_measure(p: np.ndarray, g: np.ndarray) -> float:
    y = np.mean(g)
    if y == 0:
        return float(1 - np.mean(p))
    if y == 1:
        return float(np.mean(p))
    score = _ALPHA * _s_object(p, g, y) + (1 - _ALPHA) * _s_region(p, g)
    return float(np.maximum(0, score))


def _object_score(x: np.ndarray) -> float:
    mean = np.mean(x)
    std = np.std(x, ddof=1) if x.size > 1 else 0
    return 2 * mean / (mean**2 + 1 + std + _EPS)


def _s_object(p: np.ndarray, g: np.ndarray, y: float) -> float:
    return _object_score(p[g]) * y + _object_score((1 - p)[~g]) * (1 - y)


def _s_region(p: np.ndarray, g: np.ndarray) -> float:
    h, w = g.shape
    area = h * w
    # Only called with a non-empty gt. +1: MATLAB's 1:X includes X, so the split sits after the centroid.
    cy, cx = np.argwhere(g).mean(axis=0).round()
    cy, cx = int(cy) + 1, int(cx) + 1
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb  # as PySODMetrics: by subtraction, not (h - cy) * (w - cx) / area
    score = 0.0
    for rows, cols, weight in ((slice(0, cy), slice(0, cx), w_lt), (slice(0, cy), slice(cx, w), w_rt),
                               (slice(cy, h), slice(0, cx), w_lb), (slice(cy, h), slice(cx, w), w_rb)):
        if p[rows, cols].size == 0:  # deviation: PySODMetrics gets NaN here (see module docstring)
            continue
        score = score + _ssim(p[rows, cols], g[rows, cols]) * weight
    return score


def _ssim(p: np.ndarray, g: np.ndarray) -> float:
    n = p.size
    g = g.astype(np.float64)
    x, y = np.mean(p), np.mean(g)
    # n - 1 + eps: the original's sample variance, kept finite for a one-pixel quadrant.
    sigma_x = np.sum((p - x) ** 2) / (n - 1 + _EPS)
    sigma_y = np.sum((g - y) ** 2) / (n - 1 + _EPS)
    sigma_xy = np.sum((p - x) * (g - y)) / (n - 1 + _EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + _EPS)
    return 1.0 if beta == 0 else 0.0
