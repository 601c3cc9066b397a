"""A suite's plan: its cells in the order they would run in one process, with their dependencies.

``plan(suite)`` builds the cells (extract -> [merge] -> [combine] -> probe -> choose -> probe ... -> report);
``Plan.to_run`` is what a run does (every cell not done, and every cell after one that runs); ``dry_run``
prints the plan with each cell's state and what it would write, loading each model once to know its map
shapes, and counts the cells that would fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from probekit.errors import ProbekitError
from probekit.pipelines.cells import (Cell, CellContext, ChooseCell, CombineCell, ExtractCell, MergeCell, ProbeCell,
                                      ReportCell, plan_file)
from probekit.pipelines.suite import Suite

ROLES = ("train", "val", "eval")  # the train split first: it holds the channel projection the others reuse


@dataclass
class Plan:
    suite: Suite
    cells: dict[str, Cell] = field(default_factory=dict)

    def add(self, cell: Cell) -> Cell:
        if cell.id in self.cells:
            raise ProbekitError(f"{self.suite.source}: two cells would be {cell.id}; give the probes that make "
                                "them different settings, or remove one")
        self.cells[cell.id] = cell
        return cell

    def cell(self, cell_id: str) -> Cell:
        if cell_id not in self.cells:
            import difflib

            close = difflib.get_close_matches(cell_id, list(self.cells), n=1, cutoff=0.5)
            raise ProbekitError(f"suite {self.suite.name} has no cell {cell_id!r}"
                                + (f"; did you mean {close[0]!r}?" if close else
                                   f" (its cells are listed in {plan_file(self.suite).with_name('cells.json')})"))
        return self.cells[cell_id]

    def dependents(self) -> dict[str, list[str]]:
        children: dict[str, list[str]] = {cid: [] for cid in self.cells}
        for cell in self.cells.values():
            for parent in cell.needs + cell.after:
                children[parent].append(cell.id)
        return children

    def to_run(self, overwrite: bool = False) -> list[str]:
        """Every cell not done (all of them with ``overwrite``), and every cell after one of those: a cell that
        runs may change what the cells after it read."""
        run = {cid for cid, cell in self.cells.items() if overwrite or cell.state()[0] != "done"}
        children, todo = self.dependents(), list(run)
        while todo:
            for child in children[todo.pop()]:
                if child not in run:
                    run.add(child)
                    todo.append(child)
        return [cid for cid in self.cells if cid in run]

    def write(self) -> Path:
        """The resolved suite and the cells' descriptions, where every process that runs a cell reads them."""
        import yaml

        from probekit.atomic import write_text

        path = plan_file(self.suite)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, "# The suite as its cells read it (written by `probekit run`; overrides applied)\n"
                   + yaml.safe_dump(self.suite.to_raw(), sort_keys=False))
        write_text(path.with_name("cells.json"), json.dumps([c.describe() for c in self.cells.values()], indent=1))
        return path


def plan(suite: Suite, overwrite: bool = False) -> Plan:
    """The suite's cells, in the order one process runs them."""
    p = Plan(suite)
    final: dict[tuple[str, str, str], str] = {}  # (label, dataset, role) -> the cell that finishes the file
    for label, spec in suite.extractors.items():
        for ds_name, ds_spec in suite.datasets.items():
            for role in (r for r in ROLES if r in ds_spec):
                needs = [final[(label, ds_name, "train")]] if role != "train" and _projected(spec) else []
                final[(label, ds_name, role)] = _extraction(p, label, ds_name, role, needs, overwrite)
    sources = [(label, [label], spec, None) for label, spec in suite.extractors.items()]
    for ds_name in suite.datasets:
        combos = {c["name"]: p.add(CombineCell(suite, c["name"], list(c["of"]), ds_name,
                                               [final[(part, ds_name, r)] for part in c["of"]
                                                for r in ROLES if r in suite.datasets[ds_name]]))
                  for c in suite.combine}
        for label, parts, spec, _ in sources + [(c["name"], list(c["of"]), c, None) for c in suite.combine]:
            inputs = [combos[label].id] if label in combos else [final[(part, ds_name, r)] for part in parts
                                                                   for r in ROLES if r in suite.datasets[ds_name]]
            _probes(p, label, parts, ds_name, suite.probes_of(spec), inputs, combos.get(label))
    p.add(ReportCell(suite, after=[c.id for c in p.cells.values() if isinstance(c, ProbeCell)]))
    return p


def _projected(spec: dict) -> bool:
    return bool(spec.get("channels") or spec.get("drop_massive"))


def _extraction(p: Plan, label: str, ds_name: str, role: str, needs: list[str], overwrite: bool) -> str:
    parts = int(p.suite.extractors[label].get("parts") or 1)
    if parts == 1:
        return p.add(ExtractCell(p.suite, label, ds_name, role, needs=needs)).id
    if overwrite:
        raise ProbekitError(f"extractors.{label} is split into {parts} parts, and --overwrite cannot redo a split "
                            f"extraction: remove {p.suite.feature_path(label, ds_name, role)} and its .parts "
                            "folder, then run again")
    ids = [p.add(ExtractCell(p.suite, label, ds_name, role, part=(i, parts), needs=needs)).id for i in range(parts)]
    return p.add(MergeCell(p.suite, label, ds_name, role, ids)).id


def _probes(p: Plan, source: str, parts: list[str], ds_name: str, probes: list[dict], inputs: list[str],
            combo: CombineCell | None) -> None:
    choices: dict[str, ChooseCell] = {}
    for probe in probes:
        for task in probe["tasks"]:
            choose = choices.get(probe.get("best_map_of", ""))
            cell = ProbeCell(p.suite, _probe_id(p, source, ds_name, task, probe), source, parts, ds_name, task,
                             probe, needs=inputs + ([choose.id] if choose else []), files_from=combo,
                             choice_from=choose)
            p.add(cell)
            if probe.get("each_map") and task not in choices:
                choices[task] = p.add(ChooseCell(p.suite, source, ds_name, task, cell))  # type: ignore[assignment]


def _probe_id(p: Plan, source: str, ds_name: str, task: str, probe: dict) -> str:
    from probekit.pipelines.cells import settings_hash
    from probekit.probes.config import probe_stem

    stem = probe_stem(probe.get("head", "linear"), probe.get("fusion", "single"), probe.get("fusion_level", "auto"))
    what = ("each-map" if probe.get("each_map") else f"best-map-of-{probe['best_map_of']}" if probe.get("best_map_of")
            else f"keys-{settings_hash(probe['keys'])[:8]}" if probe.get("keys") else "fused")
    base = f"probe/{source}/{ds_name}/{task}/{stem}/{what}"
    cell_id, n = base, 2
    while cell_id in p.cells:  # the same probe twice with other seeds or rates
        cell_id, n = f"{base}-{n}", n + 1
    return cell_id


# -- the dry run -------------------------------------------------------------------------------------------
@dataclass
class Preview:
    state: str
    detail: str = ""
    pending_bytes: int = 0
    maps: list[str] | None = None  # the maps a finished file will hold (extraction cells)


def dry_run(p: Plan, echo: Callable[[str], None], overwrite: bool = False) -> dict[str, Preview]:
    """Print the plan: each cell's state (done, stale, pending, failed: would fail, blocked: needs a cell that
    would fail) and what it would write. Loads each model once, one at a time."""
    from probekit.extractors.plan import free_bytes, human

    ctx = CellContext(overwrite=overwrite, echo=lambda line: None, models={})
    previews: dict[str, Preview] = {}
    last_use = {c.label_: c.id for c in p.cells.values() if isinstance(c, ExtractCell)}
    for cell in p.cells.values():
        blocked = [n for n in cell.needs if previews[n].state in ("failed", "blocked")]
        if blocked:
            previews[cell.id] = Preview("blocked", f"needs {', '.join(blocked)}, which would fail")
        else:
            try:
                previews[cell.id] = _preview(p, cell, ctx, previews)
            except ProbekitError as exc:
                previews[cell.id] = Preview("failed", str(exc))
        if isinstance(cell, ExtractCell) and last_use[cell.label_] == cell.id:
            ctx.models.pop(cell.label_, None)  # type: ignore[union-attr]  # its cells are planned: free the model
    echo(f"suite {p.suite.name} ({p.suite.source}) -> {p.suite.out}")
    for cell in p.cells.values():
        view = previews[cell.id]
        echo(f"  [{view.state:>7}] {cell.label}" + (f"  ({view.detail})" if view.detail else ""))
    pending = sum(v.pending_bytes for v in previews.values())
    echo(f"to write: {human(pending)} of features; {human(free_bytes(p.suite.out))} free on {p.suite.out}'s disk")
    return previews


def _preview(p: Plan, cell: Cell, ctx: CellContext, previews: dict[str, Preview]) -> Preview:
    from probekit.extractors.plan import human

    if isinstance(cell, ExtractCell):
        _, plan_ = cell.preview(ctx)
        maps = list(plan_.raw_shapes)
        if getattr(plan_, "finished", False) and not cell.part:
            return Preview("done", f"{plan_.num_samples} images, {human(plan_.total_bytes)}", maps=maps)
        detail = (f"{plan_.num_samples} images, {human(plan_.total_bytes)}, {human(plan_.pending_bytes)} to write"
                  + (f", {plan_.shards_done} of {plan_.num_shards} shards done" if plan_.shards_done else "")
                  + (f"; its channel projection comes from {plan_.waits_for}, which does not exist yet (the train "
                     "split runs first)" if plan_.waits_for else ""))
        return Preview("pending", detail, plan_.pending_bytes, maps)
    if isinstance(cell, ProbeCell):
        _would_fail(cell, [m for n in cell.needs for m in (_maps(p, n, previews) or [])])
    state, detail = cell.state()
    return Preview(state, detail)


def _maps(p: Plan, cell_id: str, previews: dict[str, Preview]) -> list[str] | None:
    """The maps a cell's output will hold, from the extraction plans (None: not a feature cell)."""
    cell = p.cells[cell_id]
    if isinstance(cell, ExtractCell):
        return previews[cell_id].maps if cell.role == "train" else None
    if isinstance(cell, MergeCell):
        return _maps(p, cell.needs[0], previews)
    if isinstance(cell, CombineCell):
        return [m for n in cell.needs for m in (_maps(p, n, previews) or [])]
    return None


def _would_fail(cell: ProbeCell, maps: list[str]) -> None:
    """What the probe would refuse, known from the maps the extractions will write."""
    if not maps:
        return
    from probekit.probes.config import fusion_class

    fusion = cell.fusion
    cls = fusion_class(fusion)
    if len(maps) < cls.min_maps:
        offers = "one" if len(maps) == 1 else str(len(maps))
        raise ProbekitError(f"{fusion} fusion {'learns weights over' if cls.learns_weights else 'fuses'} several "
                            f"maps, and {cell.source} offers {offers} ({', '.join(maps)}); probe it with fusion: single")
    missing = [k for k in cell.probe.get("keys") or [] if k not in maps and not any(m.endswith("/" + k) for m in maps)]
    if missing:
        raise ProbekitError(f"{cell.source} will hold no map {missing[0]!r}; its maps: {', '.join(maps)}")
