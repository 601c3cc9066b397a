"""Probe training: throughput against a bare loop, and memory against file size.

    python benchmarks/bench_probe.py [--n 256] [--epochs 10] [--repeats 3] [--base 128]

(1) Throughput. Features of the shipped ShapeWorld MM-DiT (4 timesteps x 2 blocks) for --n training and 128 test
images, as the demo extracts them. A single-map linear probe (t=250, block 4; one learning rate, one seed,
--epochs epochs, batch 32) trained by `train_probe` against a bare loop of the same head (BatchNorm + 1x1 conv,
logits upsampled to the label size, cross-entropy, AdamW with a cosine schedule) over the same rows held as
tensors in RAM. Reported: training samples per second of both, their ratio (target >= 0.8), and the whole
`train_probe` call (reading the file, validation, scoring on the test split, writing the run) in samples/s.
(2) Memory. Synthetic feature files (8 maps of 128 x 16 x 16 per sample) with --base x {1, 4, 16} training
samples, each probed (global fusion, 1 epoch) in a fresh process that samples its own resident set size every
5 ms from a baseline taken after every import: the peak added, with features held in memory (the default for
files this size) and streamed from the file (``resident_bytes=0``, what a file larger than memory gets).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS, interleaved, write_result  # noqa: E402

KEY = "t=250/layer=4"
SYNTH_KEYS = [f"t={t}/layer={layer}" for t in (50, 250, 500, 750) for layer in (2, 4)]


def demo_features(work: Path, n: int) -> tuple[Path, Path]:
    from probekit.api import build_extractor, run_extraction

    ex = build_extractor("shapeworld-mmdit", timesteps=[50, 250, 500, 750], layers=[2, 4], device="cpu")
    train, test = work / "train.h5", work / "test.h5"
    run_extraction(ex, "shapeworld", "train", train, limit=n, batch_size=16, progress=False)
    run_extraction(ex, "shapeworld", "test", test, limit=128, batch_size=16, progress=False)
    return train, test


def probekit_run(train: Path, test: Path, epochs: int, out: Path) -> dict:
    from probekit.probes.trainer import train_probe

    start = time.perf_counter()
    rec = train_probe(train, test, key=KEY, epochs=epochs, lrs=[1e-2], seeds=[0], batch_size=32, device="cpu",
                      out=out, overwrite="overwrite", progress=False)
    return {"wall_s": time.perf_counter() - start, "train_s": rec["trials"][0]["wall_time_s"],
            "rows": rec["config"]["data"]["rows"]["train"], "mIoU": rec["main_score"]}


class BareLoop:
    """The same head and training over the same training rows, held as tensors in RAM: the floor."""

    def __init__(self, train: Path, rows: int):
        import torch

        from probekit.store import FeatureReader

        with FeatureReader(train) as r:
            order = np.random.default_rng([0, 7]).permutation(r.num_samples)  # the probe's own validation split
            keep = np.sort(order[max(1, int(round(0.15 * r.num_samples))):])[:rows]
            self.x = torch.from_numpy(r.read(KEY, keep))
            self.y = torch.from_numpy(r.read_labels("seg", keep).astype(np.int64))
            self.classes = len(r.dataset["classes"])

    def __call__(self, epochs: int) -> float:
        import torch
        import torch.nn.functional as F

        from probekit.probes.heads import LinearHead

        torch.manual_seed(0)
        head = LinearHead(self.x.shape[1], self.classes)
        steps = epochs * math.ceil(len(self.x) / 32)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        start = time.perf_counter()
        for epoch in range(epochs):
            perm = torch.randperm(len(self.x))
            for a in range(0, len(self.x), 32):
                idx = perm[a:a + 32]
                out = F.interpolate(head([self.x[idx]]), size=self.y.shape[-2:], mode="bilinear", align_corners=False)
                loss = F.cross_entropy(out, self.y[idx], ignore_index=255)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        return time.perf_counter() - start


def synthetic_file(path: Path, n: int, split: str, seed: int) -> Path:
    """Random features with ShapeWorld-like labels; written in batches, never held whole in RAM."""
    from probekit.store import FeatureWriter

    rng = np.random.default_rng(seed)
    ref = {"dataset": "synthetic", "split": split, "manifest_sha256": "-", "params_hash": "-", "size": n,
           "classes": [f"c{i}" for i in range(7)], "ignore_index": 255}
    attrs = {"extractor": "synthetic", "dataset": ref, "provenance": {"extractor": {"extractor": "synthetic"}}}
    with FeatureWriter(path, capacity=n, attrs=attrs) as w:
        for start in range(0, n, 32):
            rows = list(range(start, min(start + 32, n)))
            w.append({k: rng.standard_normal((len(rows), 128, 16, 16), dtype=np.float32) for k in SYNTH_KEYS},
                     {"seg": rng.integers(0, 7, (len(rows), 64, 64), dtype=np.uint8)},
                     [f"synthetic/{split}/{i:06d}" for i in rows], rows, [""] * len(rows))
        w.finalize()
    return path


def child(args) -> None:
    from probekit.probes.trainer import train_probe

    with PeakRSS() as rss:
        # one trial (one rate, one own-loss weight): memory of one model, as measured before the weights grid
        train_probe(args.train, args.eval, fusion="global", epochs=1, lrs=[1e-2], seeds=[0], device="cpu",
                    own_loss_weights=[1.0],
                    out=args.out, overwrite="overwrite", progress=False,
                    resident_bytes=0 if args.mode == "streamed" else None)
    print(json.dumps({"baseline_mb": rss.baseline_mb, "peak_mb": rss.peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base", type=int, default=128)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--train"), ap.add_argument("--eval"), ap.add_argument("--mode"), ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        return child(args)
    work = Path(tempfile.mkdtemp(prefix="probekit-bench-"))
    try:
        train, test = demo_features(work, args.n)
        runs: list[dict] = []
        bare = BareLoop(train, rows=10**9)
        timing = interleaved({
            "train_probe": lambda: runs.append(probekit_run(train, test, args.epochs, work / "run")),
            "bare loop": lambda: bare(args.epochs),
        }, repeats=args.repeats)
        runs = runs[1:]  # the warm-up run is not counted
        rows = runs[0]["rows"]
        samples = rows * args.epochs
        train_s = float(np.median([r["train_s"] for r in runs]))
        bare_s = float(np.median(timing["bare loop"]["runs_s"]))
        throughput = {"probekit_training_samples_s": round(samples / train_s, 1),
                      "bare_loop_samples_s": round(samples / bare_s, 1),
                      "ratio": round(bare_s / train_s, 3),
                      "probekit_whole_run_samples_s": round(samples / timing["train_probe"]["median_s"], 1),
                      "whole_run_s": round(timing["train_probe"]["median_s"], 2), "training_rows": rows,
                      "mIoU": round(runs[0]["mIoU"], 4)}
        print(throughput)
        evaluation = synthetic_file(work / "synthetic-eval.h5", 64, "test", seed=1)
        memory = []
        for factor in (1, 4, 16):
            n = args.base * factor
            path = synthetic_file(work / f"synthetic-{factor}x.h5", n, "train", seed=0)
            row = {"factor": factor, "samples": n, "file_mb": round(path.stat().st_size / 2**20, 1)}
            for mode in ("resident", "streamed"):
                res = subprocess.run([sys.executable, __file__, "--child", "--train", str(path), "--eval",
                                      str(evaluation), "--mode", mode, "--out", str(work / "run-mem")],
                                     capture_output=True, text=True, check=True)
                got = json.loads(res.stdout.strip().splitlines()[-1])
                row[f"added_mb_{mode}"] = round(got["peak_mb"] - got["baseline_mb"], 1)
            memory.append(row)
            path.unlink()
            print(row)
        for row in memory:
            for mode in ("resident", "streamed"):
                row[f"added_ratio_{mode}"] = round(row[f"added_mb_{mode}"] / memory[0][f"added_mb_{mode}"], 3)
        write_result("probe", {
            "settings": {"n_train": args.n, "n_eval": 128, "epochs": args.epochs, "repeats": args.repeats,
                         "probe": f"linear head on {KEY}, one learning rate, one seed, batch 32",
                         "memory_base_samples": args.base,
                         "memory_probe": "global fusion over 8 maps of 128x16x16, linear, 1 epoch"},
            "timing": timing, "throughput": throughput, "peak_memory": memory})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
