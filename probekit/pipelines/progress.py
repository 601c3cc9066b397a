"""One progress display for a suite: cells done / running / pending / failed, and an ETA from measured times.

The ETA is what the cells still to run would take at the rates measured so far: seconds per unit of work
(samples for extraction, trials for probes: learning rates, own-loss weights and seeds), per kind of cell,
from the cells finished in this run and the stamps of earlier ones. A kind not measured yet has no rate, and
the display says so rather than guessing. Several workers divide the remaining time by their number.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from probekit.pipelines.cells import Cell

OFF_TTY_EVERY_S = 30.0  # off a terminal the status goes to a log: a line at most this often


@dataclass
class Rates:
    """Seconds per unit of work, per kind of cell. Probe rates are per head, fusion and task: a DPT trial is
    not a linear one, and a linear trial that fuses eight maps, each with its own read-out of 256 depth bins,
    costs many single-map segmentation trials (measured on the demo: from 2x to 9x)."""

    seconds: dict[str, float] = field(default_factory=dict)
    units: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def group(cell: Cell) -> str:
        head = getattr(cell, "head", None)
        fusion, task = getattr(cell, "fusion", None), getattr(cell, "task", None)
        detail = f":{fusion}:{task}" if isinstance(fusion, str) and isinstance(task, str) else ""
        return f"{cell.kind}:{head}{detail}" if head else cell.kind

    def add(self, cell: Cell, seconds: float, units: float) -> None:
        g = self.group(cell)
        self.seconds[g] = self.seconds.get(g, 0.0) + seconds
        self.units[g] = self.units.get(g, 0.0) + max(units, 1e-9)

    def rate(self, cell: Cell) -> float | None:
        g = self.group(cell)
        if g in self.units:
            return self.seconds[g] / self.units[g]
        if cell.kind in ("merge", "combine", "choose", "report"):
            return 0.0  # bookkeeping: seconds at most
        return None


class Progress:
    """The display. ``write`` prints a line above it; on a terminal the status line is redrawn in place."""

    def __init__(self, name: str, total: int, workers: int = 1, enabled: bool = True,
                 echo: Callable[[str], None] = print, stream=None):
        self.name, self.total, self.workers, self.enabled, self.echo = name, total, max(1, workers), enabled, echo
        self.stream = stream or sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.rates = Rates()
        self.counts = {"done": 0, "running": 0, "pending": total, "failed": 0}
        self.remaining: dict[str, Cell] = {}
        self.units: dict[str, float] = {}
        self.running: dict[str, tuple[Cell, float, float]] = {}  # id -> (cell, started, ticks)
        self.started = time.perf_counter()
        self._last = ""
        self._printed = -OFF_TTY_EVERY_S

    def write(self, line: str) -> None:
        self._clear()
        self.echo(line)
        self._draw()

    def plan(self, cells: list[Cell], measured: list[tuple[Cell, float, float]]) -> None:
        """The cells this run will run; the stamps of earlier runs (cell, seconds, units) seed the rates."""
        self.remaining = {c.id: c for c in cells}
        self.units = {c.id: c.units() for c in cells}  # computed once: the display redraws on every tick
        for cell, seconds, units in measured:
            self.rates.add(cell, seconds, units)
        self._draw(force=True)

    def start(self, cell: Cell) -> None:
        self.running[cell.id] = (cell, time.perf_counter(), 0.0)
        self._count()
        self._draw()

    def tick(self, cell_id: str, n: float = 1) -> None:
        if cell_id in self.running:
            cell, started, ticks = self.running[cell_id]
            self.running[cell_id] = (cell, started, ticks + n)
            self._draw()

    def finish(self, cell: Cell, ok: bool, seconds: float, units: float | None = None) -> None:
        self.running.pop(cell.id, None)
        self.remaining.pop(cell.id, None)
        # a cell that reused finished work (no samples extracted, no trial trained) says nothing about the rate
        if ok and seconds > 0 and (units or cell.kind not in ("extract", "probe")):
            self.rates.add(cell, seconds, units or self.units.get(cell.id) or cell.units())
        self.counts["done" if ok else "failed"] += 1
        self._count()
        self._draw(force=True)

    def skip(self, cell: Cell, ok: bool) -> None:
        """A cell settled without running: blocked by a failed one, or done already."""
        self.remaining.pop(cell.id, None)
        self.counts["done" if ok else "failed"] += 1
        self._count()

    def _count(self) -> None:
        self.counts["running"] = len(self.running)
        self.counts["pending"] = self.total - self.counts["done"] - self.counts["failed"] - len(self.running)

    def eta(self) -> tuple[float | None, list[str]]:
        """Seconds left (None when some kind still to run has no measured rate) and the kinds not measured."""
        left, unknown = self._left()
        return (None if unknown else left), unknown

    def _left(self) -> tuple[float, list[str]]:
        """Seconds the cells of measured kinds still need (per worker), and the kinds not measured: with
        unmeasured kinds left, the seconds are a lower bound."""
        left, unknown = 0.0, set()
        now = time.perf_counter()
        for cid, cell in self.remaining.items():
            rate = self.rates.rate(cell)
            if rate is None:
                unknown.add(Rates.group(cell))
                continue
            units = self.units.get(cid) or cell.units()
            expected = rate * units
            if cid in self.running:
                _, started, ticks = self.running[cid]
                done = min(ticks / units, 1.0) if units else 0.0
                expected = max(expected * (1 - done), 0.0) if ticks else max(expected - (now - started), 0.0)
            left += expected
        return left / self.workers, sorted(unknown)

    def line(self) -> str:
        c = self.counts
        left, unknown = self._left()
        eta = f"ETA {_clock(left)}" if not unknown else f"ETA after the first {_kinds(unknown)} cell" + (
            f" (at least {_clock(left)})" if left >= 1 else "")
        return (f"suite {self.name}: {c['done']} done, {c['running']} running, {c['pending']} pending, "
                f"{c['failed']} failed; {_clock(time.perf_counter() - self.started)} elapsed, {eta}")

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        text = self.line()
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif force and text.split(";")[0] != self._last.split(";")[0] and (
                time.perf_counter() - self._printed >= OFF_TTY_EVERY_S):
            print(text, file=self.stream, flush=True)  # off a terminal (a log): a line now and then
            self._printed = time.perf_counter()
        self._last = text

    def _clear(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\033[K" + self.line() + "\n")
            self.stream.flush()


def _kinds(groups: list[str], shown: int = 2) -> str:
    names = [g.replace(":", " ") for g in groups]
    if len(names) <= shown + 1:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} other kinds of"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
