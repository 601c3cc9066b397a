"""`probekit probe` and `probekit zeroshot`."""

from __future__ import annotations

import click

from probekit.cli import options as opt
from probekit.extractors.dit_family import SITE_MEANINGS  # imports no torch
from probekit.probes.config import (DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_FUSION_LR, DEFAULT_LRS,
                                   DEFAULT_OWN_LOSS_WEIGHTS, DEPTH_LOSSES)


@click.command()
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
@click.option("--fusion", default="single", show_default=True,
              help="single | concat | global | spatial (see `probekit ls fusions`).")
@click.option("--head", default="linear", show_default=True, help="linear | conv | deeplab | dpt.")
@click.option("--timestep", type=int, default=None, help="Timestep of the feature map (single fusion).")
@click.option("--layer", type=int, default=None, help="Layer of the feature map (single fusion).")
@click.option("--site", type=click.Choice(list(SITE_MEANINGS)), default=None,
              help="DiT capture site: of the map (single fusion, default output), or the only site a fused probe "
                   "reads (default: every map of the file, so fusion spans sites and timesteps).")
@click.option("--grid", is_flag=True, help="Run the ablation grid: every single map, then concat, global, spatial.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Run directory; default results/<extractor>/<dataset>/<task>/<probe>.")
@click.option("--results-root", default="results", show_default=True, help="Root of the default run directories.")
@click.option("--epochs", type=opt.POSITIVE, default=DEFAULT_EPOCHS, show_default=True)
@click.option("--batch-size", type=opt.POSITIVE, default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--lrs", type=opt.FloatList(positive=True), default=",".join(f"{x:g}" for x in DEFAULT_LRS),
              show_default=True, help="Learning rates swept per seed; the best on validation is kept (a choice at "
                                      "either end of the grid is flagged in the record).")
@click.option("--fusion-lr", type=opt.FiniteFloat(min=0.0), default=DEFAULT_FUSION_LR, show_default=True,
              help="Learning rate of the fusion weights (their own group, constant, no weight decay).")
@click.option("--weight-decay", type=opt.FiniteFloat(min=0.0), default=1e-4, show_default=True)
@click.option("--fusion-dim", type=opt.POSITIVE, default=None,
              help="Project every fused map to this many channels (default: the maps' own width when they agree).")
@click.option("--fusion-level", type=click.Choice(["auto", "predictions", "features"]), default="auto",
              show_default=True,
              help="What global/spatial weights mix: each map's own prediction (one linear read-out per map, each "
                   "also trained on its own loss) or the maps, read by one head. auto: predictions for the linear "
                   "head, features for the decoder heads.")
@click.option("--own-loss-weights", type=opt.FloatList(), show_default=True,
              default=",".join(f"{x:g}" for x in DEFAULT_OWN_LOSS_WEIGHTS),
              help="Prediction level: weights of the read-outs' own losses beside the mixed prediction's loss, "
                   "chosen on validation (the first with every learning rate, the others at the rate it chose). "
                   "Higher keeps each read-out closer to its map's own probe.")
@click.option("--depth-output", type=click.Choice(["bins", "regression"]), default="bins", show_default=True)
@click.option("--depth-loss", type=click.Choice(DEPTH_LOSSES), default=DEPTH_LOSSES[0], show_default=True,
              help="Depth training loss: SigLoss (scale-invariant, in log space) plus the RMSE over the mean depth, "
                   "or SigLoss alone. The RMSE score weighs far pixels by their depth squared; the log loss alone "
                   "does not.")
@click.option("--eval-crop", type=opt.FloatList(), default=None,
              help="Depth evaluation crop as TOP,BOTTOM,LEFT,RIGHT fractions of the image (e.g. an Eigen-style crop).")
@click.option("--seeds", type=opt.INT_LIST, default="0", show_default=True,
              help="Seeds of initialisation and shuffling, e.g. 0,1,2: the record holds mean ± std over them. The "
                   "validation slice follows the first seed.")
@opt.device()
@click.option("--cross-dataset", is_flag=True,
              help="Allow training and evaluation features from different datasets with the same classes "
                   "(e.g. train on generated data, test on real).")
@opt.overwrite_modes
@opt.quiet
@click.pass_context
@opt.friendly_errors
def probe(ctx, features, eval_features, val_features, guidance, eval_guidance, val_guidance, task, fusion, head,
          timestep, layer, site, grid, out, results_root, epochs, batch_size, lrs, fusion_lr, weight_decay, fusion_dim,
          fusion_level, own_loss_weights, depth_output, depth_loss, eval_crop, seeds, device, cross_dataset,
          overwrite_mode, quiet):
    """Train probe heads on frozen features, select on validation, score on held-out features."""
    from probekit import scores

    features, eval_features = list(features), list(eval_features)
    val_features = list(val_features) or None
    config = dict(task=task, head=head, epochs=epochs, batch_size=batch_size, lrs=lrs, fusion_lr=fusion_lr,
                  weight_decay=weight_decay, fusion_dim=fusion_dim, fusion_level=fusion_level,
                  own_loss_weights=own_loss_weights, depth_output=depth_output, depth_loss=depth_loss, seeds=seeds,
                  device=device, cross_dataset=cross_dataset, eval_crop=eval_crop, guidance=guidance,
                  eval_guidance=eval_guidance, val_guidance=val_guidance)
    if grid:
        from probekit.probes.grid import run_grid

        if out:
            raise click.UsageError("--grid writes one run per cell under --results-root; drop --out")
        for name in ("fusion", "timestep", "layer"):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(f"--grid runs every map and every fusion; drop --{name}")
        run_grid(features, eval_features, val_features=val_features, results_root=results_root, site=site,
                 overwrite=overwrite_mode or "skip", progress=not quiet, echo=click.echo, **config)
        return
    from probekit.probes.trainer import train_probe

    record = train_probe(features, eval_features, val_features=val_features, timestep=timestep, layer=layer,
                         site=site, out=out, results_root=results_root, overwrite=overwrite_mode or "error",
                         progress=not quiet, fusion=fusion, **config)
    if record is None:
        click.echo("skipped: a result already exists (--skip-existing)")
        return
    unit = scores.info(record["main_score_name"], record)["unit"]
    seeds_note = f", {len(record['seeds'])} seeds" if len(record["seeds"]) > 1 else ""
    own = record["config"].get("selected_own_loss_weight")
    own_note = f", own-loss weight {own:g}" if own is not None else ""
    click.echo(f"{record['task']} {record['main_score_name']} = "
               f"{scores.format_score(record['main_score'], unit, record.get('main_score_std'))}  "
               f"({record['probe']['name']}, lr {record['config']['selected_lr']:g}{own_note}{seeds_note}) -> "
               f"{record['_path']}")
    for note in record.get("notes", []):
        click.secho(f"note: {note}", fg="yellow", err=True)


@click.command()
@click.option("--features", "-f", required=True, type=click.Path(dir_okay=False),
              help="Concept-attention feature file (probekit extract --concept-attention).")
@click.option("--mode", type=click.Choice(["output", "cross"]), default="output", show_default=True,
              help="ConceptAttention output-space maps, or the cross-attention baseline.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None)
@click.option("--results-root", default="results", show_default=True)
@click.option("--overwrite", "overwrite_mode", flag_value="overwrite", help="Replace an existing result.")
@opt.friendly_errors
def zeroshot(features, mode, out, results_root, overwrite_mode):
    """Zero-shot segmentation: argmax over concept maps (one concept per class), scored with the seg metrics."""
    from probekit.probes.zeroshot import zero_shot_segmentation

    record = zero_shot_segmentation(features, mode=mode, out=out, results_root=results_root,
                                    overwrite=overwrite_mode or "error")
    from probekit import scores

    shown = scores.format_score(record["main_score"], scores.info(record["main_score_name"], record)["unit"])
    click.echo(f"zero-shot seg {record['main_score_name']} = {shown} ({mode}) -> {record['_path']}")
