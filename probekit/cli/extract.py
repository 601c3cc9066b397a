"""`probekit extract`, `probekit merge`, `probekit data check`."""

from __future__ import annotations

import sys

import click

from probekit.dtypes import DEFAULT_STORED_DTYPE, STORED_DTYPES

from probekit.cli import options as opt
from probekit.extractors.dit_family import SITE_MEANINGS  # imports no torch


@click.command()
@click.option("--extractor", "-e", required=True, help="Registered extractor name (see `probekit ls extractors`).")
@click.option("--dataset", "-d", default="shapeworld", show_default=True, help="Registered dataset name.")
@click.option("--split", "-s", default="train", show_default=True, help="Dataset split.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Your copy of a benchmark dataset (default: $PROBEKIT_DATA/<dataset>); files must stay inside.")
@click.option("--image-size", type=opt.POSITIVE, default=None,
              help="Bring dataset images to this size (disk datasets: short side + centre crop; default: the "
                   "manifest's probe size).")
@click.option("--timesteps", "-t", type=opt.INT_LIST, default="250,500,750", show_default=True,
              help="Timesteps in [0, 1000] (0 = clean image): '100,300' or '0:1000:250'.")
@click.option("--layers", "-l", type=opt.INT_LIST, default="0", show_default=True,
              help="Block indices (0-based, negative from the end; FLUX counts double blocks then single blocks).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output HDF5 feature file.")
@opt.weights("Local diffusers folder or hub id (overrides the registry's).")
@click.option("--limit", type=opt.POSITIVE, default=None, help="Extract only the first N samples of the split.")
@click.option("--batch-size", "-b", type=opt.POSITIVE, default=8, show_default=True, help="Images per forward.")
@opt.device()
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help="auto: bf16 on GPU, fp32 on CPU.")
@opt.seed("Noise seed (per-sample noise derives from it).")
@click.option("--ensemble", type=opt.POSITIVE, default=1, show_default=True, help="Average features over K noise draws.")
@click.option("--conditioning", type=click.Choice(["empty", "caption"]), default="empty", show_default=True,
              help="Text prompt: the empty prompt, or each sample's caption.")
@click.option("--resolution", type=opt.RESOLUTION, default=None,
              help="Resize images to this size before encoding: one number (square) or HEIGHT,WIDTH (maps keep "
                   "the aspect ratio).")
@click.option("--sites", type=opt.NameList(SITE_MEANINGS), default="output", show_default=True,
              help="DiT capture sites in each block, comma-separated: output (the block's output), norm1 (the "
                   "AdaLN-modulated input of attention), attn (attention output), mlp (feed-forward output). "
                   "Several sites cost one forward; each is stored under its own key (`probekit ls families`).")
@click.option("--concept-attention", is_flag=True,
              help="Store concept-attention maps (MM-DiT only) instead of block features.")
@click.option("--concepts", default=None, help="Comma-separated concept words; default: the dataset's class names.")
@click.option("--concept-layers", type=opt.INT_LIST, default=None,
              help="Joint blocks whose concept maps are averaged; default: every block with a text stream.")
@click.option("--shard-size", type=opt.POSITIVE, default=None,
              help="Samples per committed shard: a killed run redoes at most one shard per worker (default: 64, "
                   "fewer for large maps, about 256 MB a shard).")
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="raise", show_default=True,
              help="A sample that cannot be loaded, or whose maps are not finite: stop (finished shards are kept), "
                   "or skip it and record its id.")
@click.option("--part", default=None, metavar="I/N",
              help="Do only part I of N (0-based) as an independent job; join with `probekit merge OUT`. Under "
                   "torchrun the ranks split the work without it.")
@click.option("--pool", type=opt.POSITIVE, default=None,
              help="Store each map average-pooled on the device to K tokens along its shorter side.")
@click.option("--channels", type=opt.POSITIVE, default=None,
              help="Store each map projected to D channels by a fixed projection (see --projection).")
@click.option("--projection", type=click.Choice(["pca", "random"]), default="pca", show_default=True,
              help="pca: fitted on the first --fit-samples images of this run; random: seeded orthogonal.")
@click.option("--projection-from", type=click.Path(dir_okay=False), default=None,
              help="Reuse the channel projection stored in this feature file (the training split's) for val/test.")
@click.option("--drop-massive", type=opt.POSITIVE, default=None, metavar="K",
              help="Drop each map's K channels of largest mean |activation| (DiT massive activations), found on the "
                   "first --fit-samples images; the file names them; val/test reuse them with --projection-from.")
@click.option("--fit-samples", type=opt.POSITIVE, default=64, show_default=True,
              help="Images whose tokens fit the PCA projection (or find the massive channels).")
@click.option("--store-dtype", type=click.Choice(STORED_DTYPES), default=DEFAULT_STORED_DTYPE,
              show_default=True, help="Stored precision; bfloat16 keeps float32's range (float16 overflows above "
                                      "65,504).")
@click.option("--dry-run", is_flag=True, help="Print the plan (maps, shapes, bytes, shards, free space) and exit.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file (or an interrupted run of it).")
@opt.quiet
@opt.friendly_errors
def extract(extractor, dataset, split, data_root, image_size, timesteps, layers, out, weights, limit, batch_size,
            device, dtype, seed, ensemble, conditioning, resolution, sites, concept_attention, concepts, concept_layers,
            shard_size, on_error, part, pool, channels, projection, projection_from, drop_massive, fit_samples, store_dtype, dry_run,
            overwrite, quiet):
    """Extract per-timestep, per-layer features of a dataset split into an HDF5 feature file.

    Prints the plan (bytes per image and in all, free space) before the first forward and refuses a run that
    would not fit. Resumable: rerun the same command after an interruption. Distributed: `torchrun
    --nproc-per-node N -m probekit extract ...` (gloo on CPU, nccl on GPU; one GPU per rank).
    """
    from probekit.api import build_extractor
    from probekit.atomic import check_writable_dir
    from probekit.datasets import load_dataset
    from probekit.extractors.runner import extract_dataset
    from probekit.extractors.storage import StorageOptions
    from probekit.extractors.workers import device_for, from_environment

    storage = StorageOptions(pool=pool, channels=channels, projection=projection, projection_from=projection_from,
                             fit_samples=fit_samples, dtype=store_dtype, seed=seed, drop_massive=drop_massive)
    if not dry_run:
        check_writable_dir(click.format_filename(out), "--out", parent=True)
    # A wrong dataset, split, data root or output folder fails before a large model is loaded.
    ds = load_dataset(dataset, split, root=data_root, image_size=image_size)
    try:
        workers = from_environment(device, part)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--part") from None
    device = device_for(workers, device)
    ex = build_extractor(extractor, weights=weights, timesteps=timesteps, layers=layers, seed=seed,
                         ensemble=ensemble, conditioning=conditioning, resolution=resolution, device=device,
                         sites=sites if sites != ["output"] else None,
                         dtype=dtype)
    if concept_attention:
        from probekit.extractors.concept_attention import ConceptAttentionExtractor

        words = [c.strip() for c in concepts.split(",") if c.strip()] if concepts else list(ds.classes)
        ex = ConceptAttentionExtractor(ex, words, concept_layers)
    for note in ex.notes():
        click.secho(f"note: {note}", fg="yellow", err=True)
    try:
        extract_dataset(ex, ds, out, limit=limit, batch_size=batch_size, overwrite=overwrite,
                        progress=not quiet and workers.is_main, shard_size=shard_size, on_error=on_error,
                        workers=workers, echo=click.echo, storage=storage, dry_run=dry_run)
    finally:
        workers.close()


@click.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--standalone", is_flag=True,
              help="Copy the data into OUT itself (one self-contained file) and remove OUT.parts/.")
@opt.friendly_errors
def merge(out, standalone):
    """Write the feature file OUT as an index over the shards in OUT.parts/ (after `probekit extract --part I/N`
    jobs); with --standalone, one self-contained file."""
    from probekit.extractors.runner import merge_parts

    click.echo(f"wrote {merge_parts(out, standalone=standalone, progress=True)}")


@click.group()
def data():
    """Benchmark datasets on disk: check a copy against its manifest."""


@data.command("check")
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Your copy of the dataset (default: $PROBEKIT_DATA/<dataset>).")
@click.option("--split", "splits", multiple=True, help="Check only this split (repeatable).")
@click.option("--limit", type=opt.POSITIVE, default=None, help="Decode only the first N samples per split (counts "
              "and pairing are always checked in full).")
@opt.quiet
@opt.friendly_errors
def data_check(name, root, splits, limit, quiet):
    """Verify a copy of dataset NAME: counts, readable files, label sizes and values, image/label pairing."""
    from probekit.datasets.check import check_dataset

    report = check_dataset(name, root, list(splits) or None, limit=limit, progress=not quiet)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(1)
