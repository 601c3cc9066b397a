"""Pipelines over the stages: `probekit run SUITE` and `probekit demo` (the shipped demo suite)."""

from __future__ import annotations

import click

from probekit.cli import options as opt


@click.command()
@click.option("--out", "-o", default="probekit-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--n-train", type=click.IntRange(min=8), default=256, show_default=True,
              help="ShapeWorld training images (15% of them validate the learning rate).")
@click.option("--n-test", type=opt.POSITIVE, default=128, show_default=True, help="ShapeWorld test images.")
@click.option("--timesteps", type=opt.INT_LIST, default="50,250,500,750", show_default=True)
@click.option("--layers", type=opt.INT_LIST, default="2,4", show_default=True)
@click.option("--epochs", type=opt.POSITIVE, default=None, help="Probe training epochs (default: the probes').")
@opt.seed("Seeds noise, splits and initialisation (fused probes run three seeds from it).")
@click.option("--control/--no-control", default=True, show_default=True,
              help="Also probe the same architecture with random weights, for contrast.")
@opt.quiet
@opt.friendly_errors
def demo(out, n_train, n_test, timesteps, layers, epochs, seed, control, quiet):
    """The main job on the embedded default: ShapeWorld -> extract the shipped ShapeWorld MM-DiT (and a
    random-init control) -> probe every (t, layer) and fused maps -> report. It is the shipped suite `demo`
    (`probekit run demo` with these options applied)."""
    from probekit.atomic import check_writable_dir
    from probekit.pipelines.demo import run_demo

    check_writable_dir(out, "--out")
    state = run_demo(out, n_train=n_train, n_test=n_test, timesteps=timesteps, layers=layers, epochs=epochs,
                     seed=seed, control=control, progress=not quiet, echo=click.echo)
    if state.failed:
        raise click.ClickException(f"{len(state.failed)} step(s) of the demo failed (listed above)")


@click.command("run")
@click.argument("suite")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Folder for features, results and the report (default: the suite's `out`).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (what will run, what is already done, bytes to write, free space) and exit. "
                   "Loads each model once to know its map shapes.")
@click.option("--overwrite", is_flag=True, help="Redo extractions and probes that are already done.")
@opt.quiet
@opt.friendly_errors
def run(suite, out, dry_run, overwrite, quiet):
    """Run SUITE (a YAML file, or a shipped suite: demo, mmdiff): extract every backbone on every dataset, train
    every probe, write the report and leaderboard. Reuses finished work, resumes interrupted work; a failed
    step is reported and the others go on. Schema: docs/suites.md."""
    from probekit.pipelines.suite import load_suite, run_suite

    state = run_suite(load_suite(suite, out), dry_run=dry_run, overwrite=overwrite, progress=not quiet,
                      echo=click.echo)
    if state.failed and not dry_run:
        raise click.ClickException(f"{len(state.failed)} step(s) failed (listed above); the rest are done")
