"""Regenerate the figures and numbers of docs/backbones/shapeworld-mmdit.md.

    python docs/backbones/make_figures.py --run build/shapeworld-mmdit-run

--run is the training run directory (it holds train_log.csv, and model-stepN exports if trained with
--export-every); the model evaluated is the shipped one. --compare NAME=FOLDER adds other models (earlier
recipes) to the prompt-fidelity table. Writes loss_curve.png, denoising_loss.png, samples.png,
reconstructions.png, numbers.json and the model card shapeworld-mmdit.md (from shapeworld-mmdit.md.in)
beside this script.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from probekit.backbone.prompt_sensitivity import prompt_sensitivity  # noqa: E402
from probekit.backbone.judge import judge_real_images, prompt_fidelity  # noqa: E402
from probekit.backbone.sampling import FlowSampler, image_grid  # noqa: E402
from probekit.backbone.model import random_folder, shipped_weights  # noqa: E402
from probekit.backbone.train import denoising_loss_per_timestep  # noqa: E402

HERE = Path(__file__).resolve().parent
PROMPTS = [
    "a red circle", "a blue square", "a green triangle", "a yellow star",
    "a purple ring", "an orange cross", "a white striped circle", "a cyan dotted square",
    "a red circle in front of a blue square", "a green star in front of a yellow ring",
    "a blue triangle in front of an orange cross", "a purple dotted square in front of a white circle",
]


def loss_curve(run: Path) -> None:
    with open(run / "train_log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    batch = json.loads((shipped_weights() / "training_info.json").read_text())["recipe"]["batch_size"]
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    window = 50
    smooth = [sum(loss[max(0, i - window + 1):i + 1]) / len(loss[max(0, i - window + 1):i + 1]) for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot(steps, loss, color="#bbbbbb", lw=0.6, label="per step")
    ax.plot(steps, smooth, color="#0072B2", lw=1.5, label=f"mean of {window} steps")
    ax.set(xlabel=f"training step (batch {batch})", ylabel="velocity MSE", yscale="log", title="Training loss")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(HERE / "loss_curve.png", dpi=150)


def denoising(n: int) -> dict:
    timesteps = tuple(range(50, 1000, 100))
    trained = denoising_loss_per_timestep(shipped_weights(), timesteps=timesteps, n=n)
    control = denoising_loss_per_timestep(random_folder(), timesteps=timesteps, n=n)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot(list(trained), list(trained.values()), "o-", color="#0072B2", label="shapeworld-mmdit")
    ax.plot(list(control), list(control.values()), "s--", color="#D55E00", label="random init (control)")
    ax.set(xlabel="timestep t (0 = clean)", ylabel="held-out velocity MSE", yscale="log",
           title=f"Denoising loss, ShapeWorld test (n={n})")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(HERE / "denoising_loss.png", dpi=150)
    return {"n": n, "trained": trained, "control": control}


def samples(seed: int) -> None:
    images = FlowSampler(shipped_weights()).sample(PROMPTS, steps=30, guidance=4.0, seed=seed)
    image_grid(images, columns=4, scale=3).save(HERE / "samples.png")


def fidelity(run: Path, compare: list[str], export_rows: bool = True) -> dict:
    """Judge samples of single-object prompts: the shipped model, its exports along training, the random
    control and any --compare models; plus the judge's own accuracy on real images."""
    models = [("random init (control)", random_folder())]
    exports = sorted(run.glob("model-step*"), key=lambda p: int(p.name.removeprefix("model-step")))
    for export in exports if export_rows else []:
        models.append((f"this recipe, step {export.name.removeprefix('model-step')}", export))
    recipe = json.loads((shipped_weights() / "training_info.json").read_text())["recipe"]
    models.append((f"shipped: {recipe_label(recipe)} (shipped)", shipped_weights()))
    for item in compare:
        name, _, folder = item.partition("=")
        models.append((name, Path(folder)))
    rows = []
    for name, folder in models:
        steps, images = training_amount(folder)
        summary = prompt_fidelity(folder)
        sensitivity = prompt_sensitivity(folder)
        rows.append({"model": name, "steps": steps, "images_seen": images, "colour_found": summary["colour_found"],
                     "shape_accuracy": summary["shape_accuracy"], "n": summary["n"],
                     "per_shape": summary["per_shape"], "settings": summary["settings"],
                     "shape_gain": {s: v["shape_gain"] for s, v in sensitivity["noise_levels"].items()},
                     "text_gain": {s: v["text_gain"] for s, v in sensitivity["noise_levels"].items()},
                     "sensitivity_n": sensitivity["n"]})
        print(f"{name}: colour {summary['colour_found']:.3f} shape {summary['shape_accuracy']:.3f} "
              f"shape-word gain {rows[-1]['shape_gain']}", flush=True)
    return {"judge_on_real_images": judge_real_images(), "models": rows}


def recipe_label(recipe: dict) -> str:
    """A short name of a training recipe for the tables: the settings the recipes measured here differ in."""
    words = [f"shift {recipe['shift']:g}", f"lr {recipe['lr']:g}", recipe.get("precision", "fp32")]
    if recipe.get("batch_size", 32) != 32:
        words.append(f"batch {recipe['batch_size']}")
    if recipe.get("scene"):
        words.append("scene " + " ".join(f"{k}={lo:g},{hi:g}" for k, (lo, hi) in recipe["scene"].items()))
    return ", ".join(words + [f"{recipe['steps']:,} steps"])


def with_earlier_rows(fid: dict) -> dict:
    """Keep the prompt-fidelity rows of models measured by an earlier run of this script and not measured now
    (their folders are gone once a recipe is replaced): the table goes on comparing every recipe tried. A row
    that was the shipped model then is relabelled as the previous default (and the default before it as an
    earlier one); a row whose measurement equals one made now is the same model under a new name (a recipe that
    became the shipped one) and is left out."""
    path = HERE / "numbers.json"
    if not path.is_file():
        return fid
    names = {row["model"] for row in fid["models"]}
    measured = {_measurement(row) for row in fid["models"]}
    earlier = []
    rows = json.loads(path.read_text())["fidelity"]["models"]
    # A new default was shipped since: the row then shipped was measured, but is not among today's rows.
    replaced = any(r["model"].endswith(" (shipped)") and _measurement(r) not in measured for r in rows)
    for row in rows:
        if replaced and row["model"].endswith(" (the previous default)"):  # now a default two models back
            row = {**row, "model": row["model"].removesuffix(" (the previous default)") + " (an earlier default)"}
        if row["model"].endswith(" (shipped)"):
            row = {**row, "model": row["model"].removesuffix(" (shipped)").removeprefix("shipped: ")
                   + " (the previous default)"}
        if (row["model"] not in names and not row["model"].startswith("this recipe, step")
                and _measurement(row) not in measured):
            earlier.append(row)
    return {**fid, "models": fid["models"] + earlier}


def _measurement(row: dict) -> tuple:
    """What identifies a model's row apart from its name: its training amount and every measured value."""
    return (row["steps"], row["images_seen"], row["shape_accuracy"], row["colour_found"],
            tuple(sorted(row["shape_gain"].items())), tuple(sorted(row["text_gain"].items())))


def training_amount(folder: Path) -> tuple[int, int]:
    """(training steps, training images) of a model folder; (0, 0) for one never trained."""
    info_path = Path(folder) / "training_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if "steps" not in info:  # the random control's folder notes only that it was never trained
        return 0, 0
    return info["steps"], info["steps"] * info["recipe"]["batch_size"]


def shape_word_curves(curves: list[str], level: float = 0.7) -> dict:
    """The shape word's loss gain at noise ``level`` along each --curve run (its exports and final model),
    against training images seen, drawn to shape_word_gain.png with the curves an earlier run of this script
    measured for other runs (their folders may be gone)."""
    path = HERE / "numbers.json"
    earlier = (json.loads(path.read_text()).get("curves") or {}) if path.is_file() else {}
    out = {name: points for name, points in (earlier.get("runs") or {}).items()
           if earlier.get("level") == level and name not in {item.partition("=")[0] for item in curves}}
    for item in curves:
        name, _, run = item.partition("=")
        folders = [p for p in Path(run).glob("model*") if (p / "training_info.json").is_file()]
        points = []
        for folder in folders:
            gain = prompt_sensitivity(folder, noise_levels=(level,))["noise_levels"][f"{level:g}"]["shape_gain"]
            points.append((training_amount(folder)[1], gain))
        out[name] = sorted(points)
        print(f"{name}: {out[name]}", flush=True)
    draw_curves(out, level)
    return {"level": level, "runs": out}


def draw_curves(runs: dict, level: float) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, points in runs.items():
        ax.plot([p[0] / 1000 for p in points], [100 * p[1] for p in points], "o-", ms=3, label=name)
    ax.axhline(0, color="#999999", lw=0.8)
    ax.set(xlabel="training images seen (thousands)", ylabel=f"shape word's loss gain at s={level:g} (%)",
           title="Is the shape word being learnt?")
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "shape_word_gain.png", dpi=150)


def shipped_row(numbers: dict) -> dict:
    return next(r for r in numbers["fidelity"]["models"] if r["model"].endswith("(shipped)"))


def fidelity_tables(numbers: dict) -> tuple[str, str]:
    fid = numbers["fidelity"]
    levels = list(fid["models"][0]["shape_gain"])
    lines = ["| model | training steps | images seen | prompted colour found | shape judged correct | shape word's "
             f"loss gain (s = {' / '.join(levels)}) |", "|---|---|---|---|---|---|"]
    for row in fid["models"]:
        gains = " / ".join(f"{row['shape_gain'][s]:.1%}" for s in levels)
        lines.append(f"| {row['model']} | {row['steps']:,} | {row['images_seen']:,} | {row['colour_found']:.0%} "
                     f"| {row['shape_accuracy']:.0%} | {gains} |")
    real = fid["judge_on_real_images"]
    lines.append(f"| real ShapeWorld images (the judge's own accuracy) | - | - | {real['colour_found']:.0%} "
                 f"| {real['shape_accuracy']:.0%} | - |")
    shipped = shipped_row(numbers)
    shapes = list(shipped["per_shape"])
    confusion = ["| prompted \\ judged | " + " | ".join(shapes) + " | none |", "|---" * (len(shapes) + 2) + "|"]
    for shape in shapes:
        judged = shipped["per_shape"][shape]["judged"]
        confusion.append(f"| {shape} | " + " | ".join(str(judged.get(s, 0)) for s in shapes)
                         + f" | {judged.get('(none)', 0)} |")
    return "\n".join(lines), "\n".join(confusion)


def reconstructions(noise_levels=(0.3, 0.5, 0.7, 0.85, 0.95), n: int = 4) -> None:
    """Clean-image predictions x0_hat = x_t - s * v_hat of test images with one large object, captions as
    prompts: the noise level where the outline is lost is where sampling loses the prompted shape."""
    import numpy as np
    import torch

    from probekit.datasets.shapeworld import ShapeWorld
    from probekit.backbone.model import load_denoiser
    from probekit.backbone.train import images_to_tensor

    transformer, conditioner, prediction = load_denoiser(shipped_weights())
    dataset = ShapeWorld("test")
    chosen = [s for s in (dataset[i] for i in range(len(dataset)))
              if " in front of " not in s.caption and s.meta["objects"][0]["size_px"] > 18][:n]
    x0 = images_to_tensor([s.image for s in chosen])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    cond = conditioner([s.caption for s in chosen])
    columns = [x0]
    velocity = prediction == "velocity"
    with torch.no_grad():
        for s in noise_levels:
            x_t = (1 - s) * x0 + s * eps
            out = transformer(hidden_states=x_t, timestep=torch.full((n,), s * 1000.0), return_dict=False, **cond)[0]
            columns += [x_t, x_t - s * out if velocity else out]
    fig, axes = plt.subplots(n, len(columns), figsize=(1.1 * len(columns), 1.2 * n + 0.4))
    titles = ["clean"] + [f"{kind} s={s:g}" for s in noise_levels for kind in ("x_t", "x0_hat")]
    for r in range(n):
        for c, col in enumerate(columns):
            img = ((col[r].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            axes[r, c].imshow(np.ascontiguousarray(img), interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=6)
        axes[r, 0].set_ylabel(chosen[r].caption.removeprefix("a ").removeprefix("an "), fontsize=6)
    fig.tight_layout()
    fig.savefig(HERE / "reconstructions.png", dpi=100)


def training_command(recipe: dict) -> str:
    """The exact `probekit train-backbone` command that reproduces ``recipe`` (non-default options only)."""
    words = ["probekit --threads 2 train-backbone --out build/shapeworld-mmdit-run", f"--steps {recipe['steps']}",
             f"--lr {recipe['lr']:g}", f"--shift {recipe['shift']:g}"]
    if recipe.get("batch_size", 32) != 32:
        words.append(f"--batch-size {recipe['batch_size']}")
    for option, default in (("prediction", "velocity"), ("precision", "fp32")):
        if recipe.get(option, default) != default:
            words.append(f"--{option} {recipe[option]}")
    for key, (low, high) in (recipe.get("scene") or {}).items():
        words.append(f"--scene {key}={low:g},{high:g}")
    return " ".join(words)


LEVER_SWEEP = HERE / "recipe-sweep-h200-levers.json"
LEVER_PROBES = HERE / "lever-probes.json"


def lever_table(numbers: dict) -> str:
    """The GPU lever sweep (recipe_sweep.py --sweep levers) beside the linear seg probes of its models
    (lever_probes.py): the shape word's gain along training, judged samples, and what probes read."""
    sweep = json.loads(LEVER_SWEEP.read_text())
    probes = json.loads(LEVER_PROBES.read_text()) if LEVER_PROBES.is_file() else {}
    marks = (128_000, 256_000, 384_000)
    lines = ["| run | options beyond the base | steps (last export) | images seen | shape word's loss gain at "
             + " / ".join(f"{m // 1000}k" for m in marks) + " images / at the end | shape judged correct "
             "| colour found | linear seg mIoU, best map (t=750 L5) |", "|---" * 8 + "|"]
    from recipe_sweep import SWEEPS  # beside this script: the options each run adds to the base

    options = SWEEPS["levers"][1]

    def cell(scores: dict) -> str:
        maps = {k: v for k, v in scores.items() if k.startswith("t=")}
        if not maps:
            return "-"
        best = max(maps, key=maps.get)
        return f"{maps[best]:.1f} ({best.replace('/layer=', ' L')}) ({maps.get('t=750/layer=5', float('nan')):.1f})"

    previous = [r for r in numbers["fidelity"]["models"] if r["model"].endswith("(the previous default)")]
    for key, label, row in (("shipped", "shipped model (CPU recipe)", shipped_row(numbers)),
                            ("previous default", "the previous default (CPU recipe)", previous[0] if previous else None)):
        if key in probes and row is not None:
            lines.append(f"| {label} | - | {row['steps']:,} | {row['images_seen']:,} | "
                         f"- / - / - / {row['shape_gain']['0.7']:.1%} | {row['shape_accuracy']:.0%} of "
                         f"{row['n']} | {row['colour_found']:.0%} | {cell(probes[key])} |")
    for name, run in sweep["runs"].items():
        words = run["command"].split()
        batch = int(words[words.index("--batch-size") + 1])
        opts = options[name]
        extra = " ".join(w for i, w in enumerate(opts)  # how often a run exports is no lever
                         if w != "--export-every" and (i == 0 or opts[i - 1] != "--export-every"))
        by_images = {e["steps"] * batch: e["shape_word_gain_at_0.7"] for e in run["exports"]}
        gains = [f"{by_images[m]:.1%}" if m in by_images else "-" for m in marks]
        last = run["exports"][-1]
        lines.append(f"| {name} | `{extra or '(base)'}` | {last['steps']:,} | {last['steps'] * batch:,} | "
                     f"{' / '.join(gains)} / {last['shape_word_gain_at_0.7']:.1%} | {last['shape_accuracy']:.0%} "
                     f"| {last['colour_found']:.0%} | {cell(probes.get(name, {}))} |")
    return "\n".join(lines)


def control_ratio(numbers: dict) -> str:
    """How many times lower the shipped model's held-out loss is than the random control's, over timesteps."""
    ratios = [numbers["control"][t] / v for t, v in numbers["trained"].items()]
    return f"{min(ratios):.0f}x to {max(ratios):.0f}x"


def model_card(run: Path, numbers: dict) -> None:
    folder = shipped_weights()
    info = json.loads((folder / "training_info.json").read_text())
    bf16 = info["recipe"].get("precision", "fp32") == "bf16"
    precision_note = ("forward and backward under bfloat16 autocast (weights, optimizer state and EMA in float32)"
                      if bf16 else "float32 throughout")
    rows = ["| timestep t | shapeworld-mmdit | random init | ratio |", "|---|---|---|---|"]
    for t, v in numbers["trained"].items():
        c = numbers["control"][t]
        rows.append(f"| {t} | {v:.4f} | {c:.4f} | {v / c:.3f} |")
    vocab = len(json.loads((folder / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"])
    fidelity_table, confusion_table = fidelity_tables(numbers)
    settings = numbers["fidelity"]["models"][0]["settings"]
    text = (HERE / "shapeworld-mmdit.md.in").read_text().format(
        transformer_params=f"{info['parameters']['transformer'] / 1e6:.2f} M",
        text_params=f"{info['parameters']['text_encoder'] / 1e3:.0f} k", vocab=vocab,
        size_mb=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20,
        steps=info["steps"], lr=f"{info['recipe']['lr']:g}", shift=f"{info['recipe']['shift']:g}",
        command=training_command(info["recipe"]), precision_note=precision_note,
        fidelity_table=fidelity_table, confusion_table=confusion_table,
        fidelity_n=numbers["fidelity"]["models"][0]["n"], fidelity_per_prompt=settings["per_prompt"],
        fidelity_steps=settings["steps"], fidelity_guidance=f"{settings['guidance']:g}",
        judge_n=numbers["fidelity"]["judge_on_real_images"]["n"],
        shipped_text_gain=f"{shipped_row(numbers)['text_gain']['0.7']:.0%}", sensitivity_n=shipped_row(numbers)["sensitivity_n"],
        batch=info["recipe"]["batch_size"], images_seen=f"{info['images_seen']:,}", wall_min=info["wall_time_s"] / 60,
        machine=info["machine"]["platform"], cpus=info["machine"]["cpus"],
        torch_threads=info["machine"]["torch_threads"], n_eval=numbers["n"], loss_table="\n".join(rows),
        prompts="; ".join(f'"{p}"' for p in PROMPTS), lever_table=lever_table(numbers),
        shipped_judged=f"{shipped_row(numbers)['shape_accuracy']:.0%}", control_ratio=control_ratio(numbers))
    (HERE / "shapeworld-mmdit.md").write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--n", type=int, default=256, help="held-out images per timestep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=FOLDER",
                        help="another model folder for the prompt-fidelity table (repeatable)")
    parser.add_argument("--curve", action="append", default=[], metavar="NAME=RUNDIR",
                        help="a training run whose exports' shape-word gain is drawn against images seen (repeatable)")
    parser.add_argument("--no-export-rows", action="store_true",
                        help="judge the shipped model only, not each model-stepN export of --run (84 samples each; "
                             "--curve follows the exports more cheaply)")
    parser.add_argument("--card-only", action="store_true",
                        help="only re-render the model card from the numbers.json already written")
    args = parser.parse_args()
    if args.card_only:
        model_card(args.run, json.loads((HERE / "numbers.json").read_text()))
        raise SystemExit(0)
    loss_curve(args.run)
    numbers = denoising(args.n)
    samples(args.seed)
    reconstructions()
    numbers["fidelity"] = with_earlier_rows(fidelity(args.run, args.compare, not args.no_export_rows))
    numbers["curves"] = shape_word_curves(args.curve)
    numbers["prompts"] = PROMPTS
    (HERE / "numbers.json").write_text(json.dumps(numbers, indent=2) + "\n")
    model_card(args.run, numbers)
    print(json.dumps(numbers, indent=2))
