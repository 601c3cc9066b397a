"""Crash-safe, resumable, shardable extraction: the run is cut into shards of consecutive samples.

HDF5 is not crash-safe: a process killed while writing can leave a file whose metadata is damaged. So an
extraction never writes its output file in place. It writes ``OUT.parts/``::

    OUT.parts/run.json                     what is being extracted (the run fingerprint) and the shard plan
    OUT.parts/shard-000000000-000000064.h5 a complete feature file for samples [0, 64), written under a
                                           temporary name and renamed only once finished (atomic)

A killed run leaves only whole shards (and perhaps a temporary file, which is discarded); rerunning the same
command does the missing shards. When every shard is there, they are merged into ``OUT`` (again under a
temporary name, then renamed) and the parts are removed. Ranks of a distributed run (or independent jobs,
``--part I/N``) take disjoint shards of the same plan, so any number of workers can finish a run that another
number began. The fingerprint excludes what cannot change the features (batch size, progress bars).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probekit.errors import FeatureFileError
from probekit.store import FeatureReader, FeatureWriter

PLAN_FORMAT = "probekit-extraction-plan"
PLAN_VERSION = 1
DEFAULT_SHARD_SIZE = 64
# Attributes each file computes for itself; everything else is copied from the shards into the merged file.
PER_FILE_ATTRS = {"format", "format_version", "complete", "num_samples", "feature_keys", "label_names", "skipped",
                  "extract_wall_time_s", "run_fingerprint"}


def parts_dir(out: str | os.PathLike) -> Path:
    return Path(f"{out}.parts")


@dataclass(frozen=True)
class Shard:
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.start:09d}-{self.stop:09d}.h5"

    def positions(self) -> range:
        return range(self.start, self.stop)


def plan_shards(num_samples: int, shard_size: int) -> list[Shard]:
    if shard_size <= 0:
        raise ValueError(f"shard size must be positive, got {shard_size}")
    return [Shard(a, min(a + shard_size, num_samples)) for a in range(0, num_samples, shard_size)]


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    return ", ".join(changed) or "nothing"


def open_run(out: str | os.PathLike) -> "ExtractionRun":
    """The interrupted or unmerged run of OUT, from its run.json (for `probekit merge`)."""
    plan_path = parts_dir(out) / "run.json"
    if not plan_path.is_file():
        raise FeatureFileError(f"no extraction in progress for {out}: {plan_path} does not exist")
    plan = json.loads(plan_path.read_text())
    if plan.get("format") != PLAN_FORMAT:
        raise FeatureFileError(f"{plan_path} is not a probekit extraction plan")
    return ExtractionRun(out, plan["fingerprint"], plan["num_samples"], plan["shard_size"])


class ExtractionRun:
    """The shard directory of one extraction: its plan, which shards are done, committing and merging."""

    def __init__(self, out: str | os.PathLike, fingerprint: dict[str, Any], num_samples: int,
                 shard_size: int = DEFAULT_SHARD_SIZE):
        """``fingerprint``: everything that determines the features (a rerun must match it to resume)."""
        self.out = Path(out)
        self.dir = parts_dir(self.out)
        self.fingerprint = _canonical(fingerprint)
        self.num_samples = int(num_samples)
        self.shard_size = int(shard_size)
        self.shards = plan_shards(self.num_samples, self.shard_size)

    # -- state --------------------------------------------------------------------------------
    def _plan(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "format_version": PLAN_VERSION, "num_samples": self.num_samples,
                "shard_size": self.shard_size, "fingerprint": self.fingerprint}

    def finished_output(self) -> bool:
        """True when OUT already holds this very run (rerunning the command is then a no-op)."""
        if not self.out.exists():
            return False
        try:
            with FeatureReader(self.out) as reader:
                return _canonical(reader.attr("run_fingerprint")) == self.fingerprint
        except FeatureFileError:
            return False

    def prepare(self, overwrite: bool = False) -> str:
        """Create or check the shard directory; returns "finished", "resumed" or "new".

        Refuses, naming what differs, when OUT or an interrupted run of *other* settings is in the way,
        unless ``overwrite``.
        """
        if self.finished_output() and not overwrite:
            return "finished"
        if self.out.exists() and not overwrite:
            raise FeatureFileError(f"{self.out} already exists and was made with other settings (or is not a "
                                   "feature file of this run); pass --overwrite to replace it")
        plan_path = self.dir / "run.json"
        if self.dir.exists():
            old = None
            if plan_path.is_file():
                try:
                    old = json.loads(plan_path.read_text())
                except json.JSONDecodeError:
                    old = None
            if old == self._plan() and not overwrite:
                return "resumed"
            if not overwrite:
                raise FeatureFileError(f"{self.dir} holds an interrupted extraction with other settings "
                                       f"({self._difference(old)}); rerun with the original settings to resume "
                                       "it, or pass --overwrite")
            shutil.rmtree(self.dir)
        if overwrite and self.out.exists():
            self.out.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = plan_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._plan(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, plan_path)
        return "new"

    def _difference(self, old: dict[str, Any] | None) -> str:
        if old is None:
            return "its run.json is unreadable"
        if old.get("fingerprint") != self.fingerprint:
            return "it differs in " + _describe_difference(old.get("fingerprint") or {}, self.fingerprint)
        return f"it was planned as {old.get('num_samples')} samples in shards of {old.get('shard_size')}"

    def is_done(self, shard: Shard) -> bool:
        return (self.dir / shard.name).is_file()

    def pending(self, part: int = 0, num_parts: int = 1) -> list[Shard]:
        """Shards still to do that belong to worker ``part`` of ``num_parts`` (shard k goes to k mod N)."""
        return [s for k, s in enumerate(self.shards) if k % num_parts == part and not self.is_done(s)]

    def missing(self) -> list[Shard]:
        return [s for s in self.shards if not self.is_done(s)]

    def _tmp(self, shard: Shard) -> Path:
        return self.dir / f".tmp-{shard.name}"

    def discard_temporaries(self, shards: Sequence[Shard]) -> None:
        """Remove half-written files of ``shards`` a killed process left behind (only this worker's shards, so
        that concurrent workers never touch each other's files)."""
        for shard in shards:
            self._tmp(shard).unlink(missing_ok=True)

    # -- writing ------------------------------------------------------------------------------
    def shard_writer(self, shard: Shard, sample_ids: Sequence[str], indices: Sequence[int],
                     attrs: dict[str, Any]) -> tuple[FeatureWriter, Path]:
        tmp = self._tmp(shard)
        tmp.unlink(missing_ok=True)
        return FeatureWriter(tmp, sample_ids=sample_ids, indices=indices, attrs=attrs), tmp

    def commit(self, shard: Shard, tmp: Path) -> None:
        """Make a finished shard visible, atomically (and durably: fsync before the rename)."""
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / shard.name)

    # -- merging ------------------------------------------------------------------------------
    def merge(self) -> Path:
        """Join every shard into OUT (written under a temporary name, then renamed) and remove the parts.

        OUT's attributes (extractor, provenance, ...) are the shards' own; per-shard ones are recomputed.
        """
        missing = self.missing()
        if missing:
            raise FeatureFileError(
                f"{self.dir}: {len(missing)} of {len(self.shards)} shards are not done yet (first missing: samples "
                f"{missing[0].start}-{missing[0].stop - 1}); run the extraction (or its remaining parts) again")
        readers = [FeatureReader(self.dir / s.name) for s in self.shards]
        try:
            ids = [sid for r in readers for sid in r.sample_ids]
            indices = [int(i) for r in readers for i in r.indices]
            skipped = [item for r in readers for item in (r.attr("skipped") or [])]
            wall = sum(float(r.attr("extract_wall_time_s") or 0.0) for r in readers)
            full = [r for r in readers if r.num_samples]
            if not full:
                raise FeatureFileError(f"{self.dir}: every sample was skipped; nothing to merge")
            keys, labels = full[0].keys, full[0].label_names
            attrs = {k: v for k, v in readers[0].raw_attrs().items() if k not in PER_FILE_ATTRS}
            tmp = self.dir / ".tmp-merge.h5"
            tmp.unlink(missing_ok=True)
            with FeatureWriter(tmp, sample_ids=ids, indices=indices, attrs=attrs) as writer:
                row = 0
                for r in full:
                    rows = np.arange(r.num_samples)
                    positions = list(range(row, row + r.num_samples))
                    writer.write_batch(positions, {k: r.read_raw(k, rows) for k in keys},
                                       {n: r.read_labels(n, rows) for n in labels}, r.captions())
                    row += r.num_samples
                # A skipped sample leaves no row; which ones, and why, stays on record.
                writer.set_attr("skipped", skipped)
                writer.set_attr("extract_wall_time_s", round(wall, 3))
                writer.set_attr("run_fingerprint", self.fingerprint)
                writer.finalize()
        finally:
            for r in readers:
                r.close()
        os.replace(tmp, self.out)
        shutil.rmtree(self.dir)
        return self.out
