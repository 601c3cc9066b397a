"""The extraction's writer thread: HDF5 writes and shard commits behind a bounded queue.

The main thread runs the model and enqueues each batch as host tensors whose device-to-host copies may still
be in flight (with the CUDA event that marks their end); this thread waits for the copies, drops samples whose
maps are not finite (recorded as skipped, or raised as an error), writes the rest, and closes each shard once
its last batch is written. A second thread commits closed shards (fsync, then an atomic rename), so the disk
flushes one shard while the next is written. The queue bound gives back-pressure: when the disk is the
bottleneck the model waits instead of filling memory. An error in either thread is raised in the main thread
at its next call; a kill leaves only committed shards, as before.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from probekit.errors import DiskFullError, ProbekitError, SampleError
from probekit.extractors.shards import ExtractionRun, Shard
from probekit.extractors.storage import as_numpy

_STOP = object()
SPACE_MARGIN = 4 << 20  # bytes kept free beyond a batch: HDF5 metadata and the shard's last flush


@dataclass
class HostBatch:
    """One batch on its way to the disk."""

    shard: Shard
    features: dict[str, torch.Tensor]  # host tensors in the storage dtype (pinned on a GPU)
    finite: torch.Tensor  # (B, K) bool, per sample and key
    event: Any  # torch.cuda.Event recorded after the copies, or None on the CPU
    labels: dict[str, np.ndarray]
    sample_ids: list[str]
    indices: list[int]
    captions: list[str]
    thumbnails: np.ndarray | None = None


@dataclass
class _Open:
    writer: Any
    tmp: Any
    skipped: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


class BackgroundWriter:
    def __init__(self, run: ExtractionRun, attrs: dict[str, Any], feature_dtype: str, on_error: str,
                 depth: int = 4):
        self.run, self.attrs, self.feature_dtype, self.on_error = run, attrs, feature_dtype, on_error
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._open: dict[Shard, _Open] = {}
        self.committed = 0
        self.skipped: list[dict[str, Any]] = []  # every sample skipped so far (for the summary)
        self._commits: queue.Queue = queue.Queue()
        self._committer = threading.Thread(target=self._commit_loop, name="probekit-committer", daemon=True)
        self._committer.start()
        self._thread = threading.Thread(target=self._loop, name="probekit-writer", daemon=True)
        self._thread.start()

    # -- main thread ---------------------------------------------------------------------------
    def _put(self, item) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, batch: HostBatch) -> None:
        self._put(("batch", batch))

    def skip(self, shard: Shard, items: list[dict[str, Any]]) -> None:
        """Samples of ``shard`` that never reached the model (unreadable, mis-sized)."""
        if items:
            self._put(("skip", shard, items))

    def commit(self, shard: Shard) -> None:
        self._put(("commit", shard))

    def close(self) -> None:
        """Wait until everything queued is written and committed; raise the writer's error, if any."""
        self._put(_STOP)
        self._thread.join()
        self._commits.put(_STOP)
        self._committer.join()
        self._close_unfinished()  # shards never committed (a run stopped by a bad sample): left for the resume
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop without committing what is unfinished (its temporary shard file is discarded on resume)."""
        if self._thread.is_alive():
            self._error = self._error or ProbekitError("aborted")
            while self._thread.is_alive():
                try:  # make room, then wake the thread up if it waits for an item
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                try:
                    self._queue.put_nowait(_STOP)
                except queue.Full:
                    pass
                self._thread.join(timeout=0.05)
        self._commits.put(_STOP)
        self._committer.join()  # shards already closed are still committed: they are whole
        self._close_unfinished()

    def _close_unfinished(self) -> None:
        """Close the files of shards that were begun but not committed (their temporaries are discarded), so no
        HDF5 file stays open for the rest of the process. Best effort: the error that stopped the run is the one
        to report, not a second one from a file it left unwritable."""
        for state in self._open.values():
            try:
                state.writer.close()
            except Exception:  # noqa: BLE001
                pass
        self._open.clear()

    # -- writer thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP or self._error is not None:
                    return
                kind = item[0]
                if kind == "batch":
                    self._write(item[1])
                elif kind == "skip":
                    self._state(item[1]).skipped.extend(item[2])
                    self.skipped.extend(item[2])
                elif kind == "commit":
                    self._commit(item[1])
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            self._error = exc

    def _state(self, shard: Shard) -> _Open:
        if shard not in self._open:
            writer, tmp = self.run.shard_writer(shard, self.attrs, self.feature_dtype)
            self._open[shard] = _Open(writer, tmp)
        return self._open[shard]

    def _write(self, batch: HostBatch) -> None:
        state = self._state(batch.shard)
        if batch.event is not None:
            batch.event.synchronize()
        keys = list(batch.features)
        finite = batch.finite.numpy()
        keep = finite.all(axis=1)
        if not keep.all():
            for row in np.flatnonzero(~keep):
                bad = [keys[j] for j in np.flatnonzero(~finite[row])]
                reason = (f"feature {', '.join(bad)} holds NaN or inf values (in float16 anything above 65,504 "
                          "overflows: --store-dtype bfloat16 keeps float32's range)")
                if self.on_error != "skip":
                    raise SampleError(batch.sample_ids[row], reason)
                item = {"id": batch.sample_ids[row], "index": int(batch.indices[row]), "error": reason}
                state.skipped.append(item)
                self.skipped.append(item)
        rows = np.flatnonzero(keep)
        if len(rows):
            self._check_space(sum(v.nbytes for v in batch.features.values()) + sum(v.nbytes for v in
                                                                                    batch.labels.values()))
            take = (lambda a: a) if keep.all() else (lambda a: a[rows])
            state.writer.append({k: take(as_numpy(v)) for k, v in batch.features.items()},
                                {n: take(v) for n, v in batch.labels.items()},
                                [batch.sample_ids[i] for i in rows], [batch.indices[i] for i in rows],
                                [batch.captions[i] for i in rows],
                                thumbnails=None if batch.thumbnails is None else take(batch.thumbnails), checked=True)

    def _commit(self, shard: Shard) -> None:
        """Finish and close the shard's file here; the committer thread makes it durable and visible."""
        state = self._state(shard)
        self._check_space(0)
        with state.writer as writer:
            writer.set_attr("skipped", state.skipped)
            writer.set_attr("extract_wall_time_s", round(time.perf_counter() - state.started, 3))
            writer.finalize()
        del self._open[shard]
        self._commits.put((shard, state.tmp))

    def _check_space(self, nbytes: int) -> None:
        """Stop before a write the disk cannot take: HDF5 that runs out of space mid-write leaves its file in a
        state that even closing it cannot recover from."""
        if shutil.disk_usage(self.run.dir).free < nbytes + SPACE_MARGIN:
            raise DiskFullError(self.run.dir)

    def _commit_loop(self) -> None:
        """Commit every closed shard, whatever happens to the writer afterwards: a closed shard is whole."""
        failed = False
        while True:
            item = self._commits.get()
            try:
                if item is _STOP:
                    return
                if not failed:
                    self.run.commit(*item)  # fsync, then rename
                    self.committed += 1
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
                failed = True
                self._error = self._error or exc
            finally:
                self._commits.task_done()
