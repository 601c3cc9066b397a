"""`probekit data check`: verify a user's copy of a benchmark dataset against its manifest.

Checks, per split: the split's list or glob resolves inside the root; the number of samples equals the
manifest's count; every image decodes; every label exists, decodes, has its image's size and only the raw
values the manifest allows; and (for glob layouts) no label file lacks an image.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probekit.datasets.base import LABEL_NAMES, load_manifest
from probekit.datasets.files import confined, list_entries, read_image, read_label_array, resolve_root
from probekit.errors import ProbekitError, SampleError

EXAMPLES = 5  # problems of one kind listed in full before "... and N more"


@dataclass
class SplitReport:
    split: str
    expected: int | None
    found: int = 0
    checked: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class CheckReport:
    name: str
    root: Path
    splits: list[SplitReport]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.splits)

    def lines(self) -> list[str]:
        out = [f"{self.name} at {self.root}"]
        for s in self.splits:
            status = "ok" if s.ok else f"{sum(len(v) for v in s.problems.values())} problem(s)"
            scope = "" if s.checked == s.found else f" ({s.checked} checked)"
            out.append(f"  {s.split}: {s.found} of {s.expected if s.expected is not None else '?'} samples"
                       f"{scope}: {status}")
            for kind, items in s.problems.items():
                out.append(f"    {kind} ({len(items)}):")
                out += [f"      {item}" for item in items[:EXAMPLES]]
                if len(items) > EXAMPLES:
                    out.append(f"      ... and {len(items) - EXAMPLES} more")
        out.append("all good" if self.ok else "the copy has problems (listed above)")
        return out


def _raw_values_ok(raw: np.ndarray, spec: dict[str, Any]) -> list[int]:
    """Raw label values outside the manifest's raw_range / raw_also (empty when all are allowed)."""
    if "raw_range" not in spec:
        return []
    lo, hi = spec["raw_range"]
    allowed = set(spec.get("raw_also", []))
    values = np.unique(raw)
    return [int(v) for v in values if not (lo <= v <= hi or int(v) in allowed)]


def _kind(exc: Exception, what: str) -> str:
    text = str(exc)
    if "escapes the data root" in text:
        return "path outside the root"
    return f"missing {what}" if "is missing" in text or "gives no" in text else f"unreadable {what}"


def check_split(name: str, manifest: dict[str, Any], root: Path, split: str, limit: int | None,
                progress: bool) -> SplitReport:
    from tqdm.auto import tqdm

    spec = manifest["splits"][split]
    report = SplitReport(split, spec.get("count"))
    try:
        entries = list_entries(root, spec, f"{name} {split}")
    except ProbekitError as exc:
        report.problems["split listing"].append(str(exc))
        return report
    report.found = len(entries)
    if report.expected is not None and report.found != report.expected:
        hint = f" (nothing matches {spec['images']['glob']})" if not entries and "images" in spec else ""
        report.problems["count"].append(f"expected {report.expected} samples, found {report.found}{hint}")
    label_specs = manifest.get("labels", {})
    todo = entries if limit is None else entries[:limit]
    report.checked = len(todo)
    for entry in tqdm(todo, desc=f"check {name} {split}", unit="img", disable=not progress):
        sid = f"{name}/{split}/{entry.id}"
        try:
            image = read_image(confined(root, entry.image, sid), sid)
        except (SampleError, ProbekitError) as exc:
            report.problems[_kind(exc, "image")].append(str(exc))
            continue
        for kind, rel in entry.labels.items():
            try:
                path = confined(root, rel, sid) if rel is not None else None
                raw = read_label_array(path, kind, sid)
            except (SampleError, ProbekitError) as exc:
                report.problems[_kind(exc, "label")].append(str(exc))
                continue
            if raw.shape[:2] != (image.height, image.width):
                report.problems["label size"].append(f"{rel}: {raw.shape[1]}x{raw.shape[0]}, its image "
                                                     f"{entry.image} is {image.width}x{image.height}")
            bad = _raw_values_ok(raw, label_specs.get(kind, {}))
            if bad:
                report.problems["label values"].append(f"{rel}: values {bad[:8]} outside "
                                                       f"{label_specs[kind]['raw_range']} "
                                                       f"(+{label_specs[kind].get('raw_also', [])})")
    if "images" in spec:  # pairing: label files with no image
        for kind in (k for k in LABEL_NAMES if k in spec):
            expected = {e.labels[kind] for e in entries}
            folder = Path(spec[kind]).parent.as_posix()
            if "{" in folder:
                continue
            suffix = Path(spec[kind]).suffix
            for path in sorted((root / folder).glob(f"*{suffix}")):
                rel = path.relative_to(root).as_posix()
                if rel not in expected:
                    report.problems["label without image"].append(rel)
    return report


def check_dataset(name: str, root: str | os.PathLike | None = None, splits: list[str] | None = None,
                  limit: int | None = None, progress: bool = True) -> CheckReport:
    """Check every split (or ``splits``) of the registered dataset ``name`` under ``root``."""
    from probekit.registries import DATASETS

    entry = DATASETS.get(name)  # unknown names fail with suggestions
    manifest_name = entry.kwargs.get("manifest")
    if not manifest_name or entry.target != "probekit.datasets.files:FolderDataset":
        raise ProbekitError(f"{name} is not read from disk, so there is no copy to check")
    manifest, _ = load_manifest(manifest_name)
    root = resolve_root(name, manifest, root)
    names = splits or list(manifest["splits"])
    unknown = [s for s in names if s not in manifest["splits"]]
    if unknown:
        raise ProbekitError(f"{name} has splits {', '.join(manifest['splits'])}; got {', '.join(unknown)}")
    return CheckReport(name, root, [check_split(name, manifest, root, s, limit, progress) for s in names])
