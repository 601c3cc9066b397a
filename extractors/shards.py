"""Crash-safe, resumable, shardable extraction: the run is cut into shards of consecutive samples.

HDF5 is not crash-safe: a process killed while writing can leave a file whose metadata is damaged. So an
extraction never writes its data in place. It fills ``OUT.parts/``::

    OUT.parts/run.json                     what is being extracted (the run fingerprint) and the shard plan
    OUT.parts/projection.safetensors       the fixed channel projection, when one is used (written first)
    OUT.parts/.lock                        held (flock) by the process writing: a second one is refused
    OUT.parts/shard-000000000-000000064.h5 a complete feature file for samples [0, 64), written under a
                                           temporary name and renamed only once finished (fsync, then rename)

A killed run leaves only whole shards (and perhaps a temporary file, which is discarded); rerunning the same
command does the missing shards. When every shard is there, ``OUT`` is written (under a temporary name, then
renamed) as an *index*: its per-sample datasets are HDF5 virtual datasets over the shards, so finishing a
run costs metadata, never a second copy of the data. ``OUT`` and ``OUT.parts/`` then belong together;
``consolidate`` writes one standalone file where a single file must travel. Ranks of a distributed run (or
independent jobs, ``--part I/N``) take disjoint shards of the same plan, so any number of workers can finish
a run that another number began. The fingerprint excludes what cannot change the features (batch size,
progress bars).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from probekit import atomic
from probekit.errors import FeatureFileError
from probekit.store import (FORMAT_ATTRS, SHARD_GLOB, FeatureReader, FeatureWriter, format_attrs, parts_dir,
                            shard_name)

PLAN_FORMAT = "probekit-extraction-plan"
PLAN_VERSION = 1
DEFAULT_SHARD_SIZE = 64
PROJECTION_FILE = "projection.safetensors"
LOCK_FILE = ".lock"  # ".lock" for a whole run; ".lock-part-I-of-N" for a part or a rank of a distributed one
# Attributes each file computes for itself; everything else is copied from the shards into the index (the
# shards' common storage dtype included).
PER_FILE_ATTRS = (FORMAT_ATTRS - {"feature_dtype"}) | {"skipped", "extract_wall_time_s", "run_fingerprint"}
_STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class Shard:
    start: int
    stop: int

    @property
    def name(self) -> str:
        return shard_name(self.start, self.stop)

    @property
    def size(self) -> int:
        return self.stop - self.start

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
    """The run of OUT, from its run.json (for `probekit merge`)."""
    plan_path = parts_dir(out) / "run.json"
    if not plan_path.is_file():
        raise FeatureFileError(f"no extraction in progress for {out}: {plan_path} does not exist")
    try:
        plan = json.loads(plan_path.read_text())
    except json.JSONDecodeError as exc:
        raise FeatureFileError(f"{plan_path} is not valid JSON ({exc}); it cannot say which shards belong to "
                               f"{out}. Rerun the extraction with --overwrite.") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT or not {"fingerprint", "num_samples",
                                                                               "shard_size"} <= set(plan):
        raise FeatureFileError(f"{plan_path} is not a probekit extraction plan")
    return ExtractionRun(out, plan["fingerprint"], plan["num_samples"], plan["shard_size"])


class ExtractionRun:
    """The shard directory of one extraction: its plan, which shards are done, committing and indexing."""

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

    def _stored_plan(self) -> dict[str, Any] | None:
        """The plan in the shard directory's run.json (None when there is none, or it is not JSON)."""
        try:
            return json.loads((self.dir / "run.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def resumable(self) -> bool:
        """True when the shard directory holds an interrupted run of exactly these settings."""
        return self._stored_plan() == self._plan()

    def conflict(self, overwrite: bool = False) -> str | None:
        """Why this run cannot start here without --overwrite (None when it can: new, finished or resumable).
        Changes nothing, so a dry run can say it before any work."""
        if overwrite or self.finished_output():
            return None
        if self.out.exists():
            return (f"{self.out} already exists and was made with other settings (or is not a feature file of "
                    "this run); pass --overwrite to replace it")
        old = self._stored_plan() if self._holds_work() else None
        if self._holds_work() and old != self._plan():
            return (f"{self.dir} holds an interrupted extraction with other settings ({self._difference(old)}); "
                    "rerun with the original settings to resume it, or pass --overwrite")
        return None

    def prepare(self, overwrite: bool = False) -> str:
        """Create or check the shard directory; returns "finished", "resumed" or "new".

        Refuses, naming what differs, when OUT or an interrupted run of *other* settings is in the way,
        unless ``overwrite``.
        """
        if self.finished_output() and not overwrite:
            return "finished"
        problem = self.conflict(overwrite)
        if problem:
            raise FeatureFileError(problem)
        plan_path = self.dir / "run.json"
        if self._holds_work():
            if self.resumable() and not overwrite:
                return "resumed"
            self._clear()
        if overwrite and self.out.exists():
            self.out.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(plan_path, json.dumps(self._plan(), indent=2, sort_keys=True) + "\n")
        return "new"

    def abandon_if_empty(self) -> bool:
        """Remove a shard directory this run created but never committed a shard to (a bad setting found
        before the first shard), so the corrected command starts cleanly. True when removed."""
        if self.dir.is_dir() and not any(self.dir.glob(SHARD_GLOB)) and not self.out.exists():
            self._clear()
            with contextlib.suppress(OSError):  # empty unless another process holds its lock file here
                self.dir.rmdir()
            return True
        return False

    def _holds_work(self) -> bool:
        """Whether the shard directory holds anything but lock files (a plan, shards, a projection)."""
        return self.dir.is_dir() and any(not p.name.startswith(LOCK_FILE) for p in self.dir.iterdir())

    def _clear(self) -> None:
        """Empty the shard directory, except the lock files of the processes writing it (this one's included)."""
        for path in self.dir.iterdir():
            if path.name.startswith(LOCK_FILE):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self, part: str = "") -> Iterator[None]:
        """Hold ``OUT.parts/.lock`` (``part``: ".lock-part-I-of-N", one per independent part or rank) while this
        process writes: a second process writing the same output is refused before it touches any file."""
        path = self.dir / f"{LOCK_FILE}{part}"
        fd = _acquire(path, self.out)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still held: a process waiting on it checks the file again
            os.close(fd)
            with contextlib.suppress(OSError):  # a refused or abandoned first run leaves no empty folder
                self.dir.rmdir()

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

    @property
    def projection_path(self) -> Path:
        return self.dir / PROJECTION_FILE

    # -- writing ------------------------------------------------------------------------------
    def shard_writer(self, shard: Shard, attrs: dict[str, Any], feature_dtype: str) -> tuple[FeatureWriter, Path]:
        tmp = self._tmp(shard)
        tmp.unlink(missing_ok=True)
        return FeatureWriter(tmp, capacity=shard.size, attrs=attrs, feature_dtype=feature_dtype), tmp

    def commit(self, shard: Shard, tmp: Path) -> None:
        """Make a finished shard visible, atomically (and durably: fsync before the rename)."""
        atomic.commit(tmp, self.dir / shard.name)

    # -- the index ----------------------------------------------------------------------------
    def write_index(self) -> Path:
        """Write OUT as an index over the shards (virtual datasets), under a temporary name, then rename it.

        OUT's attributes (extractor, provenance, ...) are the shards' own; per-shard ones are recomputed.
        """
        missing = self.missing()
        if missing:
            raise FeatureFileError(
                f"{self.dir}: {len(missing)} of {len(self.shards)} shards are not done yet (first missing: samples "
                f"{missing[0].start}-{missing[0].stop - 1}); run the extraction (or its remaining parts) again")
        readers = [FeatureReader(self.dir / s.name) for s in self.shards]
        try:
            full = [(s, r) for s, r in zip(self.shards, readers) if r.num_samples]
            if not full:
                raise FeatureFileError(f"{self.dir}: every sample was skipped; there is nothing to index")
            skipped = [item for r in readers for item in (r.attr("skipped") or [])]
            wall = sum(float(r.attr("extract_wall_time_s") or 0.0) for r in readers)
            first = full[0][1]
            attrs = {k: v for k, v in first.raw_attrs().items() if k not in PER_FILE_ATTRS}
            n = sum(r.num_samples for _, r in full)
            with atomic.atomic_path(self.out, durable=True) as tmp, h5py.File(tmp, "w") as f:
                for name, value in attrs.items():
                    f.attrs[name] = value
                f.attrs.update({**format_attrs(), "complete": True,
                                "num_samples": n, "feature_keys": json.dumps(first.keys),
                                "label_names": json.dumps(first.label_names),
                                "skipped": json.dumps(skipped), "extract_wall_time_s": round(wall, 3),
                                "run_fingerprint": json.dumps(self.fingerprint)})
                f.create_dataset("sample_ids", data=np.asarray([i for _, r in full for i in r.sample_ids],
                                                               dtype=object), dtype=_STR)
                f.create_dataset("indices", data=np.concatenate([r.indices for _, r in full]).astype(np.int64))
                f.create_dataset("captions", data=np.asarray([c for _, r in full for c in r.captions()],
                                                             dtype=object), dtype=_STR)
                f.create_dataset("done", data=np.ones(n, dtype=np.uint8))
                for group, names in (("features", first.keys), ("labels", first.label_names)):
                    for name in names:
                        self._virtual(f, f"{group}/{name}", full, n)
                if first.read_thumbnails([]) is not None:
                    self._virtual(f, "thumbnails", full, n)
                self._copy_projection(f)
        finally:
            for r in readers:
                r.close()
        return self.out

    def _virtual(self, f: h5py.File, name: str, full: list[tuple[Shard, FeatureReader]], n: int) -> None:
        with h5py.File(self.dir / full[0][0].name, "r") as src:
            template = src[name]
            shape, dtype = template.shape[1:], template.dtype
        layout = h5py.VirtualLayout(shape=(n, *shape), dtype=dtype)
        row = 0
        for shard, reader in full:
            # Relative to the index's folder, so OUT and OUT.parts/ can move together.
            source = h5py.VirtualSource(f"{self.dir.name}/{shard.name}", name, shape=(reader.num_samples, *shape))
            layout[row:row + reader.num_samples] = source
            row += reader.num_samples
        f.create_virtual_dataset(name, layout, fillvalue=_missing_value(dtype))

    def _copy_projection(self, f: h5py.File) -> None:
        if not self.projection_path.is_file():
            return
        from safetensors.numpy import load_file

        tensors = load_file(str(self.projection_path))
        for name, array in tensors.items():  # "<key>::components" and "<key>::mean"
            key, _, part = name.rpartition("::")
            f.create_dataset(f"projection/{key}/{part}", data=array)


def _acquire(path: Path, out: Path) -> int:
    """An exclusive lock on ``path`` (created if need be; its folder too), as an open descriptor holding it."""
    import fcntl

    for _ in range(20):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed between the two calls: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise FeatureFileError(f"another probekit process is writing {out} (process {holder or '?'} holds "
                                   f"{path}); wait for it to finish or stop it, then rerun this command") from None
        try:  # its last holder may have removed the file between our open and our lock: lock the file now there
            current = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)
    raise FeatureFileError(f"cannot take the lock {path}: other processes keep replacing it")


def _missing_value(dtype: np.dtype):
    """What a virtual dataset shows where its source is missing: NaN for floats, so it can never pass as data."""
    if np.issubdtype(dtype, np.floating):
        return np.nan
    return 0xFFFF if dtype == np.uint16 else 0  # uint16 holds bfloat16 bits: 0xFFFF is a NaN pattern


def consolidate(out: str | os.PathLike, dest: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """Copy an index and its shards into one standalone feature file (``dest``, default: OUT itself)."""
    from tqdm.auto import tqdm

    out = Path(out)
    dest = Path(dest) if dest is not None else out
    with FeatureReader(out) as reader:
        attrs = {k: v for k, v in reader.raw_attrs().items()
                 if k not in FORMAT_ATTRS}
        with atomic.atomic_path(dest, durable=True) as tmp:
            with FeatureWriter(tmp, capacity=reader.num_samples, attrs=attrs,
                               feature_dtype=reader.feature_dtype) as writer:
                captions = reader.captions()
                step = 64
                for a in tqdm(range(0, reader.num_samples, step), desc=f"consolidate {out.name}", unit="batch",
                              disable=not progress):
                    rows = np.arange(a, min(a + step, reader.num_samples))
                    writer.append({k: reader.read_raw(k, rows) for k in reader.keys},
                                  {n: reader.read_labels(n, rows) for n in reader.label_names},
                                  [reader.sample_ids[i] for i in rows], reader.indices[rows],
                                  [captions[i] for i in rows], thumbnails=reader.read_thumbnails(rows), checked=True)
                for key in reader.keys:
                    proj = reader.projection(key)
                    if proj is not None:
                        for part, array in proj.items():
                            writer.write_array(f"projection/{key}/{part}", array)
                writer.finalize()
    if dest == out and parts_dir(out).is_dir():
        shutil.rmtree(parts_dir(out))
    return dest
