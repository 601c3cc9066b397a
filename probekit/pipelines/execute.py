"""Running a suite: check it, plan it, and walk the plan with a launcher (or run one cell alone).

``run_suite`` is what `probekit run SUITE` does: the suite's inputs are checked on disk before any work (every
problem listed at once), the plan is written to OUT/plan/ (the resolved suite and every cell's description),
and the cells not done run where the launcher puts them; the report comes last. ``run_cell`` is `probekit run
SUITE --cell ID`: one cell in this process, as a launcher's worker runs it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from probekit.errors import ProbekitError
from probekit.pipelines.cells import Cell, ProbeCell, ReportCell
from probekit.pipelines.launchers import InProcess, LocalJobs, Outcome, Slurm, execute_cell, log_tail
from probekit.pipelines.plan import Plan, dry_run, plan
from probekit.pipelines.progress import Progress
from probekit.pipelines.suite import Suite, check_inputs


@dataclass
class CellStatus:
    cell: Cell
    status: str = "pending"  # done (before this run) | ran | failed | blocked | pending | stale (dry run)
    detail: str = ""

    @property
    def label(self) -> str:
        return self.cell.label

    @property
    def kind(self) -> str:
        return self.cell.kind


@dataclass
class SuiteRun:
    suite: Suite
    cells: list[CellStatus] = field(default_factory=list)

    def summary(self) -> str:
        counts = Counter(c.status for c in self.cells)
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    @property
    def failed(self) -> list[CellStatus]:
        return [c for c in self.cells if c.status in ("failed", "blocked")]


def check(suite: Suite) -> None:
    problems = check_inputs(suite)
    if problems:
        raise ProbekitError(f"{suite.source}: the suite cannot run; "
                            + (problems[0] if len(problems) == 1 else
                               f"{len(problems)} problems:\n  " + "\n  ".join(problems)))


def run_suite(suite: Suite, *, dry_run: bool = False, overwrite: bool = False, progress: bool = True,
              echo: Callable[[str], None] = print, launcher: str | None = None, jobs: int | None = None,
              slurm: dict[str, Any] | None = None) -> SuiteRun:
    """Extract, probe and report as the suite says; returns what happened to every cell. ``launcher``: "local"
    (``jobs`` worker processes; 1: this process) or "slurm" (``slurm``: partition, time, gpus_per_job, ...,
    over the suite's ``launcher:`` block)."""
    check(suite)
    p = plan(suite, overwrite)
    if dry_run:
        return _dry_run(p, echo, overwrite)
    from probekit.atomic import check_writable_dir

    check_writable_dir(suite.out, "out")
    plan_path = p.write()
    settings = {**suite.launcher, **{k: v for k, v in (slurm or {}).items() if v is not None}}
    kind = launcher or suite.launcher.get("name") or "local"
    workers = int(jobs or suite.launcher.get("jobs") or 1)
    if kind == "slurm":
        chosen: Any = Slurm(plan_path, settings, overwrite, cluster=settings.get("cluster", "slurm"))
    elif workers > 1:
        chosen = LocalJobs(plan_path, workers, overwrite)
    else:
        chosen = InProcess(overwrite)
    started = time.perf_counter()
    state = drive(p, chosen, overwrite=overwrite, progress=progress, echo=echo)
    echo(f"suite {suite.name}: {state.summary()} in {time.perf_counter() - started:.0f} s")
    for cell in state.failed:
        echo(f"  {cell.status}: {cell.label}: {cell.detail}")
    return state


def _dry_run(p: Plan, echo, overwrite: bool) -> SuiteRun:
    previews = dry_run(p, echo, overwrite)
    state = SuiteRun(p.suite, [CellStatus(c, previews[c.id].state, previews[c.id].detail) for c in p.cells.values()])
    bad = state.failed
    if bad:
        echo(f"{len(bad)} cell(s) would fail (marked failed or blocked above): fix the suite and run the dry run again")
    return state


def drive(p: Plan, launcher, *, overwrite: bool = False, progress: bool = True,
          echo: Callable[[str], None] = print) -> SuiteRun:
    """Walk the plan: start each cell when the cells it needs are done (the report: when every probe has
    finished), block the cells after a failed one, report failures with their log's end and go on."""
    todo = p.to_run(overwrite)
    status = {cid: CellStatus(cell, "pending" if cid in todo else "done") for cid, cell in p.cells.items()}
    parallel = min(getattr(launcher, "parallel", launcher.capacity), max(1, len(todo)))
    bar = Progress(p.suite.name, len(todo), workers=parallel, enabled=progress, echo=echo)
    launcher.on_tick = bar.tick
    bar.plan([p.cells[c] for c in todo], _measured(p))
    notes: set[str] = set()
    running: set[str] = set()
    try:
        while True:
            _block(p, status, bar)
            ready = [cid for cid in todo if status[cid].status == "pending" and _ready(p.cells[cid], status)]
            ready = ready[:max(0, launcher.capacity - len(running))]
            if ready:
                remaining = [p.cells[c] for c in todo if status[c].status == "pending"]
                launcher.start([p.cells[c] for c in ready], remaining)
                for cid in ready:
                    status[cid].status = "running"
                    running.add(cid)
                    bar.start(p.cells[cid])
            if not running:
                break
            for outcome in launcher.wait():
                running.discard(outcome.id)
                _settle(p.cells[outcome.id], outcome, status[outcome.id], bar, notes)
    finally:
        launcher.close()
        bar.close()
    return SuiteRun(p.suite, list(status.values()))


def _ready(cell: Cell, status: dict[str, CellStatus]) -> bool:
    return (all(status[n].status in ("done", "ran") for n in cell.needs)
            and all(status[a].status not in ("pending", "running") for a in cell.after))


def _block(p: Plan, status: dict[str, CellStatus], bar: Progress) -> None:
    changed = True
    while changed:
        changed = False
        for cid, entry in status.items():
            if entry.status != "pending":
                continue
            failed = [n for n in p.cells[cid].needs if status[n].status in ("failed", "blocked")]
            if failed:
                entry.status, entry.detail = "blocked", f"needs {', '.join(failed)}, which failed"
                bar.write(f"blocked: {entry.label} ({entry.detail})")
                bar.skip(entry.cell, ok=False)
                changed = True


def _settle(cell: Cell, outcome: Outcome, entry: CellStatus, bar: Progress, notes: set[str]) -> None:
    bar.finish(cell, outcome.ok, outcome.seconds, outcome.ticks or None)
    if not outcome.ok:
        entry.status, entry.detail = "failed", outcome.error
        tail = log_tail(cell)
        bar.write(f"FAILED: {cell.label}: {outcome.error}\n  log: {cell.home / 'log.txt'}"
                  + ("".join(f"\n  | {line}" for line in tail) if tail else ""))
        return
    entry.status = "ran"
    for note in outcome.info.get("notes") or []:
        if note not in notes:
            notes.add(note)
            bar.write(f"note: {note}")
    if isinstance(cell, ProbeCell):
        for line in _score_lines(outcome.info.get("trained_runs") or []):
            bar.write(line)
    if isinstance(cell, ReportCell) and outcome.info.get("written"):
        _print_report(cell, outcome.info["written"], bar.write)


def _score_lines(runs: list[str]) -> list[str]:
    from probekit import scores
    from probekit.results import read_record

    lines = []
    for run in runs:
        try:
            rec = read_record(run)
        except (ProbekitError, OSError):
            continue
        unit = scores.info(rec["main_score_name"], rec)["unit"]
        lines.append(f"{rec['extractor']:<24} {rec['task']:<8} {rec['main_score_name']:<5} "
                     f"{scores.format_score(rec['main_score'], unit, rec.get('main_score_std')):>14}  "
                     f"{rec['probe']['name']}")
    return lines


def _print_report(cell: ReportCell, written: dict[str, str], say) -> None:
    from pathlib import Path

    suite = cell.suite
    say("")
    say(Path(written["leaderboard"]).read_text())
    say(f"  report:  {written['html']}\n  tables:  {written['markdown']}  {written['csv']}  "
        f"{written['leaderboard']}\n  figures: {suite.out / suite.report / 'figures'}\n  runs:    {suite.results}")


def _measured(p: Plan) -> list[tuple[Cell, float, float]]:
    """(cell, seconds, units) of every cell an earlier run finished: the rates the ETA starts from."""
    out = []
    for cell in p.cells.values():
        stamp = cell.stamp()
        if stamp and stamp.get("status") == "done" and stamp.get("seconds") and stamp.get("ticks"):
            out.append((cell, float(stamp["seconds"]), float(stamp["ticks"])))
    return out


def run_cell(suite: Suite, cell_id: str, overwrite: bool = False, echo: Callable[[str], None] = print) -> Outcome:
    """One cell in this process, as a launcher's worker runs it (`probekit run SUITE --cell ID`); the cells it
    needs must be done."""
    p = plan(suite, overwrite)
    cell = p.cell(cell_id)
    for need in cell.needs:
        needed = p.cells[need]
        state, _ = needed.state()
        made = bool(needed.outputs()) and all(path.exists() for path in needed.outputs())
        if state != "done" and not made:
            raise ProbekitError(f"cell {cell_id} needs {need}, which is {state}: run it first (or run the whole "
                                "suite, which runs what is not done)")
    from probekit.pipelines.cells import plan_file

    if os.path.abspath(suite.source) != os.path.abspath(plan_file(suite)):
        p.write()  # the descriptions the cell's log points to
    outcome = execute_cell(cell, overwrite)
    if outcome.ok:
        echo(f"{cell.label}: done in {outcome.seconds:.1f} s (log: {cell.home / 'log.txt'})")
    else:
        echo(f"FAILED: {cell.label}: {outcome.error} (log: {cell.home / 'log.txt'})")
    return outcome

