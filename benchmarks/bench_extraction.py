"""Extraction cost: (1) probekit extract against a bare forward loop over the same batches; (2) all timesteps
of an image in one batched forward against one forward per timestep.

    python benchmarks/bench_extraction.py [--n 128] [--batch-size 16] [--repeats 3]

(1) Both sides read the same pre-rendered images from RAM and run the same noised inputs through the shipped
ShapeWorld MM-DiT. The bare loop runs the full transformer and throws the output away; extraction adds the
block hooks, the copy to float16, the sharded HDF5 writes (fsync per shard) and the final merge. Requesting
the last block removes extraction's early stop, so the comparison is like for like; a second row requests
every block (the most storage). Throughput ratio = bare time / extraction time (target >= 0.97).
(2) The same extractor API, once with 4 timesteps in one forward of B x 4 rows and once as 4 single-timestep
extractors (4 forwards of B rows); no storage on either side. Speed-up = per-timestep time / batched time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MemoryDataset, interleaved, write_result  # noqa: E402

from probekit.api import build_extractor  # noqa: E402
from probekit.datasets import load_dataset  # noqa: E402
from probekit.extractors.runner import _to_tensor, extract_dataset  # noqa: E402

TIMESTEPS = [50, 250, 500, 750]


def batches(ds: MemoryDataset, batch_size: int):
    for start in range(0, len(ds), batch_size):
        samples = ds.samples[start:start + batch_size]
        yield _to_tensor([s.image for s in samples]), [s.caption for s in samples], [s.index for s in samples]


def bare_loop(ex, ds: MemoryDataset, batch_size: int) -> None:
    with torch.inference_mode():
        for images, captions, indices in batches(ds, batch_size):
            x_t, sigma, t_int, cond, extras, _ = ex.model_inputs(images, captions, indices)
            ex.family.forward(ex.transformer, x_t, sigma, t_int, cond, extras)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ds = MemoryDataset(load_dataset("shapeworld", "val"), args.n)
    work = Path(tempfile.mkdtemp(prefix="probekit-bench-"))
    rows = []
    try:
        for label, layers in (("last block", [5]), ("every block", [0, 1, 2, 3, 4, 5])):
            ex = build_extractor("shapeworld-mmdit", timesteps=TIMESTEPS, layers=layers, device=args.device)
            timing = interleaved({
                "bare forward": lambda: bare_loop(ex, ds, args.batch_size),
                "probekit extract": lambda: extract_dataset(ex, ds, work / "f.h5", batch_size=args.batch_size,
                                                            overwrite=True, progress=False),
            }, repeats=args.repeats)
            size_mb = (work / "f.h5").stat().st_size / 2**20
            ratio = timing["bare forward"]["median_s"] / timing["probekit extract"]["median_s"]
            rows.append({"layers": label, "timing": timing, "file_mb": round(size_mb, 1),
                         "throughput_ratio": round(ratio, 3)})
            print(f"{label}: extract/bare throughput ratio {ratio:.3f} ({size_mb:.0f} MB written)")
        batched = build_extractor("shapeworld-mmdit", timesteps=TIMESTEPS, layers=[2, 5], device=args.device)
        single = [build_extractor("shapeworld-mmdit", timesteps=[t], layers=[2, 5], device=args.device)
                  for t in TIMESTEPS]

        def run_batched():
            for images, captions, indices in batches(ds, args.batch_size):
                batched.extract(images, captions, indices)

        def run_single():
            for images, captions, indices in batches(ds, args.batch_size):
                for ex in single:
                    ex.extract(images, captions, indices)

        timing = interleaved({"one forward per timestep": run_single, "timesteps batched": run_batched},
                             repeats=args.repeats)
        speedup = timing["one forward per timestep"]["median_s"] / timing["timesteps batched"]["median_s"]
        print(f"batched timesteps: {speedup:.3f}x the throughput of one forward per timestep")
        write_result("extraction", {
            "settings": {"n": args.n, "batch_size": args.batch_size, "timesteps": TIMESTEPS, "repeats": args.repeats,
                         "device": args.device, "backbone": "shapeworld-mmdit", "image_size": 64},
            "overhead": rows,
            "batched_timesteps": {"timing": timing, "speedup": round(speedup, 3)},
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
