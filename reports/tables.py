"""Result records -> tables: every run, and a leaderboard (Markdown, CSV, LaTeX, HTML)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probekit.reports.records import RecordSet, load_records

RUN_COLUMNS = ["extractor", "dataset", "task", "fusion", "head", "timestep", "layer", "metric", "score",
               "eval_split", "n_train", "n_eval", "seed", "run"]
SECONDARY = {"seg": ["pixel_acc"], "saliency": ["MAE", "Sm", "maxE"], "depth": ["AbsRel", "delta1", "RMSE_aligned"]}
LOWER_IS_BETTER = {"MAE", "AbsRel", "SqRel", "RMSE", "RMSE_log", "log10", "SILog", "RMSE_aligned", "AbsRel_aligned"}
PERCENT = {"mIoU", "pixel_acc", "maxF", "meanF", "adpF", "Sm", "maxE", "meanE", "delta1", "delta2", "delta3"}


# -- every run ---------------------------------------------------------------------------------
def runs_frame(recset: RecordSet) -> pd.DataFrame:
    rows = []
    for rec in recset.records:
        probe, feats = rec.get("probe", {}), rec.get("features", {})
        rows.append({
            "extractor": rec.get("extractor"), "dataset": rec.get("dataset"), "task": rec.get("task"),
            "fusion": probe.get("fusion"), "head": probe.get("head"), "timestep": probe.get("timestep"),
            "layer": probe.get("layer"), "metric": rec.get("main_score_name"), "score": rec.get("main_score"),
            "eval_split": feats.get("eval", {}).get("split"),
            "n_train": feats.get("train", {}).get("num_samples"), "n_eval": feats.get("eval", {}).get("num_samples"),
            "seed": rec.get("config", {}).get("seed"), "run": str(Path(rec["_path"]).parent),
            "_sign": 1 if rec.get("higher_is_better", True) else -1,
        })
    frame = pd.DataFrame(rows)
    frame["_key"] = frame["score"] * frame["_sign"]
    frame = frame.sort_values(["task", "_key"], ascending=[True, False], kind="stable")
    return frame.drop(columns=["_sign", "_key"]).reset_index(drop=True)


# -- leaderboard -------------------------------------------------------------------------------
def _column(task: str, metric: str) -> str:
    return f"{task} {metric} {'↓' if metric in LOWER_IS_BETTER else '↑'}"


def leaderboard_frame(recset: RecordSet, secondary: bool = False) -> pd.DataFrame:
    """One row per (dataset, extractor, fusion, head); one column per task's main metric (and secondary ones).

    A row's score for a task is its best record (for `single` fusion: the best (t, layer) cell, named in
    ``<task> cell``). Rows are ranked by their mean rank over the task columns they have.
    """
    cells: dict[tuple, dict[str, Any]] = {}
    for rec in recset.records:
        probe = rec.get("probe", {})
        head = probe.get("head", "")
        if probe.get("guidance_keys"):
            head = f"{head}+concepts"
        key = (rec.get("dataset"), rec.get("extractor"), probe.get("fusion"), head)
        row = cells.setdefault(key, {"dataset": key[0], "extractor": key[1], "fusion": key[2], "head": key[3]})
        task, metric = rec["task"], rec["main_score_name"]
        col = _column(task, metric)
        higher = rec.get("higher_is_better", True)
        score = rec.get("main_score")
        if score is None or (isinstance(score, float) and math.isnan(score)):
            continue
        if col not in row or (score > row[col] if higher else score < row[col]):
            row[col] = score
            row[f"{task} cell"] = _cell(probe)
            if secondary:
                for m in SECONDARY.get(task, []):
                    row[_column(task, m)] = rec.get("metrics", {}).get(m)
    frame = pd.DataFrame(list(cells.values()))
    score_cols = [c for c in frame.columns if c.endswith(("↑", "↓"))]
    main_cols = [c for c in score_cols if c.split(" ")[1] in ("mIoU", "maxF", "RMSE") or not secondary]
    ranks = pd.DataFrame({c: frame[c].rank(ascending=c.endswith("↓"), method="average") for c in main_cols})
    frame["mean rank"] = ranks.mean(axis=1, skipna=True)
    frame = frame.sort_values(["dataset", "mean rank"], kind="stable").reset_index(drop=True)
    frame.insert(0, "rank", frame.groupby("dataset")["mean rank"].rank(method="min").astype(int))
    ordered = ["rank", "dataset", "extractor", "fusion", "head"] + sorted(score_cols, key=_task_order) + \
              [c for c in frame.columns if c.endswith(" cell")] + ["mean rank"]
    return frame[ordered]


def _task_order(col: str) -> tuple:
    task, metric = col.split(" ")[:2]
    return ({"seg": 0, "saliency": 1, "depth": 2}.get(task, 9), task,
            0 if metric in ("mIoU", "maxF", "RMSE") else 1, metric)


def _cell(probe: dict[str, Any]) -> str:
    if probe.get("fusion") != "single":
        return probe.get("fusion", "")
    t, layer = probe.get("timestep"), probe.get("layer")
    return f"t={t} L{layer}" if t is not None else f"L{layer}"


def best_mask(frame: pd.DataFrame) -> pd.DataFrame:
    """True where a score is the best of its column within its dataset."""
    mask = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    for col in frame.columns:
        if not col.endswith(("↑", "↓")):
            continue
        for _, idx in frame.groupby("dataset").groups.items():
            values = frame.loc[idx, col].astype(float)
            if values.notna().any():
                best = values.min() if col.endswith("↓") else values.max()
                mask.loc[idx, col] = np.isclose(values, best) & values.notna()
    return mask


def _fmt(value: Any, col: str = "", metric: str | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    metric = metric or (col.split(" ")[1] if col.count(" ") >= 2 else col)
    if isinstance(value, (float, np.floating)):
        if col in ("timestep", "n_train", "n_eval", "seed") and float(value).is_integer():
            return str(int(value))
        if metric in PERCENT:
            return f"{100 * value:.2f}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def to_markdown(frame: pd.DataFrame, mark: pd.DataFrame | None = None, columns: list[str] | None = None) -> str:
    cols = columns or [c for c in frame.columns if c != "run"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for i, row in frame.iterrows():
        cells = []
        for c in cols:
            text = _fmt(row[c], c, row["metric"] if c == "score" and "metric" in row else None)
            cells.append(f"**{text}**" if mark is not None and c in mark and mark.loc[i, c] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, mark: pd.DataFrame) -> str:
    cols = list(frame.columns)
    esc = lambda s: str(s).replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")  # noqa: E731
    head = [esc(c).replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$") for c in cols]
    lines = [r"\begin{tabular}{" + "l" * 5 + "r" * (len(cols) - 5) + "}", r"\toprule", " & ".join(head) + r" \\",
             r"\midrule"]
    for i, row in frame.iterrows():
        cells = []
        for c in cols:
            text = esc(_fmt(row[c], c))
            cells.append(rf"\textbf{{{text}}}" if c in mark and mark.loc[i, c] else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html_table(frame: pd.DataFrame, mark: pd.DataFrame | None = None, table_id: str = "table") -> str:
    """A sortable table (sorting by the small script in the report page; works without a server)."""
    cols = [c for c in frame.columns if c != "run"]
    out = [f'<table class="sortable" id="{html.escape(table_id)}"><thead><tr>']
    out += [f'<th data-col="{j}">{html.escape(c)}</th>' for j, c in enumerate(cols)]
    out.append("</tr></thead><tbody>")
    for i, row in frame.iterrows():
        out.append("<tr>")
        for c in cols:
            value = row[c]
            sort_key = "" if value is None or (isinstance(value, float) and math.isnan(value)) else value
            text = html.escape(_fmt(value, c))
            best = mark is not None and c in mark and mark.loc[i, c]
            out.append(f'<td data-sort="{html.escape(str(sort_key))}"{" class=best" if best else ""}>'
                       f'{"<strong>" + text + "</strong>" if best else text}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def to_csv(frame: pd.DataFrame, mark: pd.DataFrame | None = None) -> str:
    out = frame.copy()
    if mark is not None:
        for c in frame.columns:
            if c.endswith(("↑", "↓")):
                out[f"{c} best"] = mark[c]
    return out.to_csv(index=False)


def leaderboard(paths: list[str | Path], fmt: str = "md", secondary: bool = False) -> tuple[str, RecordSet]:
    recset = load_records(paths)
    frame = leaderboard_frame(recset, secondary=secondary)
    mark = best_mask(frame)
    if fmt == "md":
        body = to_markdown(frame, mark)
    elif fmt == "csv":
        body = to_csv(frame, mark)
    elif fmt == "latex":
        body = to_latex(frame, mark)
    elif fmt == "html":
        body = to_html_table(frame, mark, "leaderboard")
    else:
        raise ValueError(f"unknown format {fmt!r}; choose md, csv, latex or html")
    return body, recset
