"""`probekit report`: tables, leaderboard, figures and one self-contained HTML page from result records."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from probekit import scores
from probekit.reports import figures
from probekit.reports.html import figure_html, page
from probekit.reports.records import fusion_can, load_records, task_key, task_names
from probekit.errors import ProbekitError
from probekit.reports.tables import (best_mask, footer, leaderboard_frame, runs_frame, selection_score, to_html_table,
                                     to_markdown)


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
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProbekitError(f"cannot create the report folder {out} ({exc.strerror or exc})") from None
    recset = load_records(paths, skip_invalid=skip_invalid)
    runs = runs_frame(recset)
    board = leaderboard_frame(recset)
    mark = best_mask(board)
    (out / "results.md").write_text("# probekit results\n\n" + recset.summary() + ".\n\n" + to_markdown(runs))
    runs.to_csv(out / "results.csv", index=False)
    (out / "leaderboard.md").write_text("# Leaderboard\n\n" + recset.summary() + ". Best of a column (of two or "
                                        "more) in bold.\n\n" + to_markdown(board, mark) + "\n" + footer(board))
    made, failed, not_drawn = _figures(recset.records, out / "figures", concepts)
    sections = [
        ("Leaderboard", f"<p>{html.escape(recset.summary())}. Scores with several seeds read mean ± std. Click a "
                        "column to sort.</p>" + to_html_table(board, mark, "leaderboard")
                        + "".join(f'<p class="rule">{html.escape(line)}</p>' for line in footer(board).splitlines())
                        + notes_html(recset.records)),
        ("Figures", f"<p>{html.escape(HEATMAP_READING)}</p>"
                    + ("".join(figure_html(png, cap) for png, cap in made) or "<p>none for these records</p>")
                    + "".join(f'<p class="not-drawn">Not drawn: {html.escape(why)}.</p>' for why in not_drawn)),
        ("All runs", to_html_table(runs, None, "runs")),
    ]
    sections += _problem_sections(recset, failed)
    (out / "report.html").write_text(page("probekit report", sections))
    return {"html": out / "report.html", "markdown": out / "results.md", "csv": out / "results.csv",
            "leaderboard": out / "leaderboard.md", "figures": [p for p, _ in made], "records": recset,
            "rows": len(runs), "not_drawn": failed, "skipped_figures": not_drawn}


def _figures(records: list[dict[str, Any]], fig_dir: Path, concepts) -> tuple[list, list, list]:
    """Every figure the records allow: (png, caption) of those drawn, (name, error) of those that failed, and
    the sentences saying why a figure the reader might expect was not drawn."""
    made: list[tuple[Path, str]] = []
    failed: list[tuple[str, str]] = []
    not_drawn: list[str] = []

    def attempt(name: str, caption: str, build) -> None:
        try:
            fig = build()
        except figures.NotDrawn as exc:  # a figure that would carry no information: the text says so
            not_drawn.append(str(exc))
            return
        except figures.NotApplicable:
            return  # that figure needs records this set does not have
        except (OSError, KeyError, ValueError, IndexError) as exc:  # a record or its files are not as expected
            failed.append((name, f"{type(exc).__name__}: {exc}"))
            return
        made.append((figures.save(fig, fig_dir, name)["png"], caption))

    for ex in dict.fromkeys(r["extractor"] for r in records):
        safe = ex.replace("/", "_").replace("+", "_")
        fused = figures.fusion_records(records, ex)
        shown = ", ".join(f"{t} {fused[t]['probe']['name']}" for t in sorted(fused, key=_task_key))
        attempt(f"timestep_contribution_{safe}", f"Timestep contribution by task (learned fusion weights), {ex}: "
                f"{shown}", lambda: figures.timestep_task_heatmap(records, ex))
        attempt(f"timestep_layer_{safe}", f"Fusion weight per (timestep, layer), {ex}: {shown}",
                lambda: figures.timestep_layer_heatmaps(records, ex))
        for task in task_names():
            attempt(f"metric_vs_timestep_{task}_{safe}", f"{task}: single-map probes vs timestep, fused probes as "
                    f"reference lines, {ex}", lambda task=task: figures.metric_vs_timestep(records, ex, task))
        best = _best_per_task(records, ex)
        if best:
            names = ", ".join(f"{t} {best[t]['probe']['name']}" for t in sorted(best, key=_task_key))
            attempt(f"qualitative_{safe}", f"Image, ground truth and prediction of the best probe per task (by "
                    f"validation), {ex}: {names}", lambda best=best: figures.qualitative_panels(best))
        for rec in records:
            if rec["extractor"] == ex and fusion_can(rec["probe"].get("fusion"), "spatial"):
                attempt(f"spatial_weights_{rec['task']}_{safe}", f"Spatial fusion weights per timestep, "
                        f"{rec['task']} {rec['probe']['name']}, {ex}", lambda rec=rec: figures.spatial_weight_maps(rec))
    for i, path in enumerate(concepts):
        attempt(f"concept_maps_{i}", f"Concept-attention maps, {Path(path).name}",
                lambda path=path: figures.concept_maps_grid(path))
    return made, failed, not_drawn


def _task_key(task: str) -> tuple:
    return task_key(task)


def _problem_sections(recset, failed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Sections for what went wrong: figures that failed, invalid records skipped, duplicates resolved."""
    sections = []
    if failed:
        sections.append(("Figures not drawn", "<ul>" + "".join(
            f"<li>{html.escape(n)}: {html.escape(why)}</li>" for n, why in failed) + "</ul>"))
    if recset.invalid:
        sections.append(("Invalid records skipped", "<ul>" + "".join(
            f"<li>{html.escape(p)}: {html.escape(why)}</li>" for p, why in recset.invalid) + "</ul>"))
    if recset.duplicates:
        sections.append(("Duplicates resolved (newest kept)", "<ul>" + "".join(
            f"<li>kept {html.escape(k)}, dropped {html.escape(d)}</li>" for k, d in recset.duplicates) + "</ul>"))
    return sections


def run_label(rec: dict[str, Any]) -> str:
    return f"{rec['extractor']} {rec['task']} {rec['probe'].get('name', '')}"


def grouped_notes(records: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Every distinct note once, with the records it concerns, in the order first met. A note that begins with
    its probe's name ("linear-global: the chosen ...") is grouped by what follows the name."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        name = rec.get("probe", {}).get("name") or ""
        for note in rec.get("notes") or []:
            body = note[len(name) + 2:] if name and note.startswith(f"{name}: ") else note
            concerned = groups.setdefault(body, [])
            if all(r is not rec for r in concerned):
                concerned.append(rec)
    return list(groups.items())


def name_runs(concerned: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """The runs a note concerns, shortest first: "every run of EXTRACTOR (N)" for all of an extractor's runs,
    else each run's extractor, task and probe."""
    parts = []
    for ex in dict.fromkeys(r["extractor"] for r in concerned):
        mine = [r for r in concerned if r["extractor"] == ex]
        total = sum(r["extractor"] == ex for r in records)
        if len(mine) == total and total > 1:
            parts.append(f"every run of {ex} ({total})")
        else:
            parts += [run_label(r) for r in mine]
    return "; ".join(parts)


def notes_html(records: list[dict[str, Any]]) -> str:
    groups = grouped_notes(records)
    if not groups:
        return ""
    items = "".join(f'<li class="note">{html.escape(body)} <span class="runs">({html.escape(name_runs(recs, records))})'
                    "</span></li>" for body, recs in groups)
    return f"<h3>Notes on the runs</h3><ul class=\"notes\">{items}</ul>"


def _best_per_task(records: list[dict[str, Any]], extractor: str) -> dict[str, dict[str, Any]]:
    """Per task, the extractor's probe with saved examples that is best on validation (a test score never
    chooses; a record without a validation score only when no other has one)."""
    best: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec["extractor"] != extractor or (rec.get("config") or {}).get("trained") is False:  # zero-shot maps
            continue
        if not rec["probe"].get("examples"):
            continue
        cur = best.get(rec["task"])
        higher = scores.higher_is_better(rec["main_score_name"], rec)
        new, held = selection_score(rec), None if cur is None else selection_score(cur)
        if cur is None or scores.better(new, held, higher):
            best[rec["task"]] = rec
    return best
