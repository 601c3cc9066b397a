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
from probekit.reports.records import RecordSet, fusion_can, load_records, task_can, task_key

RUN_COLUMNS = ["extractor", "dataset", "task", "fusion", "head", "timestep", "layer", "metric", "score",
               "eval_split", "n_train", "n_eval", "seeds", "learned nothing", "run"]
RANK_RULE = ("a row's cell for a task is its best record by validation score (a test score never chooses); "
             "`<task> rank` ranks the rows that have that task (1 = best); `rank` orders the rows that have the same "
             "tasks by their mean rank over them, counted among those rows only (- where no other row has the same "
             "tasks)")


def fusion_label(rec: dict[str, Any]) -> str:
    """The record's fusion, with its level when that is not its head's default ("global-features" for a linear
    head's feature-level fusion, as its run folder is named); records older than the levels were feature level."""
    from probekit.probes.config import resolve_fusion_level

    probe = rec.get("probe", {})
    fusion = probe.get("fusion") or ""
    if not fusion_can(fusion, "mixes_predictions"):
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
            "seeds": ",".join(str(s) for s in rec.get("seeds") or []),
            "learned nothing": "yes" if (rec.get("trivial") or {}).get("learned_nothing") else "",
            "run": str(Path(rec["_path"]).parent), "_sign": 1 if info["higher_is_better"] else -1,
        })
    frame = pd.DataFrame(rows)
    frame["_key"] = frame["score"] * frame["_sign"]
    frame = frame.sort_values(["task", "_key"], ascending=[True, False], kind="stable")
    return frame.drop(columns=["_sign", "_key"]).reset_index(drop=True)


# -- leaderboard -------------------------------------------------------------------------------
FLAG = " learned nothing"  # suffix of a score column's hidden flag: the cell's probe is no better than trivial
FLAG_MARK = "†"
FLAG_RULE = (f"{FLAG_MARK} learned nothing: the probe's validation score is at or below the trivial predictor's "
             "(the most frequent class everywhere for seg, every pixel background for saliency, the training mean "
             "depth for depth)")


def _column(task: str, metric: str, rec: dict[str, Any] | None = None) -> str:
    return f"{task} {metric} {scores.arrow(metric, rec)}"


def is_score(col: str) -> bool:
    return col.endswith(("↑", "↓"))


def rank_column(score_col: str) -> str:
    """The per-task rank column shown beside a main score column ("seg mIoU ↑" -> "seg rank")."""
    return f"{score_col.split(' ')[0]} rank"


def _row_key(rec: dict[str, Any]) -> tuple:
    probe = rec.get("probe", {})
    head = probe.get("head", "")
    if probe.get("guidance_keys"):
        head = f"{head}+concepts"
    return (rec.get("dataset"), rec.get("extractor"), fusion_label(rec), head)


def _cells(recset: RecordSet, secondary: bool) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One dict per leaderboard row: for each task the record that holds its cell (best by validation score),
    its score, spread over seeds, chosen map and whether it learned nothing; and the unit of every column."""
    cells: dict[tuple, dict[str, Any]] = {}
    units: dict[str, str] = {}
    for rec in recset.records:
        key = _row_key(rec)
        row = cells.setdefault(key, {"dataset": key[0], "extractor": key[1], "fusion": key[2], "head": key[3]})
        task, metric = rec["task"], rec["main_score_name"]
        col = _column(task, metric, rec)
        units[col] = scores.info(metric, rec)["unit"]
        chooser = selection_score(rec)
        if col in row and not _chooses(chooser, row.get(f"{col} by"), scores.higher_is_better(metric, rec)):
            continue
        row.update({col: rec["main_score"], f"{col} by": chooser, f"{col} std": rec.get("main_score_std"),
                    f"{col}{FLAG}": bool((rec.get("trivial") or {}).get("learned_nothing")),
                    f"{task} cell": _cell(rec.get("probe", {}))})
        for m in task_can(task, "secondary_metrics", ()) if secondary else []:
            sub = _column(task, m, rec)
            units[sub] = scores.info(m, rec)["unit"]
            row[sub] = rec.get("metrics", {}).get(m)
            row[f"{sub} std"] = (rec.get("metrics_std") or {}).get(m)
    return list(cells.values()), units


def task_ranks(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Per main score column, each row's rank among the rows of its dataset that have that score: 1 = best,
    tied scores share the best of their ranks (1, 1, 3), NaN for a row without the score."""
    return pd.DataFrame({c: frame.groupby("dataset", dropna=False)[c].rank(ascending=c.endswith("↓"), method="min")
                         for c in cols}, index=frame.index)


def task_sets(frame: pd.DataFrame, cols: list[str]) -> pd.Series:
    """Each row's tasks: the main score columns it has a score in, in column order."""
    return pd.Series([tuple(c for c in cols if pd.notna(frame.at[i, c])) for i in frame.index], index=frame.index,
                     dtype=object)


def mean_ranks(frame: pd.DataFrame, sets: pd.Series) -> pd.Series:
    """Each row's mean rank over its tasks, counted among the rows of its dataset that have the same tasks
    (a row with other tasks never moves it; tied scores share the average of their ranks). NaN for a row whose
    tasks no other row of its dataset has: it is compared per task only."""
    groups: dict[tuple, list] = {}
    for i in frame.index:
        groups.setdefault((frame.at[i, "dataset"], sets[i]), []).append(i)
    out = pd.Series(np.nan, index=frame.index, dtype=float)
    for (_, tasks), rows in groups.items():
        if len(rows) < 2 or not tasks:
            continue
        sub = frame.loc[rows, list(tasks)]
        ranks = pd.DataFrame({c: sub[c].rank(ascending=c.endswith("↓"), method="average") for c in tasks})
        out.loc[rows] = ranks.mean(axis=1)
    return out


def set_ranks(frame: pd.DataFrame, mean: pd.Series, sets: pd.Series) -> pd.Series:
    """Each row's place by mean rank among the rows of its dataset that have the same tasks: 1 = best, ties
    share the best place; <NA> where there is no mean rank."""
    group = frame["dataset"].astype(str) + "|" + sets.map("+".join)
    return mean.groupby(group).rank(method="min").astype("Int64")


def _order(frame: pd.DataFrame, sets: pd.Series) -> pd.Index:
    """Rows by dataset; within it rows with more tasks first, rows with the same tasks together, ranked ones by
    rank; otherwise in the order their records came."""
    keys = pd.DataFrame({"dataset": frame["dataset"].astype(str), "ntasks": -sets.map(len),
                         "tasks": sets.map(lambda s: [task_key(c.split(" ")[0])[0] for c in s]).map(tuple),
                         "rank": frame["rank"].astype(float)}, index=frame.index)
    return keys.sort_values(["dataset", "ntasks", "tasks", "rank"], na_position="last", kind="stable").index


def leaderboard_frame(recset: RecordSet, secondary: bool = False) -> pd.DataFrame:
    """One row per (dataset, extractor, fusion, head); per task its main score, that score's rank among the rows
    with the task (``<task> rank``) and, with ``secondary``, further metrics.

    A row's score for a task is its best record by validation score (for `single` fusion: the best (t, layer)
    cell, named in ``<task> cell``); its spread over seeds is kept in ``<column> std``, and whether that probe
    learned nothing in ``<column> learned nothing``. Ranking: ``RANK_RULE``.
    """
    rows, units = _cells(recset, secondary)
    frame = pd.DataFrame(rows)
    frame = frame.drop(columns=[c for c in frame.columns if c.endswith(" by")])
    score_cols = sorted((c for c in frame.columns if is_score(c)), key=_task_order)
    main_cols = [c for c in score_cols if _is_main(c) or not secondary]
    ranks = task_ranks(frame, main_cols)
    for c in main_cols:
        frame[rank_column(c)] = ranks[c]
    sets = task_sets(frame, main_cols)
    frame["mean rank"] = mean_ranks(frame, sets)
    frame["rank"] = set_ranks(frame, frame["mean rank"], sets)
    frame = frame.loc[_order(frame, sets)].reset_index(drop=True)
    shown = [col for c in score_cols for col in ([c, rank_column(c)] if c in main_cols else [c])]
    cells = sorted((c for c in frame.columns if c.endswith(" cell")), key=lambda c: task_key(c.split(" ")[0])[0])
    hidden = [f"{c}{suffix}" for c in score_cols for suffix in (" std", FLAG) if f"{c}{suffix}" in frame.columns]
    out = frame[["rank", "dataset", "extractor", "fusion", "head", *shown, *cells, "mean rank", *hidden]]
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
    return scores.better(new, held, higher)


def _is_main(col: str) -> bool:
    """Whether a score column holds its task's main metric (as the task's class says; a task not registered has
    no secondary metrics to show, so its one column is its records' main metric)."""
    task, metric = col.split(" ")[:2]
    main = task_can(task, "main_metric")
    return main is None or metric == main


def _task_order(col: str) -> tuple:
    task, metric = col.split(" ")[:2]
    return (*task_key(task), 0 if _is_main(col) else 1, metric)


def _cell(probe: dict[str, Any]) -> str:
    if not fusion_can(probe.get("fusion"), "reads_one_map"):
        return probe.get("fusion", "")
    t, layer = probe.get("timestep"), probe.get("layer")
    return f"t={t} L{layer}" if t is not None else f"L{layer}"


def best_mask(frame: pd.DataFrame) -> pd.DataFrame:
    """True where a score is the best of its column within its dataset; a lone score beats nothing and is not
    marked."""
    mask = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    for col in frame.columns:
        if not is_score(col):
            continue
        for _, idx in frame.groupby("dataset", dropna=False).groups.items():
            values = frame.loc[idx, col].astype(float)
            if values.notna().sum() >= 2:
                best = values.min() if col.endswith("↓") else values.max()
                mask.loc[idx, col] = np.isclose(values, best) & values.notna()
    return mask


def _shown_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("run", "unit", "score_std") and not c.endswith((" std", FLAG))]


def flagged(frame: pd.DataFrame, i, col: str) -> bool:
    """Whether the score in ``col`` of row ``i`` comes from a probe that learned nothing."""
    value = frame.at[i, f"{col}{FLAG}"] if f"{col}{FLAG}" in frame.columns else False
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _fmt(frame: pd.DataFrame, i, col: str) -> str:
    """One cell as shown: scores by their unit (with ± std when there is one), the rest as plain text."""
    row = frame.loc[i]
    value = row[col]
    if col == "score":
        return scores.format_score(value, row.get("unit", "ratio"), row.get("score_std"))
    if is_score(col):
        std = row.get(f"{col} std") if f"{col} std" in frame.columns else None
        text = scores.format_score(value, frame.attrs.get("units", {}).get(col, "ratio"), std)
        return f"{text} {FLAG_MARK}" if flagged(frame, i, col) else text
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if col == "mean rank":
        return f"{float(value):.3f}"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def footer(frame: pd.DataFrame) -> str:
    """The lines under a leaderboard: how rows are ranked, and what the learned-nothing mark means when used."""
    lines = [f"Ranking: {RANK_RULE}."]
    if any(frame[c].eq(True).any() for c in frame.columns if c.endswith(FLAG)):
        lines.append(f"{FLAG_RULE}.")
    return "\n".join(lines) + "\n"


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
            text = esc(_fmt(frame, i, c)).replace("±", r"$\pm$").replace(FLAG_MARK, r"$^\dagger$")
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
            trivial = is_score(c) and flagged(frame, i, c)
            classes = " ".join(k for k, on in (("best", best), ("trivial", trivial)) if on)
            attrs = f' class="{classes}"' if classes else ""
            attrs += f' title="{html.escape(FLAG_RULE)}"' if trivial else ""
            out.append(f'<td data-sort="{html.escape(str(sort_key))}"{attrs}>'
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
        body = to_markdown(frame, mark) + "\n" + footer(frame)
    elif fmt == "csv":
        body = to_csv(frame, mark)
    elif fmt == "latex":
        body = to_latex(frame, mark) + "".join(f"% {line}\n" for line in footer(frame).splitlines())
    elif fmt == "html":
        body = to_html_table(frame, mark, "leaderboard") + "".join(
            f"<p>{html.escape(line)}</p>" for line in footer(frame).splitlines())
    else:
        raise ValueError(f"unknown format {fmt!r}; choose md, csv, latex or html")
    return body, recset
