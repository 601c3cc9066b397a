"""Files that appear whole or not at all: write under a temporary name beside the target, then rename.

A rename within one file system is atomic, so a reader (or a rerun after a kill) sees either the old file or
the new one, never a half-written one. ``durable=True`` also fsyncs the data before the rename, for files
whose loss after a power cut would cost real work (feature shards, checkpoints).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        if durable:
            commit(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make a file written under another name visible under ``path``: fsync, then rename (durable, atomic)."""
    _fsync(Path(tmp))
    os.replace(tmp, path)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, durable: bool = False) -> Path:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> Path:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it takes ``path``'s place as a whole.

    Where the system can swap two folders atomically (Linux), a kill at any moment leaves either the complete
    old folder or the complete new one. Elsewhere the old folder is renamed aside first; a kill between the two
    renames leaves it in ``.old-<name>-*/run``, and the next call puts it back before doing anything else.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in sorted(path.parent.glob(f".old-{path.name}-*")):
        if not path.exists() and (stale / "run").exists():
            os.replace(stale / "run", path)  # an interrupted swap: the old folder comes back
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".new-{path.name}-"))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private
        if not path.exists():
            os.replace(tmp, path)
        elif not _exchange(tmp, path):
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".old-{path.name}-"))
            os.replace(path, old / "run")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after an exchange this is the old folder


def check_writable_dir(path: str | os.PathLike, what: str, parent: bool = False) -> Path:
    """Make sure ``path`` (or, with ``parent``, the folder that will hold it) can be created and written, before
    any work that would be lost otherwise; a ProbekitError names ``what`` and the reason."""
    from probekit.errors import ProbekitError

    folder = Path(path).parent if parent else Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probekit-write-test-"):
            pass
    except OSError as exc:
        raise ProbekitError(f"{what} {path}: cannot write in {folder} ({exc.strerror or exc}); choose another "
                            "location") from None
    return folder
