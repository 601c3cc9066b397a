"""What a metric means: its direction and its unit, and the one way scores are shown.

Every result record carries ``metrics_info`` ({name: {"higher_is_better", "unit"}}) written by its task;
readers use the record's own info (``KNOWN`` only fills it in for records written before it existed). Units:

- ``fraction``: a proportion in [0, 1] (mIoU, maxF, delta1), shown as a percentage with two decimals;
- ``m``: metres (RMSE), shown with three decimals;
- ``ratio``: a dimensionless error (AbsRel, MAE), shown with three decimals;
- ``count``: an integer.
"""

from __future__ import annotations

import math
from typing import Any

UNITS = ("fraction", "m", "ratio", "count")

_FRACTIONS = ("mIoU", "pixel_acc", "maxF", "meanF", "adpF", "Sm", "maxE", "meanE", "adpE", "delta1", "delta2",
              "delta3", "delta1_aligned", "delta2_aligned", "delta3_aligned")
_ERRORS_M = ("RMSE", "RMSE_aligned")
_ERRORS = ("MAE", "AbsRel", "SqRel", "RMSE_log", "log10", "SILog", "AbsRel_aligned", "SqRel_aligned",
           "RMSE_log_aligned", "log10_aligned", "SILog_aligned")
KNOWN: dict[str, dict[str, Any]] = {
    **{m: {"higher_is_better": True, "unit": "fraction"} for m in _FRACTIONS},
    **{m: {"higher_is_better": False, "unit": "m"} for m in _ERRORS_M},
    **{m: {"higher_is_better": False, "unit": "ratio"} for m in _ERRORS},
    **{m: {"higher_is_better": True, "unit": "count"} for m in ("num_pixels", "num_images")},
}


def info(name: str, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The direction and unit of metric ``name``: from the record when it says, else the known table."""
    if record is not None:
        own = (record.get("metrics_info") or {}).get(name)
        if own:
            return own
    if name in KNOWN:
        return KNOWN[name]
    return {"higher_is_better": True, "unit": "ratio"}


def higher_is_better(name: str, record: dict[str, Any] | None = None) -> bool:
    return bool(info(name, record)["higher_is_better"])


def better(a: float | None, b: float | None, higher_is_better: bool) -> bool:
    """Whether score ``a`` is strictly better than ``b`` in the metric's direction (the one comparison of scores:
    choosing a rate, a leaderboard cell, the best map or probe). Any score beats none (``b`` None); no score
    beats nothing (``a`` None); a tie keeps ``b``."""
    if a is None:
        return False
    if b is None:
        return True
    return a > b if higher_is_better else a < b


def arrow(name: str, record: dict[str, Any] | None = None) -> str:
    return "↑" if higher_is_better(name, record) else "↓"


def format_score(value: Any, unit: str = "ratio", std: Any = None) -> str:
    """One score as shown everywhere (tables, CLI lines, figures): '24.27', '2.681', '24.27 ± 0.31', '-'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    scale, digits = {"fraction": (100.0, 2), "m": (1.0, 3), "ratio": (1.0, 3), "count": (1.0, 0)}.get(unit, (1.0, 3))
    text = f"{float(value) * scale:.{digits}f}"
    if std is not None and isinstance(std, (int, float)) and math.isfinite(std):
        text += f" ± {float(std) * scale:.{digits}f}"
    return text


def unit_label(unit: str) -> str:
    """Axis-label suffix: ' (%)' for fractions, ' (m)' for metres."""
    return {"fraction": " (%)", "m": " (m)"}.get(unit, "")
