"""Exceptions with messages meant for a person at a terminal."""

from __future__ import annotations

import difflib


class ProbekitError(Exception):
    """An error whose message says what is wrong and where; the CLI prints it without a traceback."""


class UnknownNameError(ProbekitError, KeyError):
    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, list(known)
        close = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(sorted(self.known))}.")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class FeatureFileError(ProbekitError):
    """A feature file that cannot be used: foreign, truncated, incomplete or mismatched."""


class SampleError(ProbekitError):
    """One sample of a dataset is unusable (unreadable image, missing or mis-sized label, ...)."""

    def __init__(self, sample_id: str, reason: str):
        self.sample_id, self.reason = sample_id, reason
        super().__init__(f"sample {sample_id}: {reason}")


class DiskFullError(ProbekitError):
    """The disk filled up while a run was writing: what is finished is kept, the rest can be redone."""

    def __init__(self, where, kept: str = "finished shards are kept"):
        self.where = where
        super().__init__(f"the disk is full at {where}; free space and rerun: {kept}")


ENOSPC_MARKERS = ("errno = 28", "No space left on device")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised while handling, says the disk is full: an OSError with ENOSPC,
    or an HDF5 error that carries it in its text (h5py raises some write failures as RuntimeError, and closing
    the file afterwards raises another that does not name it)."""
    import errno

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            return True
        if isinstance(exc, (OSError, RuntimeError)) and any(m in str(exc) for m in ENOSPC_MARKERS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
