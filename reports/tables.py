"""Result records -> comparison tables (Markdown and CSV)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from probekit.results import find_records, read_record

COLUMNS = ["extractor", "dataset", "task", "fusion", "head", "timestep", "layer", "metric", "score",
           "pixel_acc", "eval_split", "n_train", "n_eval", "seed", "run"]


def records_frame(paths: list[str | Path]) -> pd.DataFrame:
    """One row per result record found under ``paths``, best first within each task."""
    rows = [_row(read_record(p)) for p in find_records(paths)]
    if not rows:
        raise FileNotFoundError(f"no result.json under {', '.join(map(str, paths))}")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["_sign"] = [1 if r["higher_is_better"] else -1 for r in rows]
    frame = frame.assign(_key=frame["score"] * frame["_sign"])
    frame = frame.sort_values(["task", "_key"], ascending=[True, False], kind="stable")
    return frame.drop(columns=["_sign", "_key"]).reset_index(drop=True)


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    probe, feats = rec.get("probe", {}), rec.get("features", {})
    return {
        "extractor": rec.get("extractor"), "dataset": rec.get("dataset"), "task": rec.get("task"),
        "fusion": probe.get("fusion"), "head": probe.get("head"), "timestep": probe.get("timestep"),
        "layer": probe.get("layer"), "metric": rec.get("main_score_name"), "score": rec.get("main_score"),
        "pixel_acc": rec.get("metrics", {}).get("pixel_acc"),
        "eval_split": feats.get("eval", {}).get("split"), "n_train": feats.get("train", {}).get("num_samples"),
        "n_eval": feats.get("eval", {}).get("num_samples"), "seed": rec.get("config", {}).get("seed"),
        "run": str(Path(rec["_path"]).parent), "higher_is_better": rec.get("higher_is_better", True),
    }


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.2f}" if abs(value) <= 1.0 else f"{value:.4g}"
    return str(value)


def to_markdown(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table. Scores in [0, 1] are shown in percent."""
    cols = columns or [c for c in COLUMNS if c != "run"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_tables(paths: list[str | Path], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = records_frame(paths)
    md, csv = out / "results.md", out / "results.csv"
    md.write_text("# probekit results\n\nScores in percent; rows ranked by each task's main metric.\n\n"
                  + to_markdown(frame))
    frame.to_csv(csv, index=False)
    return {"markdown": md, "csv": csv, "rows": len(frame)}
