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
