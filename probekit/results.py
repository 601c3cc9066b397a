"""Versioned result records: one JSON per probe run, at a predictable path.

Schema (version 2) is documented in docs/results.md. Readers accept every version this project
has written (``upgrade`` brings older ones to the current layout); writers always write the newest.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from probekit import atomic, scores
from probekit.errors import ProbekitError

# 2: seeds (main_score as a mean, main_score_std, per_seed, metrics_std), metrics_info (direction, unit)
SCHEMA_VERSION = 2
RESULT_FILE = "result.json"
OVERWRITE_MODES = ("error", "overwrite", "skip", "reuse")


@dataclass
class ResultRecord:
    task: str
    main_score_name: str
    main_score: float
    higher_is_better: bool
    metrics: dict[str, Any]
    extractor: str
    dataset: str
    probe: dict[str, Any]  # fusion, head, feature keys, timestep(s), layer(s)
    config: dict[str, Any]  # every training parameter, seeds included
    features: dict[str, Any]  # {"train": {...}, "eval": {...}}: path, sha-free identity and provenance
    provenance: dict[str, Any]  # probekit version, git, packages, creation time
    wall_time_s: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    main_score_std: float | None = None  # over seeds (None for one seed)
    seeds: list[int] = field(default_factory=list)
    per_seed: list[dict[str, Any]] = field(default_factory=list)  # seed, main_score, selected_lr, val_score
    metrics_std: dict[str, Any] = field(default_factory=dict)
    metrics_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> higher_is_better, unit
    trivial: dict[str, Any] | None = None  # the constant predictor's validation score; learned_nothing
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    def write(self, run_dir: str | os.PathLike) -> Path:
        if not (isinstance(self.main_score, (int, float)) and math.isfinite(self.main_score)):
            raise ProbekitError(f"refusing to write a result whose {self.main_score_name} is {self.main_score}")
        # Written aside and renamed: never half a record.
        return atomic.write_text(Path(run_dir) / RESULT_FILE, json.dumps(self.to_dict(), indent=2) + "\n")


def default_run_dir(root: str | os.PathLike, extractor: str, dataset: str, task: str, probe_name: str) -> Path:
    """results/<extractor>/<dataset>/<task>/<probe> - one directory per (extractor, dataset, task, probe)."""
    safe = [str(p).replace("/", "_").replace(" ", "_") for p in (extractor, dataset, task, probe_name)]
    return Path(root).joinpath(*safe)


def check_overwrite(run_dir: str | os.PathLike, mode: str) -> bool:
    """True if the run should go ahead. 'error' refuses an existing result, 'skip' keeps it, 'overwrite' replaces it."""
    if mode not in OVERWRITE_MODES:
        raise ProbekitError(f"overwrite mode must be one of {OVERWRITE_MODES}, got {mode!r}")
    exists = (Path(run_dir) / RESULT_FILE).is_file()
    if exists and mode == "error":
        raise ProbekitError(f"{Path(run_dir) / RESULT_FILE} already exists; use --overwrite to replace it or "
                            "--skip-existing to keep it")
    return not (exists and mode == "skip")


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """A result record as a dict, from a run directory or a result.json path."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProbekitError(f"no result record at {path}") from None
    except json.JSONDecodeError as exc:
        raise ProbekitError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProbekitError(f"{path} is not a result record (a JSON object was expected)")
    version = data.get("schema_version")
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise ProbekitError(f"{path}: result schema version {version!r} is not one this probekit reads "
                            f"(1..{SCHEMA_VERSION})")
    missing = [k for k in ("task", "main_score_name", "main_score", "extractor", "probe") if k not in data]
    if missing:
        raise ProbekitError(f"{path} is not a complete result record (no {', '.join(missing)})")
    for name in ("main_score", "main_score_std"):
        problem = _not_a_score(data.get(name), optional=name == "main_score_std")
        if problem:
            raise ProbekitError(f"{path} is not a valid result record: its {name} is {data.get(name)!r}, {problem}")
    data = upgrade(data)
    data["_path"] = str(path)
    return data


def _not_a_score(value: Any, optional: bool = False) -> str | None:
    """Why ``value`` cannot be a score (None when it can): a score is a finite number."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "not a number"
    if not math.isfinite(value):
        return "not a finite number"
    return None


def upgrade(rec: dict[str, Any]) -> dict[str, Any]:
    """Bring an older record to the current field layout."""
    rec.setdefault("trivial", None)  # records made before the trivial predictor was scored
    if rec.get("schema_version", 1) < 2:
        rec.setdefault("main_score_std", None)
        seed = (rec.get("config") or {}).get("seed")
        rec.setdefault("seeds", [seed] if seed is not None else [])
        rec.setdefault("per_seed", [])
        rec.setdefault("metrics_std", {})
        rec["metrics_info"] = {name: scores.info(name) for name in rec.get("metrics", {})
                               if isinstance(rec["metrics"][name], (int, float))}
        rec["metrics_info"][rec["main_score_name"]] = {
            "higher_is_better": bool(rec.get("higher_is_better", True)),
            "unit": scores.info(rec["main_score_name"])["unit"]}
    return rec


def find_records(paths: list[str | os.PathLike]) -> list[Path]:
    """Every result.json under the given run directories (searched recursively), in path order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / RESULT_FILE).is_file():
            found.append(p / RESULT_FILE)
        elif p.is_dir():
            found.extend(sorted(p.rglob(RESULT_FILE)))
        else:
            raise ProbekitError(f"{p} is neither a run directory nor a result.json")
    return sorted(set(found))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):
        return _json_safe(value.item())
    return value
