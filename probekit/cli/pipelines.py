"""Pipelines over the stages: `probekit demo`."""

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
    """The main job on the embedded default: ShapeWorld -> extract the shipped ShapeWorld MM-DiT ->
    probe every (t, layer) -> report."""
    from probekit.atomic import check_writable_dir
    from probekit.pipelines.demo import run_demo

    check_writable_dir(out, "--out")
    run_demo(out, n_train=n_train, n_test=n_test, timesteps=timesteps, layers=layers, epochs=epochs, seed=seed,
             control=control, progress=not quiet, echo=click.echo)
