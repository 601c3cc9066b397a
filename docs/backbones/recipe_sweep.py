"""Train several ShapeWorld MM-DiT recipes side by side, then judge each model's prompt fidelity.

Every run is a plain `probekit train-backbone` command (one process each, so they share the machine's cores and,
with ``--device cuda``, one GPU). Training stops at ``--budget-s`` whether or not every run has finished; the
exports each run left (``model-stepN`` every ``--export-every`` steps, ``model`` at the end) are then sampled
and judged with `probekit.backbone.judge.prompt_fidelity`.

    python docs/backbones/recipe_sweep.py --out build/sweep --device cuda --budget-s 390

writes ``OUT/sweep.json`` (per run: the command, steps reached, wall time, and per export: shape accuracy,
colour found and the shape word's loss gain at s = 0.7) and ``OUT/samples.png`` (one row of samples per run's last export).

``--sweep`` picks the set of runs: ``first`` (six recipes, images rendered on demand), ``levers`` (width and
depth, patch size and learning rate, from the image cache, compiled), ``alone`` (one run of the levers' best
slope) or ``next`` (the run the model card proposes, not run yet). Runs that train from the image cache find it built: the sweep renders each distinct scene once, in
``--cache-workers`` processes, before the runs start. ``--replot SWEEP_JSON --out FIG.png`` only redraws the
gain-vs-images figure. ``--pack DIR`` also writes each run's last export, its transformer in float16, as tar
parts of 15 MB into DIR.

Measured (recipe-sweep-h100.json): six runs at once on one H100, each rendering its own images, took about
140 ms per step each, so none reached 5,000 steps in ten minutes. With the image cache and torch.compile
(recipe-sweep-h200-levers.json, one H200) four runs at once took about 72 ms per step each at batch 128, and
one run alone took the same (74 ms, GPU 12% busy): the step of this small model is bound by the host, so a
larger batch, not more runs at once, is what fills the GPU (the model card, "Levers on a GPU").
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BASE = ["--steps", "5000", "--lr", "1e-3", "--shift", "3", "--precision", "bf16"]
CLOSE = ["--scene", "objects_per_image=1,2", "--scene", "object_distance_m=2.5,6"]
# Levers of model and recipe, one process each on one GPU, training images from the image cache, compiled.
LEVER_BASE = ["--steps", "40000", "--batch-size", "128", "--lr", "1e-3", "--shift", "3", "--precision", "bf16",
              "--scene", "objects_per_image=1,2", "--scene", "object_distance_m=2.5,7", "--cache", "--compile"]
SWEEPS = {  # sweep: (base options, {run name: options after the base recipe (later options win)})
    "first": (BASE, {  # recipe-sweep-h100.json: six recipes at once, images rendered on demand
        "control": [],
        "close": CLOSE,
        "few": ["--scene", "objects_per_image=1,2"],
        "near": ["--scene", "object_distance_m=2.5,6"],
        "close-lr2e-3": CLOSE + ["--lr", "2e-3"],
        "close-long": CLOSE + ["--steps", "12000"],
    }),
    "levers": (LEVER_BASE, {
        "w128-d6-p4": [],
        "w192-d8-p4": ["--width", "192", "--depth", "8"],
        "w128-d6-p2": ["--patch-size", "2", "--export-every", "250"],
        "w128-d6-p4-lr3e-3": ["--lr", "3e-3"],
    }),
    "alone": (LEVER_BASE, {  # the levers' best slope, one process on the GPU (it reached 1,200 of its steps in 205 s)
        "w128-d6-p4-lr3e-3-8k": ["--lr", "3e-3", "--steps", "8000"],
    }),
    "next": (LEVER_BASE, {  # not run yet: the two steepest levers, a batch that fills the GPU (the model card)
        "w192-d8-p4-lr3e-3-b1024": ["--width", "192", "--depth", "8", "--lr", "3e-3", "--batch-size", "1024",
                                    "--steps", "3000"],
    }),
}
RUNS = {name: base + options for base, runs in SWEEPS.values() for name, options in runs.items()}


def _command(name: str, out: Path, device: str, export_every: int, steps: int | None, threads: int,
             workers: int) -> list[str]:
    override = ["--steps", str(steps)] if steps else []  # a quick trial of the sweep itself
    return [sys.executable, "-m", "probekit", "--threads", str(threads), "train-backbone", "--out", str(out / name),
            "--export-every", str(export_every), *RUNS[name], *override, "--device", device,
            "--workers", str(workers), "--quiet"]


def _judge(folder: str, device: str, per_prompt: int, fidelity: bool = True) -> dict:
    """The shape word's loss gain at s = 0.7 (cheap: every export) and, with ``fidelity``, the judged samples."""
    import torch

    torch.set_num_threads(2)
    from probekit.backbone.prompt_sensitivity import prompt_sensitivity
    from probekit.backbone.judge import prompt_fidelity

    steps = json.loads((Path(folder) / "training_info.json").read_text()).get("steps")
    gain = prompt_sensitivity(folder, noise_levels=(0.7,))["noise_levels"]["0.7"]["shape_gain"]
    out = {"folder": folder, "steps": steps, "shape_word_gain_at_0.7": gain}
    if fidelity:
        summary = prompt_fidelity(folder, per_prompt=per_prompt, device=device)
        out.update(shape_accuracy=summary["shape_accuracy"], colour_found=summary["colour_found"], n=summary["n"])
    return out


def _build_caches(names: list[str], workers: int, steps: int | None = None) -> None:
    """Render each distinct training scene of the runs that train from the image cache once, in ``workers``
    processes, before the runs start (runs sharing a scene would otherwise race to build one cache)."""
    from probekit.backbone.cache import ImageCache
    from probekit.cli.backbone import _scene_option
    from probekit.datasets.shapeworld import ShapeWorld

    scenes = {}
    for name in names:
        options = RUNS[name]
        if "--cache" not in options:
            continue
        value = {o: options[i + 1] for i, o in enumerate(options[:-1]) if o in ("--steps", "--batch-size")}
        scene = _scene_option([options[i + 1] for i, o in enumerate(options) if o == "--scene"])
        key = json.dumps(scene, sort_keys=True)
        rows = int(steps or value.get("--steps", 3000)) * int(value.get("--batch-size", 32))
        scenes[key] = (scene, max(rows, scenes.get(key, (None, 0))[1]))
    for scene, rows in scenes.values():
        ImageCache(ShapeWorld("pretrain", scene=scene)).build(rows=rows, workers=workers, progress=False)


def _exports(run: Path) -> list[Path]:
    def steps(p: Path) -> int:
        return int(p.name.removeprefix("model-step")) if p.name != "model" else 10**9

    return sorted((p for p in run.glob("model*") if (p / "transformer").is_dir()), key=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget-s", type=float, default=3600.0, help="Stop training after this many seconds.")
    parser.add_argument("--export-every", type=int, default=1000)
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--replot", type=Path, default=None, metavar="SWEEP_JSON",
                        help="only draw the gain-vs-images figure of a finished sweep (to --out, a .png)")
    parser.add_argument("--pack", type=Path, default=None, metavar="DIR",
                        help="after judging, also write each run's last export (float16) as tar parts into DIR")
    parser.add_argument("--sweep", default="first", choices=list(SWEEPS), help="which set of runs")
    parser.add_argument("--runs", nargs="*", default=None, choices=list(RUNS), help="default: the sweep's runs")
    parser.add_argument("--fidelity", default="all", choices=["all", "last"],
                        help="judge the samples of every export, or of each run's last (the loss gain: every one)")
    parser.add_argument("--cache-workers", type=int, default=1, help="processes rendering the image caches")
    parser.add_argument("--steps", type=int, default=None, help="Train every run this many steps instead.")
    parser.add_argument("--judge-workers", type=int, default=6)
    parser.add_argument("--workers", type=int, default=0, help="image-rendering processes per run")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads per run; runs x threads must not exceed the cores (oversubscribed "
                             "OpenMP threads slow CPU training dozens of times)")
    args = parser.parse_args()
    if args.replot:
        plot_gain(json.loads(args.replot.read_text()), args.out)
        return
    args.runs = args.runs or list(SWEEPS[args.sweep][1])
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    _build_caches(args.runs, args.cache_workers, args.steps)
    print(f"image caches ready after {time.perf_counter() - start:.0f} s", flush=True)
    procs = {}
    for name in args.runs:
        cmd = _command(name, args.out, args.device, args.export_every, args.steps, args.threads, args.workers)
        log = open(args.out / f"{name}.log", "w")
        procs[name] = (cmd, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    while any(p.poll() is None for _, p, _ in procs.values()) and time.perf_counter() - start < args.budget_s:
        time.sleep(5)
    runs = {}
    for name, (cmd, proc, log) in procs.items():
        finished = proc.poll() == 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        log.close()
        train_log = (args.out / name / "train_log.csv").read_text().splitlines()
        last = train_log[-1].split(",") if len(train_log) > 1 else ["0", "nan", "", "", "0"]
        runs[name] = {"command": " ".join(["probekit", *cmd[3:]]), "finished": finished, "steps_reached": int(last[0]),
                      "last_loss": float(last[1]), "elapsed_s": float(last[4]), "exports": []}
    print(f"training stopped after {time.perf_counter() - start:.0f} s", flush=True)

    folders, fidelity = [], []
    for name in runs:
        exports = _exports(args.out / name)
        folders += [(name, str(f)) for f in exports]
        fidelity += [args.fidelity == "all" or i == len(exports) - 1 for i in range(len(exports))]
    with ProcessPoolExecutor(max_workers=args.judge_workers) as pool:
        judged = list(pool.map(_judge, [f for _, f in folders], [args.device] * len(folders),
                               [args.per_prompt] * len(folders), fidelity))
    for (name, _), result in zip(folders, judged):
        runs[name]["exports"].append(result)
        judged_text = (f"shape {result['shape_accuracy']:.3f} colour {result['colour_found']:.3f} "
                       if "shape_accuracy" in result else "")
        print(name, Path(result["folder"]).name,
              judged_text + f"shape-word gain {result['shape_word_gain_at_0.7']:.2%}", flush=True)
    gpu = {}
    if args.device.startswith("cuda"):
        import torch

        gpu = {"gpu": torch.cuda.get_device_name(torch.device(args.device))}
    sweep = {"device": args.device, **gpu, "budget_s": args.budget_s, "per_prompt": args.per_prompt, "runs": runs}
    (args.out / "sweep.json").write_text(json.dumps(sweep, indent=1))
    _sample_rows(args.out, runs, args.device)
    plot_gain(sweep, args.out / "gain.png")
    if args.pack:
        print("packed", ", ".join(p.name for p in pack(args.out, args.pack)), flush=True)


def plot_gain(sweep: dict, path: Path) -> None:
    """The shape word's loss gain at s = 0.7 of every export against training images seen, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, run in sweep["runs"].items():
        words = run["command"].split()
        batch = int(words[words.index("--batch-size") + 1]) if "--batch-size" in words else 32
        points = sorted((e["steps"] * batch, e["shape_word_gain_at_0.7"]) for e in run["exports"] if e.get("steps"))
        ax.plot([x / 1000 for x, _ in points], [100 * y for _, y in points], "o-", ms=3, label=name)
    ax.axhline(0, color="#999999", lw=0.8)
    ax.set(xlabel="training images seen (thousands)", ylabel="shape word's loss gain at s=0.7 (%)",
           title=f"Levers, {sweep.get('gpu', sweep['device'])}")
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)


def pack(out: Path, dest: Path, part_mb: int = 15) -> list[Path]:
    """Each run's last export, its transformer in float16 (the form a wider model ships in), in one tar split into
    parts of ``part_mb`` MB under ``dest`` (``cat models.tar.part-* | tar x`` joins them), to carry the models
    off the training machine."""
    import io
    import tarfile

    from safetensors.torch import load_file, save

    dest.mkdir(parents=True, exist_ok=True)
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, run in runs.items():
            if not run["exports"]:
                continue
            folder = Path(run["exports"][-1]["folder"])
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                data = path.read_bytes()
                if path.parent.name == "transformer" and path.suffix == ".safetensors":
                    data = save({k: v.half() if v.is_floating_point() else v for k, v in load_file(path).items()})
                info = tarfile.TarInfo(f"models/{name}/{folder.name}/{path.relative_to(folder)}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    blob, size = buffer.getvalue(), part_mb * 2**20
    parts = []
    for i in range(0, len(blob), size):
        parts.append(dest / f"models.tar.part-{i // size:02d}")
        parts[-1].write_bytes(blob[i:i + size])
    return parts


def _sample_rows(out: Path, runs: dict, device: str) -> None:
    """One row of 12 samples (two of each shape, one colour per shape) per run's last export."""
    import numpy as np
    from PIL import Image

    from probekit.backbone.judge import judged_prompts
    from probekit.backbone.sampling import FlowSampler

    prompts = judged_prompts()[::7][:6] * 2
    rows = []
    for name, run in runs.items():
        if run["exports"]:
            images = FlowSampler(run["exports"][-1]["folder"], device=device).sample(prompts, seed=1)
            rows.append(np.concatenate(list(images), axis=1))
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).resize((12 * 128, len(rows) * 128), Image.NEAREST).save(
            out / "samples.png")


if __name__ == "__main__":
    main()
