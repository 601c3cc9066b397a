"""Shared helpers for the benchmarks: interleaved timing, result files, in-memory stand-ins for baselines."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine() -> dict[str, Any]:
    import torch

    from probekit.provenance import base_provenance

    prov = base_provenance()
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "packages": prov["packages"], "git": prov["git"], "probekit_version": prov["probekit_version"]}


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int = 3, warmup: bool = True) -> dict[str, dict]:
    """Time each variant ``repeats`` times, round-robin (so drifting machine load hits all alike).

    Returns {name: {"median_s", "runs_s"}}; ratios are taken between medians.
    """
    if warmup:
        for fn in variants.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(r), "runs_s": [round(x, 4) for x in r]} for name, r in runs.items()}


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path


class MemoryDataset:
    """The first ``n`` samples of a dataset, rendered once and held in RAM: both sides of a comparison then
    read identical samples at no cost, so only what is being compared differs."""

    def __init__(self, dataset, n: int):
        self.base = dataset
        self.samples = [dataset[i] for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples[i]

    def sample_id(self, i: int) -> str:
        return self.samples[i].id

    def reference(self) -> dict[str, Any]:
        return self.base.reference()


def memory_reader_class(preloaded: dict | None = None):
    """A FeatureReader that loads the whole file into RAM on opening: the baseline of the HDF5-vs-RAM and
    peak-memory benchmarks (what probekit deliberately does not do). With ``preloaded`` (a dict), each file is
    loaded once and kept there, so later readers of it start with the arrays already in RAM."""
    from probekit.store import FeatureReader

    class MemoryReader(FeatureReader):
        def __init__(self, path, allow_incomplete: bool = False):
            super().__init__(path, allow_incomplete)
            key = str(path)
            if preloaded is not None and key in preloaded:
                self._arrays = preloaded[key]
                return
            self._arrays = {f"features/{k}": self._file[f"features/{k}"][...] for k in self.keys}
            self._arrays.update({f"labels/{n}": self._file[f"labels/{n}"][...] for n in self.label_names})
            if preloaded is not None:
                preloaded[key] = self._arrays

        def _read_rows(self, ds, positions, what):
            return self._arrays[ds.name.lstrip("/")][np.asarray(positions, dtype=np.int64)]

    return MemoryReader


def current_rss_mb() -> float:
    """Resident set size of this process now (Linux /proc)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class PeakRSS:
    """Samples this process's RSS every ``interval`` s on a thread; ``peak_mb`` is the highest seen.

    getrusage's lifetime maximum would be set by library imports (CUDA builds of torch map large libraries),
    hiding what probing itself adds; sampling from a baseline taken after the imports shows that."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval, self.peak_mb, self.baseline_mb = interval, 0.0, current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, current_rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())
