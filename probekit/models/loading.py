"""Loading model components from local folders: quietly, safetensors only, and with a sentence on failure.

Every loader of a diffusers or transformers component goes through ``load_pretrained``: library chatter (the
advice to install accelerate, progress bars) is silenced, pickled weights are refused first
(``probekit.safety``), and a component that cannot be read (a truncated download, a missing file, a config
that does not match its weights) raises ``ProbekitError`` naming the folder, instead of a library traceback.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from probekit.errors import ProbekitError
from probekit.safety import refuse_pickled_weights

_HUB_PATTERNS = ["model_index.json", "transformer/*", "vae/*", "scheduler/*", "text_encoder*/*", "tokenizer*/*",
                 "config.json", "*.safetensors"]


@contextlib.contextmanager
def quiet_loading():
    """Silence diffusers' and transformers' loading chatter (e.g. the advice to install accelerate), keep errors."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])


def load_pretrained(cls, folder: str | Path, what: str, **kwargs: Any):
    """``cls.from_pretrained(folder, **kwargs)`` (safetensors only), or a ProbekitError naming the folder."""
    folder = Path(folder)
    refuse_pickled_weights(folder)
    try:
        with quiet_loading():
            if "tokenizer" not in what:
                kwargs.setdefault("use_safetensors", True)
            return cls.from_pretrained(folder, **kwargs)
    except ProbekitError:
        raise
    except Exception as exc:  # noqa: BLE001 - libraries raise many kinds for a bad folder; each becomes a sentence
        detail = " ".join(str(exc).split())[:300]
        raise ProbekitError(f"{folder}: the {what} cannot be loaded ({type(exc).__name__}: {detail}). Is the "
                            "folder complete (a truncated or interrupted download)?") from None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file as a dict; None when absent; a ProbekitError naming it when unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ProbekitError(f"{path} is not valid JSON ({exc})") from None


def resolve_weights(weights: str | Path) -> Path:
    """A local folder as is; otherwise a hub id fetched through (or found in) the local hub cache."""
    path = Path(weights)
    if path.exists():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(weights), allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # noqa: BLE001
        raise ProbekitError(f"weights {str(weights)!r} are neither a local folder nor a hub id available offline "
                            f"({type(exc).__name__}). Download them once and pass the folder with --weights.") from None
