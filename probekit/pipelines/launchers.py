"""Where a suite's cells run: this process, N local worker processes, or Slurm jobs through submitit.

A launcher only decides where: every cell runs through ``execute_cell`` (its log and stamp in its home
folder, OUT/cells/ID/), and ``drive`` walks the plan the same way for all of them: it starts a cell when the
cells it needs are done, marks it blocked when one of them failed, reports a failure with the last lines of
its log and goes on with the others, and keeps one progress display.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probekit.errors import ProbekitError
from probekit.pipelines.cells import LOG_FILE, Cell, CellContext, ExtractCell

LOG_TAIL = 12  # lines of a failed cell's log shown with its failure


@dataclass
class Outcome:
    id: str
    ok: bool
    seconds: float = 0.0
    ticks: float = 0.0
    error: str = ""
    info: dict[str, Any] = field(default_factory=dict)


# -- one cell, anywhere ------------------------------------------------------------------------------------
def execute_cell(cell: Cell, overwrite: bool = False, models: dict | None = None, tick=None) -> Outcome:
    """Run one cell with its output going to its log; write its stamp (done or failed). Never raises for the
    cell's own failure (that is the outcome); Ctrl-C still stops it."""
    cell.home.mkdir(parents=True, exist_ok=True)
    ticks = [0.0]

    def count(n: float) -> None:
        ticks[0] += n
        if tick is not None:
            tick(n)

    with open(cell.home / LOG_FILE, "w", buffering=1) as log:
        log.write(f"# {cell.label}\n# cell {cell.id}; rerun alone: probekit run {cell.describe()['suite']} "
                  f"--cell {cell.id}\n")
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                info = cell.run(CellContext(overwrite=overwrite, echo=lambda line: print(line, file=log),
                                            tick=count, models=models))
        except Exception as exc:  # noqa: BLE001 - a failed cell is an outcome: the others go on
            seconds = time.perf_counter() - started
            error = str(exc) if isinstance(exc, ProbekitError) else f"{type(exc).__name__}: {exc}"
            log.write(traceback.format_exc() if not isinstance(exc, ProbekitError) else f"FAILED: {error}\n")
            cell.write_stamp("failed", seconds, ticks[0], {"error": error})
            return Outcome(cell.id, False, seconds, ticks[0], error)
        seconds = time.perf_counter() - started
        log.write(f"# done in {seconds:.1f} s\n")
    cell.write_stamp("done", seconds, ticks[0], info)
    return Outcome(cell.id, True, seconds, ticks[0], info=info)


def outcome_from_disk(cell: Cell, since: float, why: str = "") -> Outcome:
    """A cell run elsewhere: its stamp, if it wrote one after ``since`` (wall time), else a failure that says
    how the process ended and shows the log."""
    stamp = cell.stamp() or {}
    written = (cell.home / "state.json").stat().st_mtime if (cell.home / "state.json").exists() else 0.0
    if stamp and written >= since - 1:
        return Outcome(cell.id, stamp.get("status") == "done", float(stamp.get("seconds") or 0.0),
                       float(stamp.get("ticks") or 0.0), stamp.get("error", ""),
                       {k: v for k, v in stamp.items() if k not in ("status", "error")})
    return Outcome(cell.id, False, error=why or "the cell's process ended without a result")


def log_tail(cell: Cell, n: int = LOG_TAIL) -> list[str]:
    try:
        lines = (cell.home / LOG_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return []
    lines = [line for line in lines if not line.startswith("# ") and not line.startswith("FAILED: ")]
    return lines[-n:]


# -- launchers -----------------------------------------------------------------------------------------------
class InProcess:
    """Today's behaviour: one cell after another in this process, models kept between a backbone's cells."""

    name = "local"
    capacity = 1

    def __init__(self, overwrite: bool = False):
        self.overwrite, self.models, self.queue = overwrite, {}, []
        self.on_tick = lambda cell_id, n: None

    def start(self, cells: list[Cell], remaining: list[Cell]) -> None:
        self.queue.extend((c, remaining) for c in cells)

    def wait(self) -> list[Outcome]:
        cell, remaining = self.queue.pop(0)
        outcome = execute_cell(cell, self.overwrite, self.models, tick=lambda n: self.on_tick(cell.id, n))
        if isinstance(cell, ExtractCell) and not any(isinstance(c, ExtractCell) and c.label_ == cell.label_
                                                     and c.id != cell.id for c in remaining):
            self.models.pop(cell.label_, None)  # its extractions are done: free the model before the next loads
        return [outcome]

    def close(self) -> None:
        self.models.clear()


class LocalJobs:
    """N worker processes on this machine, started once (each imports torch once) and fed one cell at a time.
    With GPUs each worker has its own (round robin over CUDA_VISIBLE_DEVICES or every GPU); on the CPU each
    gets cores // N threads. A worker that dies (killed, out of memory) fails its cell and is replaced."""

    name = "local"

    def __init__(self, plan_path: Path, jobs: int, overwrite: bool = False):
        import multiprocessing

        self.plan_path, self.capacity, self.overwrite = plan_path, jobs, overwrite
        self.mp = multiprocessing.get_context("spawn")  # no fork of a process that may hold CUDA or threads
        self.gpus = visible_gpus()
        self.threads = max(1, (os.cpu_count() or 1) // jobs)
        self.workers: dict[int, Any] = {}
        self.busy: dict[int, tuple[Cell, float]] = {}
        self.on_tick = lambda cell_id, n: None

    def _spawn(self, slot: int):
        env = {"CUDA_VISIBLE_DEVICES": self.gpus[slot % len(self.gpus)]} if self.gpus else {
            var: str(self.threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        ours, theirs = self.mp.Pipe()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # a spawned worker starts from this process's environment
        try:
            proc = self.mp.Process(target=_worker, args=(str(self.plan_path), self.overwrite, theirs, env),
                                   name=f"probekit-worker-{slot}", daemon=True)
            proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        theirs.close()
        self.workers[slot] = (proc, ours)

    def start(self, cells: list[Cell], remaining: list[Cell]) -> None:
        for cell in cells:
            slot = next(k for k in range(self.capacity) if k not in self.busy)
            if slot not in self.workers or not self.workers[slot][0].is_alive():
                self._spawn(slot)
            self.workers[slot][1].send(cell.id)
            self.busy[slot] = (cell, time.time())

    def wait(self) -> list[Outcome]:
        from multiprocessing.connection import wait

        while True:
            conns = {self.workers[slot][1]: slot for slot in self.busy}
            sentinels = {self.workers[slot][0].sentinel: slot for slot in self.busy}
            done = []
            for ready in wait(list(conns) + list(sentinels), timeout=1.0):
                slot = conns.get(ready, sentinels.get(ready))
                if slot not in self.busy:
                    continue
                cell, since = self.busy[slot]
                proc, conn = self.workers[slot]
                message = None
                try:
                    if conn.poll():
                        message = conn.recv()
                except (EOFError, OSError):
                    message = None
                if message is not None and message[0] == "tick":
                    self.on_tick(cell.id, message[1])
                    continue
                if message is None and proc.is_alive():
                    continue
                if message is None:  # the worker died with the cell
                    proc.join(timeout=5)
                    code = proc.exitcode
                    why = (f"its worker process was killed by signal {-code}" if code is not None and code < 0
                           else f"its worker process exited {code}")
                    done.append(outcome_from_disk(cell, since, why))
                    del self.workers[slot]
                else:
                    done.append(outcome_from_disk(cell, since))
                del self.busy[slot]
            if done:
                return done

    def close(self) -> None:
        for proc, conn in self.workers.values():  # only the processes this launcher started
            with contextlib.suppress(OSError):
                conn.send(None)
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        self.workers.clear()


def _worker(plan_path: str, overwrite: bool, conn, env: dict[str, str]) -> None:
    """A local worker: plan the suite once, then run the cells it is sent, one at a time, keeping the last
    backbone it loaded (a split's train, val and eval cells often come in a row)."""
    os.environ.update(env)
    from probekit.pipelines.plan import plan
    from probekit.pipelines.suite import load_suite

    if "OMP_NUM_THREADS" in env:
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    p = plan(load_suite(plan_path))
    models: dict[str, Any] = {}
    while True:
        try:
            cell_id = conn.recv()
        except (EOFError, OSError):
            return
        if cell_id is None:
            return
        cell = p.cell(cell_id)
        if isinstance(cell, ExtractCell) and cell.label_ not in models:
            models.clear()
        outcome = execute_cell(cell, overwrite, models, tick=lambda n: conn.send(("tick", n)))
        conn.send(("done", outcome.ok))


def visible_gpus() -> list[str]:
    """The GPUs cells may use, as CUDA_VISIBLE_DEVICES entries ([] on a machine without CUDA GPUs)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g for g in given.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU workers
        return []


# -- Slurm -----------------------------------------------------------------------------------------------------
SLURM_SETTINGS = {  # the suite's launcher key / command-line option -> submitit's parameter (the sbatch option)
    "partition": "slurm_partition",  # --partition
    "time": "timeout_min",  # --time (minutes)
    "gpus_per_job": "gpus_per_node",  # --gpus-per-node
    "cpus_per_job": "cpus_per_task",  # --cpus-per-task
    "mem_gb": "mem_gb",  # --mem (GB)
    "array_parallelism": "slurm_array_parallelism",  # --array=0-N%P
}


def submitit_parameters(settings: dict[str, Any], name: str) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "timeout_min": 60, "cpus_per_task": 1}
    for key, param in SLURM_SETTINGS.items():
        if settings.get(key) is not None:
            params[param] = settings[key]
    if settings.get("sbatch"):
        params["slurm_additional_parameters"] = {k.lstrip("-").replace("-", "_"): v
                                                 for k, v in settings["sbatch"].items()}
    return params


def run_cells(plan_path: str, cell_ids: list[str], overwrite: bool = False) -> list[dict[str, Any]]:
    """A Slurm job's body (also a fresh process's): run these cells of the suite at ``plan_path`` in turn."""
    from probekit.pipelines.plan import plan
    from probekit.pipelines.suite import load_suite

    p = plan(load_suite(plan_path))
    outcomes = [execute_cell(p.cell(cid), overwrite) for cid in cell_ids]
    return [{"id": o.id, "ok": o.ok, "error": o.error} for o in outcomes]


class Slurm:
    """Cells as Slurm jobs through submitit: the cells ready at once go in one job array (``array_parallelism``
    of them at a time); ``cells_per_job`` packs several into one job (small probes). This process stays to
    submit the cells that become ready; if it is stopped, rerunning the suite resubmits only what is not done."""

    name = "slurm"

    def __init__(self, plan_path: Path, settings: dict[str, Any], overwrite: bool = False, cluster: str = "slurm"):
        try:
            import submitit
        except ImportError:
            raise ProbekitError("--launcher slurm needs submitit: pip install 'probekit[cluster]'") from None
        _quiet_sacct()
        self.plan_path, self.overwrite, self.settings = plan_path, overwrite, settings
        self.per_job = int(settings.get("cells_per_job") or 1)
        self.capacity = 10 ** 6  # Slurm queues them; the array parallelism bounds what runs at once
        self.parallel = int(settings.get("array_parallelism") or 256)
        folder = plan_path.parent.parent / "cells" / "slurm" / "%j"
        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        params = submitit_parameters(settings, f"probekit-{plan_path.parent.parent.name}")
        if cluster != "slurm":  # submitit's local executor takes the generic parameters only
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        self.executor.update_parameters(**params)
        self.jobs: list[tuple[Any, list[Cell], float]] = []
        self.on_tick = lambda cell_id, n: None

    def start(self, cells: list[Cell], remaining: list[Cell]) -> None:
        if not cells:
            return
        groups = [cells[i:i + self.per_job] for i in range(0, len(cells), self.per_job)]
        since = time.time()
        try:
            with self.executor.batch():
                jobs = [self.executor.submit(run_cells, str(self.plan_path), [c.id for c in g], self.overwrite)
                        for g in groups]
        except Exception as exc:  # noqa: BLE001 - sbatch's own message says what the cluster refused
            raise ProbekitError(f"Slurm refused the jobs: {exc}") from None
        self.jobs.extend((job, group, since) for job, group in zip(jobs, groups))

    def wait(self) -> list[Outcome]:
        while True:
            finished = [entry for entry in self.jobs if entry[0].done()]
            if finished:
                self.jobs = [e for e in self.jobs if e not in finished]
                return [self._outcome(job, cell, since) for job, group, since in finished for cell in group]
            time.sleep(1.0)

    def _outcome(self, job, cell: Cell, since: float) -> Outcome:
        why = f"Slurm job {job.job_id} ended in state {job.state}"
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - the job died (killed, out of time): the stamp says the rest
            why = f"Slurm job {job.job_id} failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}"
        return outcome_from_disk(cell, since, why)

    def close(self) -> None:
        for job, _, _ in self.jobs:  # stopped before they finished (Ctrl-C): do not leave them queued
            with contextlib.suppress(Exception):
                job.cancel()


def _quiet_sacct() -> None:
    """A cluster without accounting (a one-node test cluster) makes submitit warn on every poll; the job's
    result file still tells when it is done."""
    import logging

    class NoSacct(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "sacct" not in record.getMessage()

    logging.getLogger("submitit").addFilter(NoSacct())
