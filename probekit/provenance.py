"""What every feature file and result record says about how it was made."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import probekit

TRACKED_PACKAGES = ("torch", "diffusers", "transformers", "timm", "h5py", "numpy", "safetensors")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def package_versions(names=TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions, read from metadata so that nothing heavy is imported."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(path: str | os.PathLike | None = None) -> dict[str, object]:
    """Commit and dirty flag of the checkout that holds probekit's source (None outside git)."""
    where = Path(path) if path else Path(probekit.__file__).resolve().parent
    def _git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def cache_dir() -> Path:
    """probekit's cache folder ($PROBEKIT_CACHE, default ~/.cache/probekit)."""
    return Path(os.environ.get("PROBEKIT_CACHE", Path.home() / ".cache" / "probekit"))


_HASHES: dict[str, str] = {}
_HASH_FILE = "file-hashes.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, remembered (in this process and in the cache folder) by path, size and modification
    time: a FLUX checkpoint is 24 GB, and every extraction records its weights' identity."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    if key in _HASHES:
        return _HASHES[key]
    store = cache_dir() / _HASH_FILE
    try:
        known = json.loads(store.read_text()) if store.is_file() else {}
    except (OSError, json.JSONDecodeError):
        known = {}
    if key not in known:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                digest.update(block)
        known[key] = digest.hexdigest()
        if st.st_size >= 64 << 20:  # only large files are worth a line in the cache
            try:
                from probekit import atomic

                atomic.write_text(store, json.dumps(known, indent=0, sort_keys=True))
            except OSError:
                pass  # a read-only cache folder costs time, never correctness
    _HASHES[key] = known[key]
    return known[key]


def weights_identity(weights: str | os.PathLike | None) -> dict[str, object]:
    """Path or hub id plus the sha256 of every weight file found under it."""
    if weights is None:
        return {"source": None, "files": {}}
    path = Path(weights)
    if path.is_dir():
        root, source = path, str(path.resolve())
    elif path.is_file():
        return {"source": str(path.resolve()), "files": {path.name: sha256_file(path)}}
    else:
        root, source = _hub_snapshot(str(weights)), str(weights)
        if root is None:
            return {"source": source, "hub_id": source, "files": {}, "note": "not in the local hub cache"}
    files = {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in WEIGHT_SUFFIXES
    }
    ident: dict[str, object] = {"source": source, "files": files}
    if not path.is_dir():
        ident["hub_id"] = source
    return ident


def _hub_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or no huggingface_hub: identity falls back to the id alone
        return None


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def base_provenance() -> dict[str, object]:
    return {
        "probekit_version": probekit.__version__,
        "git": git_state(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "created": now_iso(),
    }
