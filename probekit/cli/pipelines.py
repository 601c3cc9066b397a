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
@opt.friendly_errors(interrupted="rerun the same command to run the demo again (it starts afresh)")
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


def _sbatch_pairs(ctx, param, values):
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{value!r} is not KEY=VALUE (e.g. --sbatch account=myproj)", ctx, param)
        pairs[key.strip().lstrip("-")] = val.strip()
    return pairs


@click.command("run")
@click.argument("suite")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Folder for features, results and the report (default: the suite's `out`).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (every cell: done, stale, pending, or failed: would fail; bytes to write, free "
                   "space) and exit, non-zero when a cell would fail. Loads each model once to know its map shapes.")
@click.option("--overwrite", is_flag=True, help="Redo extractions and probes that are already done.")
@click.option("--cell", "cell_id", default=None, metavar="ID",
              help="Run only this cell, in this process (ids: OUT/plan/cells.json; the cells it needs must be done).")
@click.option("--launcher", type=click.Choice(["local", "slurm"]), default=None,
              help="Where cells run: local (this machine; default) or slurm (jobs through submitit: "
                   "pip install 'probekit[cluster]'). Default: the suite's launcher.name, else local.")
@click.option("--jobs", "-j", type=opt.POSITIVE, default=None,
              help="local: worker processes, each with its own GPU when there are GPUs, or cores/N threads each "
                   "(default: 1, cells in this process).")
@click.option("--partition", default=None, help="slurm: the partition (sbatch --partition).")
@click.option("--time", "time_min", type=opt.POSITIVE, default=None,
              help="slurm: minutes per job (sbatch --time; default 60).")
@click.option("--gpus-per-job", type=click.IntRange(min=0), default=None, help="slurm: sbatch --gpus-per-node.")
@click.option("--cpus-per-job", type=opt.POSITIVE, default=None, help="slurm: sbatch --cpus-per-task.")
@click.option("--mem-gb", type=opt.POSITIVE, default=None, help="slurm: sbatch --mem.")
@click.option("--array-parallelism", type=opt.POSITIVE, default=None,
              help="slurm: jobs of one array running at once (sbatch --array=0-N%P).")
@click.option("--cells-per-job", type=opt.POSITIVE, default=None,
              help="slurm: cells packed into one job, run one after another (small probes).")
@click.option("--sbatch", multiple=True, callback=_sbatch_pairs, metavar="KEY=VALUE",
              help="slurm: any other sbatch option, repeatable (--sbatch account=proj --sbatch qos=high).")
@opt.quiet
@opt.friendly_errors
def run(suite, out, dry_run, overwrite, cell_id, launcher, jobs, partition, time_min, gpus_per_job, cpus_per_job,
        mem_gb, array_parallelism, cells_per_job, sbatch, quiet):
    """Run SUITE (a YAML file, or a shipped suite: demo, mmdiff): extract every backbone on every dataset, train
    every probe, write the report and leaderboard. The suite is checked whole before any work; finished cells
    are reused, interrupted ones resumed, and only what is not done runs again; a failed cell is reported with
    its log and the others go on. Schema and launchers: docs/suites.md."""
    from probekit.pipelines.suite import load_suite

    loaded = load_suite(suite, out)
    if cell_id is not None:
        from probekit.pipelines.execute import run_cell

        if not run_cell(loaded, cell_id, overwrite=overwrite, echo=click.echo).ok:
            raise click.ClickException(f"cell {cell_id} failed (above)")
        return
    from probekit.pipelines.execute import run_suite

    slurm = {"partition": partition, "time": time_min, "gpus_per_job": gpus_per_job, "cpus_per_job": cpus_per_job,
             "mem_gb": mem_gb, "array_parallelism": array_parallelism, "cells_per_job": cells_per_job,
             "sbatch": {**loaded.launcher.get("sbatch", {}), **sbatch} or None}
    state = run_suite(loaded, dry_run=dry_run, overwrite=overwrite, progress=not quiet, echo=click.echo,
                      launcher=launcher, jobs=jobs, slurm=slurm)
    if state.failed and dry_run:
        raise click.ClickException(f"{len(state.failed)} cell(s) would fail (listed above)")
    if state.failed:
        raise click.ClickException(f"{len(state.failed)} step(s) failed (listed above); the rest are done")
