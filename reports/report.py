"""`probekit report`: tables, leaderboard, figures and one self-contained HTML page from result records."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from probekit.reports import figures
from probekit.reports.html import figure_html, page
from probekit.reports.records import load_records
from probekit.reports.tables import best_mask, leaderboard_frame, runs_frame, to_html_table, to_markdown


def write_report(paths: list[str | Path], out_dir: str | Path, concepts: list[str | Path] = ()) -> dict[str, Any]:
    out = Path(out_dir)
    fig_dir = out / "figures"
    out.mkdir(parents=True, exist_ok=True)
    recset = load_records(paths)
    records = recset.records
    runs = runs_frame(recset)
    board = leaderboard_frame(recset)
    mark = best_mask(board)
    (out / "results.md").write_text("# probekit results\n\n" + recset.summary() + ".\n\n" + to_markdown(runs))
    runs.to_csv(out / "results.csv", index=False)
    (out / "leaderboard.md").write_text("# Leaderboard\n\n" + recset.summary() + ". Best per column in bold; rows "
                                        "ranked by mean rank over tasks.\n\n" + to_markdown(board, mark))

    made: list[tuple[Path, str]] = []

    def attempt(name: str, caption: str, build) -> None:
        try:
            fig = build()
        except (ValueError, FileNotFoundError, KeyError):
            return  # that figure needs records this set does not have
        made.append((figures.save(fig, fig_dir, name)["png"], caption))

    extractors = list(dict.fromkeys(r["extractor"] for r in records))
    for ex in extractors:
        safe = ex.replace("/", "_").replace("+", "_")
        attempt(f"timestep_contribution_{safe}", f"Timestep contribution by task (learned fusion weights), {ex}",
                lambda: figures.timestep_task_heatmap(records, ex))
        attempt(f"timestep_layer_{safe}", f"Fusion weight per (timestep, layer), {ex}",
                lambda: figures.timestep_layer_heatmaps(records, ex))
        for task in figures.TASK_ORDER:
            attempt(f"metric_vs_timestep_{task}_{safe}", f"{task}: single-map probes vs timestep, fused probes as "
                    f"reference lines, {ex}", lambda task=task: figures.metric_vs_timestep(records, ex, task))
        best = _best_per_task(records, ex)
        if best:
            attempt(f"qualitative_{safe}", f"Image, ground truth and prediction of the best probe per task, {ex}",
                    lambda best=best: figures.qualitative_panels(best))
        for rec in records:
            if rec["extractor"] == ex and rec["probe"].get("fusion") == "spatial":
                attempt(f"spatial_weights_{rec['task']}_{safe}", f"Spatial fusion weights per timestep, "
                        f"{rec['task']}, {ex}", lambda rec=rec: figures.spatial_weight_maps(rec))
    for i, path in enumerate(concepts):
        attempt(f"concept_maps_{i}", f"Concept-attention maps, {Path(path).name}",
                lambda path=path: figures.concept_maps_grid(path))

    notes = sorted({n for r in records for n in r.get("notes", [])})
    sections = [
        ("Leaderboard", f"<p>{html.escape(recset.summary())}. Click a column to sort.</p>"
                        + to_html_table(board, mark, "leaderboard")),
        ("Figures", "".join(figure_html(png, cap) for png, cap in made) or "<p>none for these records</p>"),
        ("All runs", to_html_table(runs, None, "runs")),
    ]
    if recset.duplicates:
        sections.append(("Duplicates resolved (newest kept)", "<ul>" + "".join(
            f"<li>kept {html.escape(k)}, dropped {html.escape(d)}</li>" for k, d in recset.duplicates) + "</ul>"))
    (out / "report.html").write_text(page("probekit report", sections, notes))
    return {"html": out / "report.html", "markdown": out / "results.md", "csv": out / "results.csv",
            "leaderboard": out / "leaderboard.md", "figures": [p for p, _ in made], "records": recset,
            "rows": len(runs)}


def _best_per_task(records: list[dict[str, Any]], extractor: str) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec["extractor"] != extractor or rec["probe"].get("fusion") == "zero-shot":
            continue
        if not (Path(rec["_path"]).parent / "predictions.safetensors").is_file():
            continue
        cur = best.get(rec["task"])
        higher = rec.get("higher_is_better", True)
        if cur is None or (rec["main_score"] > cur["main_score"] if higher else rec["main_score"] < cur["main_score"]):
            best[rec["task"]] = rec
    return best
