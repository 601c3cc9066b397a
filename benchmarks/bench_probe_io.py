"""Probe training I/O: (3) reading minibatches from HDF5 against the same features held in RAM; (4) peak memory
while probing feature files of 1x, 4x and 16x a base size.

    python benchmarks/bench_probe_io.py [--n 256] [--repeats 3] [--base 128]

(3) Features of the shipped ShapeWorld MM-DiT (4 timesteps x 2 layers) for --n training and 128 evaluation
images; the same probe (global fusion, linear head, 3 epochs) trained with probekit's reader (HDF5) without and
with 2 batches prefetched on a thread, and with a reader that holds the file in RAM, its loading either timed
or done before timing (the strict baseline). Throughput ratio = RAM time / HDF5 time (target >= 0.9).
(4) Synthetic feature files (8 maps of 128 x 16 x 16 per sample) with --base x {1, 4, 16} training samples,
each probed in a fresh process (1 epoch). The process samples its own resident set size every 5 ms from a
baseline taken after every import; the result is the peak added by probing. The RAM reader is measured the
same way, as the contrast a growing footprint would show.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS, interleaved, memory_reader_class, write_result  # noqa: E402

PRELOADED: dict = {}  # file -> arrays, for the RAM baseline whose loading is not timed
SYNTH_KEYS = [f"t={t}/layer={layer}" for t in (50, 250, 500, 750) for layer in (2, 5)]


def probe_once(train: Path, evaluation: Path, reader: str, prefetch: int | None, epochs: int, out: Path) -> None:
    import probekit.probes.trainer as trainer
    from probekit.combined import open_features

    if reader == "ram":
        trainer.open_features = memory_reader_class()
    elif reader == "ram-preloaded":
        trainer.open_features = memory_reader_class(PRELOADED)
    else:
        trainer.open_features = open_features
    trainer.train_probe(str(train), str(evaluation), task="seg", fusion="global", head="linear", epochs=epochs,
                        lrs=[1e-2], prefetch=prefetch, out=out, overwrite="overwrite", progress=False)


def real_features(work: Path, n: int) -> tuple[Path, Path]:
    from probekit.api import build_extractor, run_extraction

    ex = build_extractor("shapeworld-mmdit", timesteps=[50, 250, 500, 750], layers=[2, 5], device="cpu")
    train, test = work / "train.h5", work / "test.h5"
    run_extraction(ex, "shapeworld", "train", train, limit=n, batch_size=16, progress=False)
    run_extraction(ex, "shapeworld", "test", test, limit=128, batch_size=16, progress=False)
    return train, test


def synthetic_file(path: Path, n: int, split: str, seed: int) -> Path:
    """Random features with ShapeWorld-like labels; written sample by sample, never held whole in RAM."""
    from probekit.store import FeatureWriter

    rng = np.random.default_rng(seed)
    ref = {"dataset": "synthetic", "split": split, "manifest_sha256": "-", "params_hash": "-", "size": n,
           "classes": [f"c{i}" for i in range(7)], "ignore_index": 255}
    attrs = {"extractor": "synthetic", "timesteps": [50, 250, 500, 750], "layers": [2, 5], "dataset": ref,
             "provenance": {"extractor": {"extractor": "synthetic"}, "dataset": ref}}
    with FeatureWriter(path, sample_ids=[f"synthetic/{split}/{i:06d}" for i in range(n)], indices=list(range(n)),
                       attrs=attrs) as w:
        for start in range(0, n, 32):
            rows = list(range(start, min(start + 32, n)))
            feats = {k: rng.standard_normal((len(rows), 128, 16, 16), dtype=np.float32) for k in SYNTH_KEYS}
            labels = {"seg": rng.integers(0, 7, (len(rows), 64, 64), dtype=np.uint8)}
            w.write_batch(rows, feats, labels, [""] * len(rows))
        w.finalize()
    return path


def child(args) -> None:
    import probekit.probes.trainer  # noqa: F401 - imports first, so the baseline holds them

    with PeakRSS() as rss:
        probe_once(Path(args.train), Path(args.eval), args.reader, None, 1, Path(args.out))  # the default prefetch
    print(json.dumps({"baseline_mb": rss.baseline_mb, "peak_mb": rss.peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="training images for the HDF5-vs-RAM comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base", type=int, default=128, help="training samples of the 1x synthetic file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--train"), ap.add_argument("--eval"), ap.add_argument("--reader"), ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        return child(args)
    work = Path(tempfile.mkdtemp(prefix="probekit-bench-"))
    try:
        train, test = real_features(work, args.n)
        timing = interleaved({
            "HDF5, prefetch 0": lambda: probe_once(train, test, "hdf5", 0, 3, work / "run"),
            "HDF5, prefetch 2": lambda: probe_once(train, test, "hdf5", 2, 3, work / "run"),
            "RAM, loading timed": lambda: probe_once(train, test, "ram", 0, 3, work / "run"),
            "RAM, loaded beforehand": lambda: probe_once(train, test, "ram-preloaded", 0, 3, work / "run"),
        }, repeats=args.repeats)  # the warm-up run fills PRELOADED
        ratios = {f"{name} vs {ram}": round(timing[ram]["median_s"] / timing[name]["median_s"], 3)
                  for name in ("HDF5, prefetch 0", "HDF5, prefetch 2")
                  for ram in ("RAM, loaded beforehand", "RAM, loading timed")}
        print(f"HDF5 / RAM throughput: {ratios}")
        evaluation = synthetic_file(work / "synthetic-eval.h5", 64, "test", seed=1)
        memory = []
        for factor in (1, 4, 16):
            n = args.base * factor
            path = synthetic_file(work / f"synthetic-{factor}x.h5", n, "train", seed=0)
            row = {"factor": factor, "samples": n, "file_mb": round(path.stat().st_size / 2**20, 1)}
            for reader in ("hdf5", "ram"):
                res = subprocess.run([sys.executable, __file__, "--child", "--train", str(path), "--eval",
                                      str(evaluation), "--reader", reader, "--out", str(work / "run-mem")],
                                     capture_output=True, text=True, check=True)
                got = json.loads(res.stdout.strip().splitlines()[-1])
                row[f"baseline_mb_{reader}"] = round(got["baseline_mb"], 1)
                row[f"added_mb_{reader}"] = round(got["peak_mb"] - got["baseline_mb"], 1)
            memory.append(row)
            path.unlink()
            print(row)
        base = memory[0]
        for row in memory:
            row["added_ratio_hdf5"] = round(row["added_mb_hdf5"] / base["added_mb_hdf5"], 3)
            row["added_ratio_ram"] = round(row["added_mb_ram"] / base["added_mb_ram"], 3)
        write_result("probe_io", {
            "settings": {"n_train": args.n, "n_eval": 128, "repeats": args.repeats, "probe": "global fusion, linear, "
                         "3 epochs, batch 16", "memory_base_samples": args.base,
                         "memory_probe": "global fusion over 8 maps of 128x16x16, linear, 1 epoch, batch 16"},
            "hdf5_vs_ram": {"timing": timing, "throughput_ratios": ratios},
            "peak_memory": memory,
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
