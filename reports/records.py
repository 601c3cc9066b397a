"""Reading result records for reports: every schema version this project has written, duplicates resolved.

Reports read records only (never probe or extractor internals). A duplicate is a second record of the same
(dataset, extractor, task, probe name, eval split); the newest (by creation time) wins and the others are
listed, so a table never silently mixes reruns.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probekit.errors import ProbekitError
from probekit.results import SCHEMA_VERSION, find_records, read_record

READABLE_VERSIONS = tuple(range(1, SCHEMA_VERSION + 1))


@dataclass
class RecordSet:
    records: list[dict[str, Any]]
    versions: Counter = field(default_factory=Counter)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (kept, dropped) paths
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of records skipped as invalid

    def summary(self) -> str:
        versions = ", ".join(f"schema v{v}: {n}" for v, n in sorted(self.versions.items()))
        dup = (f"; {len(self.duplicates)} duplicate(s) resolved newest-first" if self.duplicates
               else "; no duplicates")
        bad = (f"; {len(self.invalid)} invalid record(s) skipped: {', '.join(p for p, _ in self.invalid[:3])}"
               + (", ..." if len(self.invalid) > 3 else "") if self.invalid else "")
        return f"{len(self.records)} result records ({versions}){dup}{bad}"


def identity(rec: dict[str, Any]) -> tuple:
    eval_split = rec.get("features", {}).get("eval", {}).get("split")
    return (rec.get("dataset"), rec.get("extractor"), rec.get("task"), rec.get("probe", {}).get("name"), eval_split)


def load_records(paths: list[str | Path], skip_invalid: bool = False) -> RecordSet:
    """All records under ``paths`` (searched recursively), upgraded to the newest schema's field names.

    An invalid record (not JSON, incomplete, or a main score that is not a finite number) stops the load with its
    path named, unless ``skip_invalid``: then it is left out and listed in ``RecordSet.invalid`` (and in the
    summary).
    """
    found = find_records(paths)
    if not found:
        raise ProbekitError(f"no result.json under {', '.join(map(str, paths))}")
    versions: Counter = Counter()
    newest: dict[tuple, dict[str, Any]] = {}
    duplicates, invalid = [], []
    for path in found:
        try:
            rec = read_record(path)
        except ProbekitError as exc:
            if not skip_invalid:
                raise ProbekitError(f"{exc}. Pass --skip-invalid to leave it out and report the others.") from None
            invalid.append((str(path), str(exc)))
            continue
        versions[rec["schema_version"]] += 1
        key = identity(rec)
        if key in newest:
            old = newest[key]
            keep, drop = (rec, old) if _created(rec) >= _created(old) else (old, rec)
            duplicates.append((keep["_path"], drop["_path"]))
            newest[key] = keep
        else:
            newest[key] = rec
    if not newest:
        raise ProbekitError(f"no readable result.json under {', '.join(map(str, paths))} ({len(invalid)} skipped)")
    return RecordSet(records=list(newest.values()), versions=versions, duplicates=duplicates, invalid=invalid)


def _created(rec: dict[str, Any]) -> str:
    return str(rec.get("provenance", {}).get("created", ""))


# -- what a recorded name can do -----------------------------------------------------------------
# Reports ask the registered classes (probekit.registries) by the name a record holds; a name not registered (a
# record of a removed or toy task or fusion, a zero-shot map) falls back so that old records still render.
def task_can(task: str | None, attr: str, default: Any = None) -> Any:
    """What the task class registered as ``task`` says (``order``, ``title``, ``main_metric``, ...)."""
    from probekit.registries import TASKS, capability

    return capability(TASKS, task, attr, default)


def fusion_can(fusion: str | None, attr: str, default: Any = False) -> Any:
    """What the fusion class registered as ``fusion`` says (``reads_one_map``, ``learns_weights``, ...)."""
    from probekit.registries import FUSIONS, capability

    return capability(FUSIONS, fusion, attr, default)


def is_task(task: str | None) -> bool:
    from probekit.registries import TASKS

    return bool(task) and task in TASKS


def task_key(task: str) -> tuple:
    """Tasks in the order their classes give (seg, saliency, depth), tasks not registered after them by name."""
    return (task_can(task, "order", 9), task)


def task_title(task: str) -> str:
    return task_can(task, "title", None) or task


def task_names() -> list[str]:
    """Every registered task, in order."""
    from probekit.registries import TASKS

    return sorted(TASKS.names(), key=task_key)
