"""Train several ShapeWorld MM-DiT recipes side by side, then judge each model's prompt fidelity.

Every run is a plain `probekit train-backbone` command (one process each, so they share the machine's cores and,
with ``--device cuda``, one GPU). Training stops at ``--budget-s`` whether or not every run has finished; the
exports each run left (``model-stepN`` every ``--export-every`` steps, ``model`` at the end) are then sampled
and judged with `probekit.backbone.judge.prompt_fidelity`.

    python docs/backbones/recipe_sweep.py --out build/sweep --device cuda --budget-s 390

writes ``OUT/sweep.json`` (per run: the command, steps reached, wall time, and per export: shape accuracy,
colour found and the shape word's loss gain at s = 0.7) and ``OUT/samples.png`` (one row of samples per run's last export).

Measured (recipe-sweep-h100.json): six runs at once on one H100, each rendering its own images, took about
140 ms per step each, so none reached 5,000 steps in ten minutes. A step of this small model is many tiny
kernels, and processes sharing a GPU take turns; for a long GPU run train one recipe at a time, with
``--workers`` rendering the images.
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
RUNS = {  # name: options after the base recipe (later options win)
    "control": [],
    "close": CLOSE,
    "few": ["--scene", "objects_per_image=1,2"],
    "near": ["--scene", "object_distance_m=2.5,6"],
    "close-lr2e-3": CLOSE + ["--lr", "2e-3"],
    "close-long": CLOSE + ["--steps", "12000"],
}


def _command(name: str, out: Path, device: str, export_every: int, steps: int | None, threads: int,
             workers: int) -> list[str]:
    override = ["--steps", str(steps)] if steps else []  # a quick trial of the sweep itself
    return [sys.executable, "-m", "probekit", "--threads", str(threads), "train-backbone", "--out", str(out / name),
            *BASE, *RUNS[name], *override, "--device", device, "--workers", str(workers),
            "--export-every", str(export_every), "--quiet"]


def _judge(folder: str, device: str, per_prompt: int) -> dict:
    import torch

    torch.set_num_threads(2)
    from probekit.backbone.prompt_sensitivity import prompt_sensitivity
    from probekit.backbone.judge import prompt_fidelity

    summary = prompt_fidelity(folder, per_prompt=per_prompt, device=device)
    gain = prompt_sensitivity(folder, noise_levels=(0.7,))["noise_levels"]["0.7"]["shape_gain"]
    return {"folder": folder, "shape_accuracy": summary["shape_accuracy"], "colour_found": summary["colour_found"],
            "n": summary["n"], "shape_word_gain_at_0.7": gain}


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
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=None, help="Train every run this many steps instead.")
    parser.add_argument("--judge-workers", type=int, default=6)
    parser.add_argument("--workers", type=int, default=0, help="image-rendering processes per run")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads per run; runs x threads must not exceed the cores (oversubscribed "
                             "OpenMP threads slow CPU training dozens of times)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
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

    folders = [(name, str(f)) for name in runs for f in _exports(args.out / name)]
    with ProcessPoolExecutor(max_workers=args.judge_workers) as pool:
        judged = list(pool.map(_judge, [f for _, f in folders], [args.device] * len(folders),
                               [args.per_prompt] * len(folders)))
    for (name, _), result in zip(folders, judged):
        runs[name]["exports"].append(result)
        print(name, Path(result["folder"]).name, f"shape {result['shape_accuracy']:.3f}",
              f"colour {result['colour_found']:.3f}", f"shape-word gain {result['shape_word_gain_at_0.7']:.2%}",
              flush=True)
    (args.out / "sweep.json").write_text(json.dumps({"device": args.device, "budget_s": args.budget_s,
                                                     "per_prompt": args.per_prompt, "runs": runs}, indent=1))
    _sample_rows(args.out, runs, args.device)


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
