"""Run probekit with a fault injected from the test side: production code carries no test hook.

    python -m fault_inject writer-batch:N ARGS...     (``command`` builds it: tests/ on PYTHONPATH)

runs ``probekit ARGS...`` in a process whose extraction writer thread SIGKILLs the process right after it has
written its N-th batch (mid-shard, with the model running ahead of it), once every shard closed before then is
committed: a well-defined state to be killed in. The fault is a patch of ``BackgroundWriter._write`` made when
this module is imported. Worker processes this one spawns (a suite's local launcher uses multiprocessing's
"spawn", which imports this module again as their main module) find the fault in the environment they inherit
and are patched too.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ENV = "PROBEKIT_TEST_FAULT"  # read here only: set by this module for the processes its probekit spawns


def command(fault: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of a subprocess running ``probekit ARGS...`` with ``fault``."""
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "fault_inject", fault, *map(str, args)], {**os.environ, "PYTHONPATH": path}


def install(fault: str) -> None:
    kind, _, after = fault.partition(":")
    if kind != "writer-batch" or not after.isdigit():
        raise SystemExit(f"unknown fault {fault!r}: expected writer-batch:N")
    from probekit.extractors.writer import BackgroundWriter

    original, count = BackgroundWriter._write, {"batches": 0}

    def _write(self, batch) -> None:
        original(self, batch)
        count["batches"] += 1
        if count["batches"] == int(after):
            self._commits.join()  # every closed shard committed
            os.kill(os.getpid(), signal.SIGKILL)

    BackgroundWriter._write = _write


if __name__ == "__main__":
    os.environ[ENV] = sys.argv[1]
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as probekit's main sets it, before torch is imported
    install(sys.argv[1])
    from probekit.cli import main

    sys.argv = ["probekit", *sys.argv[2:]]
    main()
elif os.environ.get(ENV) and __name__ == "__mp_main__":  # a worker spawned by a faulted probekit
    install(os.environ[ENV])
