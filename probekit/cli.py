"""The `probekit` command: a thin click layer over the library.

Nothing heavy is imported at module level: `probekit --help` and `probekit ls` never import torch.
"""

from __future__ import annotations

import functools
import os
import sys

import click

import probekit
from probekit.errors import ProbekitError
from probekit.probes.config import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_FUSION_LR, DEFAULT_LRS


def _friendly_errors(fn):
    """Show library errors (bad input, unknown names) as one clear line, not a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ProbekitError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def parse_int_list(text: str) -> list[int]:
    """'100,300,500' or '0:1000:250' (start:stop:step, stop excluded) or a mix: '0:500:250,900'."""
    values: list[int] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        if ":" in part:
            bits = [int(b) for b in part.split(":")]
            if len(bits) not in (2, 3) or (len(bits) == 3 and bits[2] == 0):
                raise click.BadParameter(f"{part!r} is not start:stop[:step]")
            values.extend(range(*bits))
        else:
            try:
                values.append(int(part))
            except ValueError:
                raise click.BadParameter(f"{part!r} is not an integer") from None
    if not values:
        raise click.BadParameter(f"{text!r} holds no integers")
    return list(dict.fromkeys(values))


class _IntList(click.ParamType):
    name = "LIST"

    def convert(self, value, param, ctx):
        return value if isinstance(value, list) else parse_int_list(value)


INT_LIST = _IntList()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(probekit.__version__, prog_name="probekit")
def cli() -> None:
    """Probe what frozen vision backbones know, at which layer and which denoising step.

    \b
    Typical session:
      probekit extract --extractor tiny-mmdit-random --dataset shapeworld --split train \\
                       --timesteps 100,300,500,700 --layers 1,3 --limit 256 --out train.h5
      probekit extract ... --split test --limit 128 --out test.h5
      probekit probe --features train.h5 --eval-features test.h5 --task seg --timestep 300 --layer 1
      probekit report results/ --out report/
    Or run the whole chain on the embedded ShapeWorld default: probekit demo
    """


@cli.command("ls")
@click.argument("kind", required=False, type=click.Choice(["extractors", "datasets", "tasks", "heads"]))
def ls_command(kind: str | None) -> None:
    """List registered extractors, datasets, tasks and heads."""
    from probekit.registries import ALL

    for name, registry in ALL.items():
        if kind and name != kind:
            continue
        click.echo(click.style(f"{name}:", bold=True))
        for entry in registry.entries():
            click.echo(f"  {entry.name:<20} {entry.summary}")


@cli.command()
@click.option("--extractor", "-e", required=True, help="Registered extractor name (see `probekit ls extractors`).")
@click.option("--dataset", "-d", default="shapeworld", show_default=True, help="Registered dataset name.")
@click.option("--split", "-s", default="train", show_default=True, help="Dataset split.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Your copy of a benchmark dataset (default: $PROBEKIT_DATA/<dataset>); files must stay inside.")
@click.option("--image-size", type=int, default=None,
              help="Bring dataset images to this size (disk datasets: short side + centre crop; default: the "
                   "manifest's probe size).")
@click.option("--timesteps", "-t", type=INT_LIST, default="250,500,750", show_default=True,
              help="Timesteps in [0, 1000] (0 = clean image): '100,300' or '0:1000:250'.")
@click.option("--layers", "-l", type=INT_LIST, default="0", show_default=True,
              help="Block indices (0-based; FLUX counts double blocks then single blocks).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output HDF5 feature file.")
@click.option("--weights", "-w", default=None, help="Local diffusers folder or hub id (overrides the registry's).")
@click.option("--limit", type=int, default=None, help="Extract only the first N samples of the split.")
@click.option("--batch-size", "-b", type=int, default=8, show_default=True, help="Images per forward.")
@click.option("--device", default="auto", show_default=True, help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help="auto: bf16 on GPU, fp32 on CPU.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed (per-sample noise derives from it).")
@click.option("--ensemble", type=int, default=1, show_default=True, help="Average features over K noise draws.")
@click.option("--conditioning", type=click.Choice(["empty", "caption"]), default="empty", show_default=True,
              help="Text prompt: the empty prompt, or each sample's caption.")
@click.option("--resolution", type=int, default=None, help="Resize images to this square size before encoding.")
@click.option("--concept-attention", is_flag=True,
              help="Store concept-attention maps (MM-DiT only) instead of block features.")
@click.option("--concepts", default=None, help="Comma-separated concept words; default: the dataset's class names.")
@click.option("--concept-layers", type=INT_LIST, default=None,
              help="Joint blocks whose concept maps are averaged; default: every block with a text stream.")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Samples per committed shard: a killed run redoes at most one shard per worker (default: 64, "
                   "fewer for large maps, about 256 MB a shard).")
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="raise", show_default=True,
              help="A sample that cannot be loaded: stop (finished shards are kept), or skip it and record its id.")
@click.option("--part", default=None, metavar="I/N",
              help="Do only part I of N (0-based) as an independent job; join with `probekit merge OUT`. Under "
                   "torchrun the ranks split the work without it.")
@click.option("--pool", type=click.IntRange(min=1), default=None,
              help="Store each map average-pooled on the device to K tokens along its shorter side.")
@click.option("--channels", type=click.IntRange(min=1), default=None,
              help="Store each map projected to D channels by a fixed projection (see --projection).")
@click.option("--projection", type=click.Choice(["pca", "random"]), default="pca", show_default=True,
              help="pca: fitted on the first --fit-samples images of this run; random: seeded orthogonal.")
@click.option("--projection-from", type=click.Path(dir_okay=False), default=None,
              help="Reuse the channel projection stored in this feature file (the training split's) for val/test.")
@click.option("--fit-samples", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images whose tokens fit the PCA projection.")
@click.option("--store-dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default="float16",
              show_default=True, help="Stored precision; bfloat16 keeps float32's range (float16 overflows above "
                                      "65,504).")
@click.option("--dry-run", is_flag=True, help="Print the plan (maps, shapes, bytes, shards, free space) and exit.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file (or an interrupted run of it).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_friendly_errors
def extract(extractor, dataset, split, data_root, image_size, timesteps, layers, out, weights, limit, batch_size, device, dtype, seed,
            ensemble, conditioning, resolution, concept_attention, concepts, concept_layers, shard_size, on_error,
            part, pool, channels, projection, projection_from, fit_samples, store_dtype, dry_run, overwrite, quiet):
    """Extract per-timestep, per-layer features of a dataset split into an HDF5 feature file.

    Resumable: rerun the same command after an interruption. Distributed: `torchrun --nproc-per-node N -m
    probekit extract ...` (gloo on CPU, nccl on GPU; one GPU per rank).
    """
    from probekit.api import build_extractor
    from probekit.datasets import load_dataset
    from probekit.extractors.runner import extract_dataset
    from probekit.extractors.storage import StorageOptions
    from probekit.extractors.workers import device_for, from_environment

    storage = StorageOptions(pool=pool, channels=channels, projection=projection, projection_from=projection_from,
                             fit_samples=fit_samples, dtype=store_dtype, seed=seed)
    # A wrong dataset, split or data root fails before a large model is loaded.
    ds = load_dataset(dataset, split, root=data_root, image_size=image_size)
    try:
        workers = from_environment(device, part)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--part") from None
    device = device_for(workers, device)
    ex = build_extractor(extractor, weights=weights, timesteps=timesteps, layers=layers, seed=seed,
                         ensemble=ensemble, conditioning=conditioning, resolution=resolution, device=device,
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


@cli.group()
def data():
    """Benchmark datasets on disk: check a copy against its manifest."""


@data.command("check")
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Your copy of the dataset (default: $PROBEKIT_DATA/<dataset>).")
@click.option("--split", "splits", multiple=True, help="Check only this split (repeatable).")
@click.option("--limit", type=int, default=None, help="Decode only the first N samples per split (counts and "
              "pairing are always checked in full).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_friendly_errors
def data_check(name, root, splits, limit, quiet):
    """Verify a copy of dataset NAME: counts, readable files, label sizes and values, image/label pairing."""
    from probekit.datasets.check import check_dataset

    report = check_dataset(name, root, list(splits) or None, limit=limit, progress=not quiet)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--standalone", is_flag=True,
              help="Copy the data into OUT itself (one self-contained file) and remove OUT.parts/.")
@_friendly_errors
def merge(out, standalone):
    """Write the feature file OUT as an index over the shards in OUT.parts/ (after `probekit extract --part I/N`
    jobs); with --standalone, one self-contained file."""
    from probekit.extractors.runner import merge_parts

    click.echo(f"wrote {merge_parts(out, standalone=standalone, progress=True)}")


class _FloatList(click.ParamType):
    name = "FLOATS"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return [float(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)


class _IntListOption(click.ParamType):
    name = "INTS"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return parse_int_list(value)
        except click.BadParameter as exc:
            self.fail(str(exc.message), param, ctx)


@cli.command()
@click.option("--features", "-f", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="Feature file of the training split; repeat to combine backbones (samples aligned by id).")
@click.option("--eval-features", "-E", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="Feature file(s) of the held-out split the probe is scored on (same backbones, same order).")
@click.option("--val-features", "-V", multiple=True, type=click.Path(dir_okay=False),
              help="Feature file(s) of the validation split (learning-rate selection); default: a seeded 15% of "
                   "the training file.")
@click.option("--guidance", type=click.Path(dir_okay=False), default=None,
              help="Concept-attention maps of the training split, appended as extra input channels.")
@click.option("--eval-guidance", type=click.Path(dir_okay=False), default=None,
              help="Concept-attention maps of the evaluation split (with --guidance).")
@click.option("--val-guidance", type=click.Path(dir_okay=False), default=None,
              help="Concept-attention maps of the validation split (with --guidance and --val-features).")
@click.option("--task", default="seg", show_default=True, help="seg | saliency | depth (see `probekit ls tasks`).")
@click.option("--fusion", default="single", show_default=True, help="single | concat | global | spatial "
              "(see `probekit ls fusions`).")
@click.option("--head", default="linear", show_default=True, help="linear | conv | deeplab | dpt.")
@click.option("--timestep", type=int, default=None, help="Timestep of the feature map (single fusion).")
@click.option("--layer", type=int, default=None, help="Layer of the feature map (single fusion).")
@click.option("--grid", is_flag=True, help="Run the ablation grid: every single map, then concat, global, spatial.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Run directory; default results/<extractor>/<dataset>/<task>/<probe>.")
@click.option("--results-root", default="results", show_default=True, help="Root of the default run directories.")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULT_EPOCHS, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--lrs", type=_FloatList(), default=",".join(f"{x:g}" for x in DEFAULT_LRS), show_default=True,
              help="Learning rates swept per seed; the best on validation is kept (a choice at either end of the "
                   "grid is flagged in the record).")
@click.option("--fusion-lr", type=float, default=DEFAULT_FUSION_LR, show_default=True,
              help="Learning rate of the fusion weights (their own group, no weight decay).")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--fusion-dim", type=click.IntRange(min=1), default=None,
              help="Project every fused map to this many channels (default: the maps' own width when they agree).")
@click.option("--depth-output", type=click.Choice(["bins", "regression"]), default="bins", show_default=True)
@click.option("--eval-crop", type=_FloatList(), default=None,
              help="Depth evaluation crop as TOP,BOTTOM,LEFT,RIGHT fractions of the image (e.g. an Eigen-style crop).")
@click.option("--seeds", type=_IntListOption(), default="0", show_default=True,
              help="Seeds of initialisation and shuffling, e.g. 0,1,2: the record holds mean ± std over them. The "
                   "validation slice follows the first seed.")
@click.option("--device", default="auto", show_default=True, help="auto (the GPU when there is one), cpu, cuda, ...")
@click.option("--cross-dataset", is_flag=True,
              help="Allow training and evaluation features from different datasets with the same classes "
                   "(e.g. train on generated data, test on real).")
@click.option("--overwrite", "overwrite_mode", flag_value="overwrite", help="Replace an existing result.")
@click.option("--skip-existing", "overwrite_mode", flag_value="skip", help="Keep an existing result, skip the run.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
@_friendly_errors
def probe(ctx, features, eval_features, val_features, guidance, eval_guidance, val_guidance, task, fusion, head,
          timestep, layer, grid, out, results_root, epochs, batch_size, lrs, fusion_lr, weight_decay, fusion_dim,
          depth_output, eval_crop, seeds, device, cross_dataset, overwrite_mode, quiet):
    """Train probe heads on frozen features, select on validation, score on held-out features."""
    from probekit import scores

    features, eval_features = list(features), list(eval_features)
    val_features = list(val_features) or None
    config = dict(task=task, head=head, epochs=epochs, batch_size=batch_size, lrs=lrs, fusion_lr=fusion_lr,
                  weight_decay=weight_decay, fusion_dim=fusion_dim, depth_output=depth_output, seeds=seeds,
                  device=device, cross_dataset=cross_dataset, eval_crop=eval_crop, guidance=guidance,
                  eval_guidance=eval_guidance, val_guidance=val_guidance)
    if grid:
        from probekit.probes.grid import run_grid

        if out:
            raise click.UsageError("--grid writes one run per cell under --results-root; drop --out")
        for name in ("fusion", "timestep", "layer"):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(f"--grid runs every map and every fusion; drop --{name}")
        run_grid(features, eval_features, val_features=val_features, results_root=results_root,
                 overwrite=overwrite_mode or "skip", progress=not quiet, echo=click.echo, **config)
        return
    from probekit.probes.trainer import train_probe

    record = train_probe(features, eval_features, val_features=val_features, timestep=timestep, layer=layer,
                         out=out, results_root=results_root, overwrite=overwrite_mode or "error",
                         progress=not quiet, fusion=fusion, **config)
    if record is None:
        click.echo("skipped: a result already exists (--skip-existing)")
        return
    unit = scores.info(record["main_score_name"], record)["unit"]
    click.echo(f"{record['task']} {record['main_score_name']} = "
               f"{scores.format_score(record['main_score'], unit, record.get('main_score_std'))}  "
               f"({record['probe']['name']}, lr {record['config']['selected_lr']:g}"
               f"{', ' + str(len(record['seeds'])) + ' seeds' if len(record['seeds']) > 1 else ''}) -> "
               f"{record['_path']}")
    for note in record.get("notes", []):
        click.secho(f"note: {note}", fg="yellow", err=True)


@cli.command()
@click.option("--features", "-f", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Concept-attention feature file (probekit extract --concept-attention).")
@click.option("--mode", type=click.Choice(["output", "cross"]), default="output", show_default=True,
              help="ConceptAttention output-space maps, or the cross-attention baseline.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None)
@click.option("--results-root", default="results", show_default=True)
@click.option("--overwrite", "overwrite_mode", flag_value="overwrite", help="Replace an existing result.")
@_friendly_errors
def zeroshot(features, mode, out, results_root, overwrite_mode):
    """Zero-shot segmentation: argmax over concept maps (one concept per class), scored with the seg metrics."""
    from probekit.probes.zeroshot import zero_shot_segmentation

    record = zero_shot_segmentation(features, mode=mode, out=out, results_root=results_root,
                                    overwrite=overwrite_mode or "error")
    click.echo(f"zero-shot seg mIoU = {100 * record['main_score']:.2f} ({mode}) -> {record['_path']}")


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Directory for the report.")
@click.option("--concepts", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Concept-attention feature file(s) to draw as concept-map grids.")
@click.option("--skip-invalid", is_flag=True, help="Leave out unreadable result.json files (named in the report).")
@_friendly_errors
def report(runs, out, concepts, skip_invalid):
    """Tables, leaderboard, figures (PNG + PDF) and one self-contained HTML page from the result records
    under RUNS (searched recursively)."""
    from probekit.reports.report import write_report

    written = write_report(list(runs), out, list(concepts), skip_invalid=skip_invalid)
    click.echo(written["markdown"].read_text())
    click.echo(f"{written['records'].summary()}")
    click.echo(f"{written['rows']} runs -> {written['markdown']}, {written['csv']}, {written['leaderboard']}, "
               f"{len(written['figures'])} figures, {written['html']}")


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex", "html"]), default="md", show_default=True)
@click.option("--secondary", is_flag=True, help="Add secondary metrics (pixel acc, MAE, S-measure, AbsRel, ...).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Write to a file, not stdout.")
@click.option("--skip-invalid", is_flag=True, help="Leave out unreadable result.json files (named on stderr).")
@_friendly_errors
def leaderboard(results, fmt, secondary, out, skip_invalid):
    """One row per (extractor, fusion, head), one column per task's main metric, best marked, ranked."""
    from probekit.reports.tables import leaderboard as build

    body, recset = build(list(results), fmt=fmt, secondary=secondary, skip_invalid=skip_invalid)
    if out:
        from pathlib import Path

        Path(out).write_text(body)
        click.echo(f"{recset.summary()} -> {out}")
    else:
        click.echo(body)
        click.echo(recset.summary(), err=True)


@cli.command()
@click.option("--out", "-o", default="probekit-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--n-train", type=int, default=256, show_default=True, help="ShapeWorld training images.")
@click.option("--n-test", type=int, default=128, show_default=True, help="ShapeWorld test images.")
@click.option("--timesteps", type=INT_LIST, default="50,250,500,750", show_default=True)
@click.option("--layers", type=INT_LIST, default="2,4", show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--control/--no-control", default=True, show_default=True,
              help="Also probe the same architecture with random weights, for contrast.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@_friendly_errors
def demo(out, n_train, n_test, timesteps, layers, epochs, seed, control, quiet):
    """The main job on the embedded default: ShapeWorld -> extract the shipped ShapeWorld MM-DiT ->
    probe every (t, layer) -> report."""
    from probekit.pipelines.demo import run_demo

    run_demo(out, n_train=n_train, n_test=n_test, timesteps=timesteps, layers=layers, epochs=epochs, seed=seed,
             control=control, progress=not quiet, echo=click.echo)


@cli.command("train-backbone")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Run directory: checkpoint, train_log.csv, and the exported model in OUT/model.")
@click.option("--steps", type=int, default=3000, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (warm-up, then cosine).")
@click.option("--caption-dropout", type=float, default=0.1, show_default=True,
              help="Probability of training on the empty prompt (for classifier-free guidance).")
@click.option("--shift", type=float, default=1.0, show_default=True,
              help="Timestep shift of the noise levels (SD3); written to the scheduler so sampling matches.")
@click.option("--prediction", type=click.Choice(["velocity", "sample"]), default="velocity", show_default=True,
              help="Network output: the velocity eps - x0 (SD3) or the clean image (velocity derived from it).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: bfloat16 autocast for forward/backward (faster on CPUs with AVX512-BF16).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds initialisation, data order and noise.")
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@click.option("--export-every", type=int, default=0, show_default=True,
              help="Also export the EMA weights every N steps to OUT/model-stepN (0: only at the end).")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N; the recipe is the same.")
@click.option("--workers", type=int, default=0, show_default=True,
              help="Processes rendering the training images (0: in the training process). Same images, same "
                   "order; use it on a GPU, where rendering would otherwise be the bottleneck.")
@click.option("--scene", "scene_items", multiple=True, metavar="KEY=LOW,HIGH",
              help="Override a ShapeWorld scene range for the training images, e.g. objects_per_image=1,2 or "
                   "object_distance_m=2.5,6 (repeatable).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_friendly_errors
def train_backbone_command(out, steps, batch_size, lr, caption_dropout, shift, prediction, precision, seed,
                           checkpoint_every, export_every, threads, device, workers, scene_items, quiet):
    """Train the ShapeWorld MM-DiT (rectified flow, SD3 architecture); rerun the same command to resume."""
    from probekit.backbone.train import train_backbone

    train_backbone(out, steps=steps, batch_size=batch_size, lr=lr, caption_dropout=caption_dropout, shift=shift,
                   prediction=prediction, precision=precision, seed=seed, checkpoint_every=checkpoint_every,
                   export_every=export_every, threads=threads, device=device, workers=workers,
                   scene=_scene_option(scene_items), progress=not quiet, log=click.echo)


def _scene_option(items) -> dict | None:
    """``("objects_per_image=1,2",)`` -> ``{"objects_per_image": ["1", "2"]}`` (ShapeWorld checks the values)."""
    scene = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise ProbekitError(f"--scene expects KEY=LOW,HIGH, got {item!r}")
        scene[key.strip()] = value.split(",")
    return scene or None


def _generator_weights(backbone: str, weights: str | None):
    """The model folder to sample from: --weights, the registry's weights, or the shipped ShapeWorld MM-DiT."""
    from probekit.registries import EXTRACTORS

    folder = weights or EXTRACTORS.get(backbone).kwargs.get("weights")
    if folder is None:
        if backbone != "shapeworld-mmdit":
            raise ProbekitError(f"{backbone!r} has no default weights for sampling; pass --weights")
        from probekit.backbone.model import shipped_weights

        folder = shipped_weights()
    return folder


@cli.command()
@click.option("--backbone", "-b", default="shapeworld-mmdit", show_default=True,
              help="Registered flow-matching MM-DiT with a text encoder (or use --weights).")
@click.option("--weights", "-w", default=None, help="Model folder (overrides the backbone's shipped weights).")
@click.option("--prompt", "-p", "prompts", multiple=True, required=True,
              help="Prompt; repeat for several (cycled over --n images).")
@click.option("--n", type=int, default=16, show_default=True, help="Number of images.")
@click.option("--steps", type=int, default=30, show_default=True, help="Euler steps.")
@click.option("--guidance", type=float, default=4.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds each image's initial noise.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output PNG grid.")
@_friendly_errors
def sample(backbone, weights, prompts, n, steps, guidance, seed, device, out):
    """Sample images from the backbone with its own sampler and save them as a grid."""
    from probekit.backbone.sampling import FlowSampler, image_grid

    sampler = FlowSampler(_generator_weights(backbone, weights), device=device)
    images = sampler.sample([prompts[i % len(prompts)] for i in range(n)], steps=steps, guidance=guidance, seed=seed)
    image_grid(images).save(out)
    click.echo(f"wrote {n} samples ({steps} steps, guidance {guidance}, seed {seed}) -> {out}")


@cli.command()
@click.option("--backbone", "-b", default="shapeworld-mmdit", show_default=True,
              help="Flow-matching MM-DiT with a text encoder (or --weights).")
@click.option("--weights", "-w", default=None, help="Model folder (overrides the backbone's shipped weights).")
@click.option("--heads", "-H", "heads", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="Probe run directory (seg, saliency and/or depth); repeat for several.")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text file, one prompt per line.")
@click.option("--n", type=int, default=None, help="Number of images (prompts drawn in ShapeWorld's caption grammar).")
@click.option("--steps", type=int, default=30, show_default=True)
@click.option("--guidance", type=float, default=4.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Dataset folder to write.")
@click.option("--quiet", "-q", is_flag=True)
@_friendly_errors
def generate(backbone, weights, heads, prompts, n, steps, guidance, seed, batch_size, device, out, quiet):
    """Sample images and label them with trained heads from the trajectory's own block outputs; rerun to resume."""
    from probekit.pipelines.generate import generate_dataset

    if (prompts is None) == (n is None):
        raise click.UsageError("give exactly one of --prompts FILE and --n N")
    weights = _generator_weights(backbone, weights)
    lines = None
    if prompts:
        with open(prompts) as fh:
            lines = [line.strip() for line in fh if line.strip()]
    summary = generate_dataset(weights, list(heads), out, prompts=lines, n=n, steps=steps, guidance=guidance,
                               seed=seed, batch_size=batch_size, device=device, progress=not quiet)
    click.echo(f"generated {summary['generated']} images ({summary['skipped']} already there) in "
               f"{summary['wall_time_s']:.1f} s: {summary['images_per_second']:.2f} images/s -> {summary['out']}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(prog_name="probekit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
