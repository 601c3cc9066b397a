"""`probekit report` and `probekit leaderboard`."""

from __future__ import annotations

from pathlib import Path

import click

from probekit.cli import options as opt


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Directory for the report.")
@click.option("--concepts", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Concept-attention feature file(s) to draw as concept-map grids.")
@click.option("--skip-invalid", is_flag=True,
              help="Leave out invalid result.json files (not JSON, incomplete, or a main score that is not a finite "
                   "number), named in the report.")
@opt.friendly_errors
def report(runs, out, concepts, skip_invalid):
    """Tables, leaderboard, figures (PNG + PDF) and one self-contained HTML page from the result records
    under RUNS (searched recursively)."""
    from probekit.reports.report import write_report

    written = write_report(list(runs), out, list(concepts), skip_invalid=skip_invalid)
    click.echo(written["markdown"].read_text())
    click.echo(f"{written['records'].summary()}")
    for name, why in written["not_drawn"]:
        click.secho(f"note: figure {name} not drawn: {why}", fg="yellow", err=True)
    click.echo(f"{written['rows']} runs -> {written['markdown']}, {written['csv']}, {written['leaderboard']}, "
               f"{len(written['figures'])} figures, {written['html']}")


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex", "html"]), default="md", show_default=True)
@click.option("--secondary", is_flag=True, help="Add secondary metrics (pixel acc, MAE, S-measure, AbsRel, ...).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Write to a file, not stdout.")
@click.option("--skip-invalid", is_flag=True, help="Leave out invalid result.json files (named on stderr).")
@opt.friendly_errors
def leaderboard(results, fmt, secondary, out, skip_invalid):
    """One row per (extractor, fusion, head), one column per task's main metric with its rank among the rows
    that have the task, best marked; rows with the same tasks ranked by their mean rank (the rule is printed
    under the table)."""
    from probekit.reports.tables import leaderboard as build

    body, recset = build(list(results), fmt=fmt, secondary=secondary, skip_invalid=skip_invalid)
    if out:
        from probekit import atomic

        atomic.write_text(Path(out), body)
        click.echo(f"{recset.summary()} -> {out}")
    else:
        click.echo(body)
        click.echo(recset.summary(), err=True)
