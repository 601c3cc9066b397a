"""Two probekit processes at once on a small machine: each against itself alone.

    python benchmarks/bench_load.py [--repeats 1]

A = a small demo (`probekit demo --n-train 64 --n-test 32`), B = a fused probe on the demo's features
(`probekit probe --fusion global`, 30 epochs). Each is timed alone, then both are started together; the
slowdown of each is its wall time together over its wall time alone (target <= 2.5). Three settings:

- ``spin``: OMP_WAIT_POLICY=ACTIVE, what torch does when nobody chooses (idle OpenMP threads spin-wait);
- ``default``: probekit's own default (OMP_WAIT_POLICY=PASSIVE, set by the `probekit` command before torch is
  imported, unless the user set it);
- ``threads 1``: `probekit --threads 1` for each process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

SETTINGS = {
    "spin": ({"OMP_WAIT_POLICY": "ACTIVE"}, []),
    "default": ({}, []),
    "threads 1": ({}, ["--threads", "1"]),
}


def commands(work: Path, extra: list[str]) -> dict[str, list[str]]:
    probekit = [sys.executable, "-m", "probekit", *extra]
    feats = work / "feats" / "features" / "shapeworld-mmdit" / "shapeworld"
    return {
        "A demo": probekit + ["demo", "--out", str(work / "demo"), "--n-train", "64", "--n-test", "32", "-q"],
        "B probe": probekit + ["probe", "-f", str(feats / "train.h5"), "-E", str(feats / "eval.h5"), "--fusion",
                               "global", "--epochs", "30", "--out", str(work / "probe"), "--overwrite", "-q",
                               "--device", "cpu", "--own-loss-weights", "1"],  # the load measured before the grid
    }


def timed(cmds: list[list[str]], env: dict[str, str]) -> list[float]:
    """Start every command at once; the wall time of each."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    ends = [None] * len(procs)
    while any(e is None for e in ends):
        for i, p in enumerate(procs):
            if ends[i] is None and p.poll() is not None:
                ends[i] = time.perf_counter() - start
                if p.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmds[i])} failed: {p.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    return ends


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="probekit-bench-load-"))
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    try:
        # The probe's features: the demo's, made once.
        subprocess.run([sys.executable, "-m", "probekit", "demo", "--out", str(work / "feats"), "--n-train", "128",
                        "--n-test", "64", "--no-control", "-q"], check=True, env=base_env, stdout=subprocess.DEVNULL)
        rows = []
        for name, (env_extra, extra) in SETTINGS.items():
            env = {**base_env, **env_extra}
            cmds = commands(work, extra)
            alone = {k: statistics.median(timed([c], env)[0] for _ in range(args.repeats)) for k, c in cmds.items()}
            together = [timed(list(cmds.values()), env) for _ in range(args.repeats)]
            both = {k: statistics.median(t[i] for t in together) for i, k in enumerate(cmds)}
            row = {"setting": name, "alone_s": {k: round(v, 1) for k, v in alone.items()},
                   "together_s": {k: round(v, 1) for k, v in both.items()},
                   "slowdown": {k: round(both[k] / alone[k], 2) for k in cmds}}
            rows.append(row)
            print(row, flush=True)
        write_result("load", {"settings": {"repeats": args.repeats, "cores": os.cpu_count(),
                                           "commands": {k: " ".join(v[2:]) for k, v in commands(work, []).items()}},
                              "rows": rows})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
