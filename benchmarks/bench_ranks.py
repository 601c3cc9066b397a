"""Distributed extraction: 2 torchrun ranks against 1 process, on the same samples and the same cores.

    python benchmarks/bench_ranks.py [--n 256] [--repeats 2]

Both run `probekit extract` on the shipped ShapeWorld MM-DiT (4 timesteps x 2 layers, batch 16) from the
command line, so process start-up, model loading, shard writes and the merge are all counted. With C cores,
the single process uses C torch threads and each of the 2 ranks C/2, so both sides use the same hardware.
Speed-up = 1-process wall time / 2-rank wall time. The files are checked to hold identical features.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, write_result  # noqa: E402

ARGS = ["-e", "shapeworld-mmdit", "-s", "val", "-t", "50,250,500,750", "-l", "2,5", "-b", "16", "--device", "cpu",
        "-q", "--overwrite"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out: Path, n: int, ranks: int) -> None:
    cores = os.cpu_count() or 2
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // ranks))}
    launcher = [sys.executable, "-m", "probekit"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
        "--master-addr", "127.0.0.1", "--master-port", str(_port()), "-m", "probekit"]
    subprocess.run([*launcher, "extract", *ARGS, "--limit", str(n), "-o", str(out)], env=env, check=True,
                   capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="probekit-bench-"))
    try:
        timing = interleaved({"1 process": lambda: run(work / "one.h5", args.n, 1),
                              "2 ranks": lambda: run(work / "two.h5", args.n, 2)}, repeats=args.repeats,
                             warmup=False)
        with h5py.File(work / "one.h5") as a, h5py.File(work / "two.h5") as b:
            keys = json.loads(a.attrs["feature_keys"])
            same = all(np.array_equal(a[f"features/{k}"][...], b[f"features/{k}"][...]) for k in keys)
        speedup = timing["1 process"]["median_s"] / timing["2 ranks"]["median_s"]
        print(f"2 ranks: {speedup:.3f}x the throughput of 1 process (identical features: {same})")
        write_result("ranks", {"settings": {"n": args.n, "repeats": args.repeats, "args": ARGS,
                                            "cores": os.cpu_count()},
                               "timing": timing, "speedup": round(speedup, 3), "identical_features": same})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
