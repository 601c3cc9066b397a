"""Versioned result records: one JSON per probe run, at a predictable path.

Schema (version 1) is documented in docs/results.md. Readers accept every version this project
has written; writers always write the newest.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from probekit.errors import ProbekitError

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
OVERWRITE_MODES = ("error", "overwrite", "skip")


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
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    def write(self, run_dir: str | os.PathLike) -> Path:
        path = Path(run_dir) / RESULT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)  # never leave a half-written record behind
        return path


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
    version = data.get("schema_version")
    if version is None or version > SCHEMA_VERSION:
        raise ProbekitError(f"{path}: result schema version {version!r} is not one this probekit reads "
                            f"(1..{SCHEMA_VERSION})")
    data["_path"] = str(path)
    return data


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
