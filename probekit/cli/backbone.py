"""The backbone lab's commands: `probekit train-backbone`, `probekit sample`, `probekit generate`."""

from __future__ import annotations

from pathlib import Path

import click

from probekit.cli import options as opt
from probekit.errors import ProbekitError


@click.command("train-backbone")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Run directory: checkpoint, train_log.csv, and the exported model in OUT/model.")
@click.option("--steps", type=opt.POSITIVE, default=3000, show_default=True)
@click.option("--batch-size", type=opt.POSITIVE, default=32, show_default=True)
@click.option("--lr", type=opt.FiniteFloat(min=0.0), default=1e-3, show_default=True,
              help="Peak learning rate (warm-up, then cosine).")
@click.option("--caption-dropout", type=click.FloatRange(0.0, 1.0), default=0.1, show_default=True,
              help="Probability of training on the empty prompt (for classifier-free guidance).")
@click.option("--shift", type=opt.FiniteFloat(min=0.0), default=1.0, show_default=True,
              help="Timestep shift of the noise levels (SD3); written to the scheduler so sampling matches.")
@click.option("--prediction", type=click.Choice(["velocity", "sample"]), default="velocity", show_default=True,
              help="Network output: the velocity eps - x0 (SD3) or the clean image (velocity derived from it).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: bfloat16 autocast for forward/backward (faster on CPUs with AVX512-BF16).")
@opt.seed("Seeds initialisation, data order and noise.")
@click.option("--checkpoint-every", type=opt.POSITIVE, default=100, show_default=True)
@click.option("--export-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also export the EMA weights every N steps to OUT/model-stepN (0: only at the end).")
@opt.device("cpu")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes rendering the training images (0: in the training process), and building the "
                   "image cache with --cache. Same images, same order; use it on a GPU, where rendering would "
                   "otherwise be the bottleneck.")
@click.option("--scene", "scene_items", multiple=True, metavar="KEY=LOW,HIGH",
              help="Override a ShapeWorld scene range for the training images, e.g. objects_per_image=1,2 or "
                   "object_distance_m=2.5,6 (repeatable).")
@click.option("--width", type=opt.POSITIVE, default=None,
              help="Transformer width (a multiple of 32, the head size; shipped default 128).")
@click.option("--depth", type=opt.POSITIVE, default=None, help="Joint transformer blocks (shipped default 6).")
@click.option("--patch-size", type=click.Choice(["1", "2", "4", "8"]), default=None,
              help="Pixels per token side (shipped default 4: 16x16 tokens).")
@click.option("--cache/--no-cache", default=False, show_default=True,
              help="Render the training images once into a memory-mapped cache ($PROBEKIT_CACHE) and train from "
                   "it: same images, same order; for a GPU, where rendering bounds the step.")
@click.option("--compile", "compile_", is_flag=True, help="Run the transformer through torch.compile.")
@opt.quiet
@click.pass_context
@opt.friendly_errors
def train_backbone(ctx, out, steps, batch_size, lr, caption_dropout, shift, prediction, precision, seed,
                   checkpoint_every, export_every, device, workers, scene_items, width, depth, patch_size, cache,
                   compile_, quiet):
    """Train the ShapeWorld MM-DiT (rectified flow, SD3 architecture); rerun the same command to resume."""
    from probekit.backbone.model import architecture
    from probekit.backbone.train import train_backbone as train

    try:
        overrides = architecture(width, depth, int(patch_size) if patch_size else None)
    except ValueError as e:
        raise ProbekitError(str(e)) from None

    train(out, steps=steps, batch_size=batch_size, lr=lr, caption_dropout=caption_dropout, shift=shift,
          prediction=prediction, precision=precision, seed=seed, checkpoint_every=checkpoint_every,
          export_every=export_every, threads=ctx.obj.get("threads") if ctx.obj else None, device=device,
          workers=workers, scene=_scene_option(scene_items), config_overrides=overrides or None, cache=cache,
          compile=compile_, progress=not quiet,
          log=click.echo)


def _scene_option(items) -> dict | None:
    """``("objects_per_image=1,2",)`` -> ``{"objects_per_image": ["1", "2"]}`` (ShapeWorld checks the values)."""
    scene = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise ProbekitError(f"--scene expects KEY=LOW,HIGH, got {item!r}")
        scene[key.strip()] = value.split(",")
    return scene or None


def generator_weights(backbone: str, weights: str | None) -> Path:
    """The model folder to sample from: --weights, or the registered backbone's (the shipped ShapeWorld MM-DiT);
    refused before anything loads when it is not a text-to-image folder probekit can sample from."""
    from probekit.registries import EXTRACTORS

    entry = EXTRACTORS.get(backbone)
    if weights is None:
        if backbone == "shapeworld-mmdit":
            from probekit.backbone.model import shipped_weights

            weights = shipped_weights()
        elif not entry.target.endswith(":DiffusersDiTExtractor") or "weights" not in entry.kwargs:
            raise ProbekitError(f"{backbone!r} is not a text-to-image model probekit can sample from: sampling "
                                "needs a flow-matching MM-DiT folder (transformer/, text_encoder/, tokenizer/, "
                                "scheduler/), the shipped shapeworld-mmdit or --weights FOLDER")
        else:
            weights = entry.kwargs["weights"]
    folder = Path(weights)
    missing = [p for p in ("transformer", "text_encoder", "tokenizer", "scheduler") if not (folder / p).is_dir()]
    if missing:
        raise ProbekitError(f"{folder} is not a model folder probekit can sample from (no {', '.join(missing)}/); "
                            "sampling needs transformer/, text_encoder/, tokenizer/ and scheduler/")
    return folder


def _image_suffix(out: str) -> None:
    from PIL import Image

    suffix = Path(out).suffix.lower()
    if suffix not in Image.registered_extensions():
        raise click.BadParameter(f"{out}: {suffix or 'no extension'} is not an image format (use .png or .jpg)",
                                 param_hint="--out")


@click.command()
@click.option("--backbone", "-b", default="shapeworld-mmdit", show_default=True,
              help="Registered flow-matching MM-DiT with a text encoder (or use --weights).")
@opt.weights("Model folder (overrides the backbone's shipped weights).")
@click.option("--prompt", "-p", "prompts", multiple=True, required=True,
              help="Prompt; repeat for several (cycled over --n images).")
@click.option("--n", type=opt.POSITIVE, default=16, show_default=True, help="Number of images.")
@click.option("--steps", type=opt.POSITIVE, default=30, show_default=True, help="Euler steps.")
@click.option("--guidance", type=opt.FiniteFloat(), default=4.0, show_default=True,
              help="Classifier-free guidance scale.")
@opt.seed("Seeds each image's initial noise.")
@opt.device("cpu")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output image grid (.png, .jpg).")
@opt.friendly_errors
def sample(backbone, weights, prompts, n, steps, guidance, seed, device, out):
    """Sample images from the backbone with its own sampler and save them as a grid."""
    from probekit.atomic import atomic_path, check_writable_dir

    _image_suffix(out)
    folder = generator_weights(backbone, weights)
    check_writable_dir(out, "--out", parent=True)
    from probekit.backbone.sampling import FlowSampler, image_grid

    sampler = FlowSampler(folder, device=device)
    images = sampler.sample([prompts[i % len(prompts)] for i in range(n)], steps=steps, guidance=guidance, seed=seed)
    with atomic_path(out) as tmp:
        image_grid(images).save(tmp, format=None if tmp.suffix else "PNG")
    click.echo(f"wrote {n} samples ({steps} steps, guidance {guidance}, seed {seed}) -> {out}")


@click.command()
@click.option("--backbone", "-b", default="shapeworld-mmdit", show_default=True,
              help="Flow-matching MM-DiT with a text encoder (or --weights).")
@opt.weights("Model folder (overrides the backbone's shipped weights).")
@click.option("--heads", "-H", "heads", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="Probe run directory (seg, saliency and/or depth); repeat for several.")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text file, one prompt per line.")
@click.option("--n", type=opt.POSITIVE, default=None,
              help="Number of images (prompts drawn in ShapeWorld's caption grammar).")
@click.option("--steps", type=opt.POSITIVE, default=30, show_default=True)
@click.option("--guidance", type=opt.FiniteFloat(), default=4.0, show_default=True)
@opt.seed("Seeds each image's initial noise.")
@click.option("--batch-size", type=opt.POSITIVE, default=8, show_default=True)
@opt.device("cpu")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Dataset folder to write.")
@opt.quiet
@opt.friendly_errors
def generate(backbone, weights, heads, prompts, n, steps, guidance, seed, batch_size, device, out, quiet):
    """Sample images and label them with trained heads from the trajectory's own block outputs; rerun to resume."""
    from probekit.atomic import check_writable_dir

    if (prompts is None) == (n is None):
        raise click.UsageError("give exactly one of --prompts FILE and --n N")
    folder = generator_weights(backbone, weights)
    check_writable_dir(out, "--out")
    lines = None
    if prompts:
        with open(prompts) as fh:
            lines = [line.strip() for line in fh if line.strip()]
    from probekit.pipelines.generate import generate_dataset

    summary = generate_dataset(folder, list(heads), out, prompts=lines, n=n, steps=steps, guidance=guidance,
                               seed=seed, batch_size=batch_size, device=device, progress=not quiet)
    click.echo(f"generated {summary['generated']} images ({summary['skipped']} already there) in "
               f"{summary['wall_time_s']:.1f} s: {summary['images_per_second']:.2f} images/s -> {summary['out']}")
