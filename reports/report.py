"""`probekit report`: tables, leaderboard, figures and one self-contained HTML page from result records."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from probekit import scores
from probekit.reports import figures
from probekit.reports.html import figure_html, page
from probekit.reports.records import load_records
from probekit.errors import ProbekitError
from probekit.reports.tables import RANK_RULE, best_mask, leaderboard_frame, runs_frame, to_html_table, to_markdown


HEATMAP_READING = (
    "How to read a timestep-contribution heatmap: a cell is the share of that timestep's maps (summed over the "
    "layers) in what a global fusion probe mixes (or, for spatial fusion, that share averaged over every "
    "evaluation pixel). With the linear head (fusion level 'predictions') the probe mixes the maps' own "
    "predictions: every map has a read-out of its own, also trained alone, so a share says how much the mix "
    "trusts that map's prediction. With a decoder head (level 'features') it mixes the normalised maps the head "
    "reads. Either way the shares are comparable across timesteps and sum to 1 per task. Uniform shares (1 / number of timesteps) mean the probe found no "
    "timestep more useful than another. With several seeds, the second line of a cell is the standard deviation "
    "over seeds: differences smaller than it are not evidence.")


def write_report(paths: list[str | Path], out_dir: str | Path, concepts: list[str | Path] = (),
                 skip_invalid: bool = False) -> dict[str, Any]:
    out = Path(out_dir)
    fig_dir = out / "figures"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProbekitError(f"cannot create the report folder {out} ({exc.strerror or exc})") from None
    recset = load_records(paths, skip_invalid=skip_invalid)
    records = recset.records
    runs = runs_frame(recset)
    board = leaderboard_frame(recset)
    mark = best_mask(board)
    (out / "results.md").write_text("# probekit results\n\n" + recset.summary() + ".\n\n" + to_markdown(runs))
    runs.to_csv(out / "results.csv", index=False)
    (out / "leaderboard.md").write_text("# Leaderboard\n\n" + recset.summary() + ". Best per column in bold; "
                                        f"{RANK_RULE}.\n\n" + to_markdown(board, mark))

    made: list[tuple[Path, str]] = []
    failed: list[tuple[str, str]] = []

    def attempt(name: str, caption: str, build) -> None:
        try:
            fig = build()
        except figures.NotApplicable:
            return  # that figure needs records this set does not have
        except (OSError, KeyError, ValueError, IndexError) as exc:  # a record or its files are not as expected
            failed.append((name, f"{type(exc).__name__}: {exc}"))
            return
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

    notes: dict[str, list[str]] = {}
    for r in records:
        for n in r.get("notes", []):
            if n not in notes.setdefault(r["extractor"], []):
                notes[r["extractor"]].append(n)
    note_html = "".join(f'<p class="note"><strong>{html.escape(ex)}</strong>: {html.escape(n)}</p>'
                        for ex, ns in notes.items() for n in ns)
    sections = [
        ("Leaderboard", f"<p>{html.escape(recset.summary())}. {html.escape(RANK_RULE[0].upper() + RANK_RULE[1:])}."
                        " Scores with several seeds read mean ± std. Click a column to sort.</p>"
                        + to_html_table(board, mark, "leaderboard")
                        + (f"<h3>Notes on the runs</h3>{note_html}" if note_html else "")),
        ("Figures", f"<p>{html.escape(HEATMAP_READING)}</p>"
                    + ("".join(figure_html(png, cap) for png, cap in made) or "<p>none for these records</p>")),
        ("All runs", to_html_table(runs, None, "runs")),
    ]
    if failed:
        sections.append(("Figures not drawn", "<ul>" + "".join(
            f"<li>{html.escape(n)}: {html.escape(why)}</li>" for n, why in failed) + "</ul>"))
    if recset.invalid:
        sections.append(("Unreadable records skipped", "<ul>" + "".join(
            f"<li>{html.escape(p)}: {html.escape(why)}</li>" for p, why in recset.invalid) + "</ul>"))
    if recset.duplicates:
        sections.append(("Duplicates resolved (newest kept)", "<ul>" + "".join(
            f"<li>kept {html.escape(k)}, dropped {html.escape(d)}</li>" for k, d in recset.duplicates) + "</ul>"))
    (out / "report.html").write_text(page("probekit report", sections))
    return {"html": out / "report.html", "markdown": out / "results.md", "csv": out / "results.csv",
            "leaderboard": out / "leaderboard.md", "figures": [p for p, _ in made], "records": recset,
            "rows": len(runs), "not_drawn": failed}


def _best_per_task(records: list[dict[str, Any]], extractor: str) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec["extractor"] != extractor or rec["probe"].get("fusion") == "zero-shot":
            continue
        if not rec["probe"].get("examples"):
            continue
        cur = best.get(rec["task"])
        higher = scores.higher_is_better(rec["main_score_name"], rec)
        if cur is None or (rec["main_score"] > cur["main_score"] if higher else rec["main_score"] < cur["main_score"]):
            best[rec["task"]] = rec
    return best
