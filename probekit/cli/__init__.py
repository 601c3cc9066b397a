"""The `probekit` command: a thin click layer over the library, one module per group of commands.

Nothing heavy is imported at module level: `probekit --help` and `probekit ls` never import torch.
"""

from __future__ import annotations

import os
import sys

import click

import probekit
from probekit.cli import backbone, extract, pipelines, probe, report
from probekit.cli.options import parse_int_list  # noqa: F401  (part of the CLI's public helpers)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(probekit.__version__, prog_name="probekit")
@click.option("--threads", type=click.IntRange(min=1), default=None, envvar="PROBEKIT_THREADS",
              help="CPU threads for torch (default: torch's choice, all cores). Lower it to share a machine.")
@click.pass_context
def cli(ctx, threads) -> None:
    """Probe what frozen vision backbones know, at which layer and which denoising step.

    \b
    Typical session:
      probekit extract --extractor shapeworld-mmdit --dataset shapeworld --split train \\
                       --timesteps 50,250,500,750 --layers 2,4 --limit 256 --out train.h5
      probekit extract ... --split test --limit 128 --out test.h5
      probekit probe --features train.h5 --eval-features test.h5 --task seg --timestep 250 --layer 4
      probekit report results/ --out report/
    Or run the whole chain on the embedded ShapeWorld default: probekit demo
    """
    ctx.ensure_object(dict)
    ctx.obj["threads"] = threads
    if threads is not None:
        # Before torch is imported (it is only imported inside commands): its pools start with this many.
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


@cli.command("ls")
@click.argument("kind", required=False,
                type=click.Choice(["extractors", "datasets", "tasks", "heads", "fusions", "families"]))
def ls_command(kind: str | None) -> None:
    """List registered extractors, datasets, tasks, heads, fusions and DiT families (by transformer class: what
    `--extractor dit --weights FOLDER` reads; with what each supports)."""
    from probekit.registries import ALL

    for name, registry in ALL.items():
        if kind and name != kind:
            continue
        click.echo(click.style(f"{name}:", bold=True))
        entries = registry.entries()
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            click.echo(f"  {entry.name:<{width}}  {entry.summary}")
            if name == "families":  # family modules import no torch: reading their capabilities is cheap
                click.echo(f"  {'':<{width}}    {entry.load().capability_line()}")


for _command in (extract.extract, extract.merge, extract.data, probe.probe, probe.zeroshot, report.report,
                 report.leaderboard, pipelines.run, pipelines.demo, backbone.train_backbone, backbone.sample, backbone.generate):
    cli.add_command(_command)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Idle OpenMP threads sleep instead of spinning (set before torch is imported, unless the user chose):
    # two probekit processes on a small machine otherwise spin-wait against each other (docs/benchmarks.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cli(prog_name="probekit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
