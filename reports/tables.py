"""Result records -> tables: every run, and a leaderboard (Markdown, CSV, LaTeX, HTML).

Directions and units come from each record's own ``metrics_info`` (``probekit.scores``); every score is shown
by ``scores.format_score``, as ``mean ± std`` when the run had several seeds.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probekit import scores
from probekit.reports.records import RecordSet, load_records

RUN_COLUMNS = ["extractor", "dataset", "task", "fusion", "head", "timestep", "layer", "metric", "score",
               "eval_split", "n_train", "n_eval", "seeds", "run"]
SECONDARY = {"seg": ["pixel_acc"], "saliency": ["MAE", "Sm", "maxE"], "depth": ["AbsRel", "delta1", "RMSE_aligned"]}
TASK_ORDER = {"seg": 0, "saliency": 1, "depth": 2}
RANK_RULE = ("a row's cell for a task is its best record by validation score (a test score never chooses); rows "
             "are ranked by their mean rank over every task of their dataset; a row that lacks a task is not ranked "
             "(rank -) and follows the ranked rows")


def fusion_label(rec: dict[str, Any]) -> str:
    """The record's fusion, with its level when that is not its head's default ("global-features" for a linear
    head's feature-level fusion, as its run folder is named); records older than the levels were feature level."""
    from probekit.probes.config import resolve_fusion_level

    probe = rec.get("probe", {})
    fusion = probe.get("fusion") or ""
    if fusion not in ("global", "spatial"):
        return fusion
    level = (rec.get("config") or {}).get("fusion_level", "features")
    return fusion if level == resolve_fusion_level(fusion, probe.get("head", "")) else f"{fusion}-{level}"


# -- every run ---------------------------------------------------------------------------------
def runs_frame(recset: RecordSet) -> pd.DataFrame:
    rows = []
    for rec in recset.records:
        probe, feats = rec.get("probe", {}), rec.get("features", {})
        info = scores.info(rec["main_score_name"], rec)
        rows.append({
            "extractor": rec.get("extractor"), "dataset": rec.get("dataset"), "task": rec.get("task"),
            "fusion": fusion_label(rec), "head": probe.get("head"), "timestep": probe.get("timestep"),
            "layer": probe.get("layer"), "metric": rec.get("main_score_name"), "score": rec.get("main_score"),
            "score_std": rec.get("main_score_std"), "unit": info["unit"],
            "eval_split": feats.get("eval", {}).get("split"),
            "n_train": feats.get("train", {}).get("num_samples"), "n_eval": feats.get("eval", {}).get("num_samples"),
            "seeds": ",".join(str(s) for s in rec.get("seeds") or []), "run": str(Path(rec["_path"]).parent),
            "_sign": 1 if info["higher_is_better"] else -1,
        })
    frame = pd.DataFrame(rows)
    frame["_key"] = frame["score"] * frame["_sign"]
    frame = frame.sort_values(["task", "_key"], ascending=[True, False], kind="stable")
    return frame.drop(columns=["_sign", "_key"]).reset_index(drop=True)


# -- leaderboard -------------------------------------------------------------------------------
def _column(task: str, metric: str, rec: dict[str, Any] | None = None) -> str:
    return f"{task} {metric} {scores.arrow(metric, rec)}"


def leaderboard_frame(recset: RecordSet, secondary: bool = False) -> pd.DataFrame:
    """One row per (dataset, extractor, fusion, head); one column per task's main metric (and secondary ones).

    A row's score for a task is its best record (for `single` fusion: the best (t, layer) cell, named in
    ``<task> cell``); its spread over seeds is kept in ``<column> std``. Ranking: ``RANK_RULE``.
    """
    cells: dict[tuple, dict[str, Any]] = {}
    units: dict[str, str] = {}
    for rec in recset.records:
        probe = rec.get("probe", {})
        head = probe.get("head", "")
        if probe.get("guidance_keys"):
            head = f"{head}+concepts"
        key = (rec.get("dataset"), rec.get("extractor"), fusion_label(rec), head)
        row = cells.setdefault(key, {"dataset": key[0], "extractor": key[1], "fusion": key[2], "head": key[3]})
        task, metric = rec["task"], rec["main_score_name"]
        col = _column(task, metric, rec)
        units[col] = scores.info(metric, rec)["unit"]
        higher = scores.higher_is_better(metric, rec)
        score = rec.get("main_score")
        if score is None or (isinstance(score, float) and math.isnan(score)):
            continue
        chooser = selection_score(rec)
        held = row.get(f"{col} by")
        if col not in row or _chooses(chooser, held, higher):
            row[col] = score
            row[f"{col} by"] = chooser
            row[f"{col} std"] = rec.get("main_score_std")
            row[f"{task} cell"] = _cell(probe)
            if secondary:
                for m in SECONDARY.get(task, []):
                    sub = _column(task, m, rec)
                    units[sub] = scores.info(m, rec)["unit"]
                    row[sub] = rec.get("metrics", {}).get(m)
                    row[f"{sub} std"] = (rec.get("metrics_std") or {}).get(m)
    frame = pd.DataFrame(list(cells.values()))
    frame = frame.drop(columns=[c for c in frame.columns if c.endswith(" by")])
    score_cols = [c for c in frame.columns if c.endswith(("↑", "↓"))]
    main_cols = [c for c in score_cols if c.split(" ")[1] in ("mIoU", "maxF", "RMSE") or not secondary]
    ranks = pd.DataFrame({c: frame.groupby("dataset")[c].rank(ascending=c.endswith("↓"), method="average")
                          for c in main_cols})
    # Fair ranking: a mean rank only over every task column the row's dataset has (complete rows).
    needed = {ds: [c for c in main_cols if frame.loc[frame.dataset == ds, c].notna().any()]
              for ds in frame["dataset"].unique()}
    complete = pd.Series([frame.loc[i, needed[frame.loc[i, "dataset"]]].notna().all() for i in frame.index],
                         index=frame.index)
    frame["mean rank"] = ranks.mean(axis=1, skipna=True).where(complete)
    frame["_complete"] = complete
    frame["_first"] = frame[main_cols].apply(lambda r: next((v for v in r if pd.notna(v)), np.nan), axis=1)
    frame = frame.sort_values(["dataset", "_complete", "mean rank"], ascending=[True, False, True],
                              kind="stable").reset_index(drop=True)
    ranked = frame.groupby("dataset")["mean rank"].rank(method="min")
    frame.insert(0, "rank", ranked.astype("Int64"))
    ordered = ["rank", "dataset", "extractor", "fusion", "head"] + sorted(score_cols, key=_task_order) + \
              sorted((c for c in frame.columns if c.endswith(" cell")), key=lambda c: TASK_ORDER.get(c.split(" ")[0], 9)) + \
              ["mean rank"]
    out = frame[ordered + [f"{c} std" for c in score_cols if f"{c} std" in frame.columns]]
    out.attrs["units"] = units
    out.attrs["rank_rule"] = RANK_RULE
    return out


def selection_score(rec: dict[str, Any], seeds: list[int] | None = None) -> float | None:
    """What chooses among a row's records (e.g. its single-map cells): the validation score (mean over seeds,
    or over ``seeds`` only, so that records probed with more seeds are judged on the same ones as the rest),
    in the direction of the main metric; None for a record without one (a zero-shot map, say)."""
    vals = [s.get("val_score") for s in rec.get("per_seed") or []
            if s.get("val_score") is not None and (seeds is None or s.get("seed") in seeds)]
    if not vals and (rec.get("config") or {}).get("val_score") is not None and (
            seeds is None or rec.get("seeds") == list(seeds)):
        vals = [rec["config"]["val_score"]]
    return float(np.mean(vals)) if vals else None


def _chooses(new: float | None, held: float | None, higher: bool) -> bool:
    """Whether a record with validation score ``new`` replaces the one holding a cell with ``held``. A record
    with a validation score beats one without; between two without, the first stays (a test score never
    chooses)."""
    if new is None:
        return False
    if held is None:
        return True
    return new > held if higher else new < held


def _task_order(col: str) -> tuple:
    task, metric = col.split(" ")[:2]
    return (TASK_ORDER.get(task, 9), task, 0 if metric in ("mIoU", "maxF", "RMSE") else 1, metric)


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


def _shown_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != "run" and not c.endswith(" std") and c != "unit"
            and c != "score_std"]


def _fmt(frame: pd.DataFrame, i, col: str) -> str:
    """One cell as shown: scores by their unit (with ± std when there is one), the rest as plain text."""
    row = frame.loc[i]
    value = row[col]
    if col == "score":
        return scores.format_score(value, row.get("unit", "ratio"), row.get("score_std"))
    if col.endswith(("↑", "↓")):
        std = row.get(f"{col} std") if f"{col} std" in frame.columns else None
        return scores.format_score(value, frame.attrs.get("units", {}).get(col, "ratio"), std)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if col == "mean rank":
        return f"{float(value):.3f}"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def to_markdown(frame: pd.DataFrame, mark: pd.DataFrame | None = None, columns: list[str] | None = None) -> str:
    cols = columns or _shown_columns(frame)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for i in frame.index:
        cells = []
        for c in cols:
            text = _fmt(frame, i, c)
            cells.append(f"**{text}**" if mark is not None and c in mark and mark.loc[i, c] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, mark: pd.DataFrame) -> str:
    cols = _shown_columns(frame)
    esc = lambda s: str(s).replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")  # noqa: E731
    head = [esc(c).replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$") for c in cols]
    lines = [r"\begin{tabular}{" + "l" * 5 + "r" * (len(cols) - 5) + "}", r"\toprule", " & ".join(head) + r" \\",
             r"\midrule"]
    for i in frame.index:
        cells = []
        for c in cols:
            text = esc(_fmt(frame, i, c)).replace("±", r"$\pm$")
            cells.append(rf"\textbf{{{text}}}" if c in mark and mark.loc[i, c] else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html_table(frame: pd.DataFrame, mark: pd.DataFrame | None = None, table_id: str = "table") -> str:
    """A sortable table (sorting by the small script in the report page; works without a server)."""
    cols = _shown_columns(frame)
    out = [f'<table class="sortable" id="{html.escape(table_id)}"><thead><tr>']
    out += [f'<th data-col="{j}">{html.escape(c)}</th>' for j, c in enumerate(cols)]
    out.append("</tr></thead><tbody>")
    for i in frame.index:
        out.append("<tr>")
        for c in cols:
            value = frame.loc[i, c]
            missing = value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
            sort_key = "" if missing else value
            text = html.escape(_fmt(frame, i, c))
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


def leaderboard(paths: list[str | Path], fmt: str = "md", secondary: bool = False,
                skip_invalid: bool = False) -> tuple[str, RecordSet]:
    recset = load_records(paths, skip_invalid=skip_invalid)
    frame = leaderboard_frame(recset, secondary=secondary)
    mark = best_mask(frame)
    if fmt == "md":
        body = to_markdown(frame, mark) + f"\nRanking: {RANK_RULE}.\n"
    elif fmt == "csv":
        body = to_csv(frame, mark)
    elif fmt == "latex":
        body = to_latex(frame, mark)
    elif fmt == "html":
        body = to_html_table(frame, mark, "leaderboard")
    else:
        raise ValueError(f"unknown format {fmt!r}; choose md, csv, latex or html")
    return body, recset
