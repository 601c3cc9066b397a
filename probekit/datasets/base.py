"""The dataset contract shared by every stage."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from probekit.errors import ProbekitError


LABEL_NAMES = ("seg", "depth", "saliency")  # the dense labels a Sample may carry, by field name


@dataclass
class Sample:
    """One image with its dense labels. Arrays are (H, W[, 3]); absent labels are None."""

    id: str
    index: int
    image: np.ndarray  # uint8 (H, W, 3)
    seg: np.ndarray | None = None  # uint8/int (H, W), class ids, background 0
    depth: np.ndarray | None = None  # float32 (H, W), metres
    saliency: np.ndarray | None = None  # uint8 (H, W), 0/1
    caption: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def load_manifest(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    """A manifest dict and the sha256 of its bytes. Bare names are looked up among the shipped manifests."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        raw = path.read_bytes()
    else:
        fname = name_or_path if str(name_or_path).endswith((".yaml", ".yml")) else f"{name_or_path}.yaml"
        try:
            raw = resources.files("probekit.data_manifests").joinpath(str(fname)).read_bytes()
        except FileNotFoundError:
            raise ProbekitError(f"no dataset manifest named {fname!r} among probekit's data manifests") from None
    manifest = yaml.safe_load(raw)
    if not isinstance(manifest, dict):
        raise ProbekitError(f"dataset manifest {name_or_path} is not a YAML mapping")
    return manifest, hashlib.sha256(raw).hexdigest()


def load_dataset(name: str, split: str, **overrides: Any):
    """Build a registered dataset by name (e.g. ``load_dataset("shapeworld", "train")``).

    ``overrides`` set to None are dropped, so callers can pass optional CLI values straight through.
    """
    from probekit.registries import DATASETS

    overrides = {k: v for k, v in overrides.items() if v is not None}
    entry = DATASETS.get(name) if not Path(name).is_dir() else None
    if entry is not None and "root" in overrides and entry.target != "probekit.datasets.files:FolderDataset":
        raise ProbekitError(f"--data-root is for datasets read from disk; {name} is not one")

    folder = Path(name)
    if folder.is_dir() and (folder / "manifest.yaml").is_file():  # a dataset folder with its own manifest
        loader = (yaml.safe_load((folder / "manifest.yaml").read_text()) or {}).get("loader")
        if loader not in DATASETS:
            raise ProbekitError(f"{folder / 'manifest.yaml'} names loader {loader!r}, which is not a dataset "
                                f"probekit knows ({', '.join(DATASETS.names())})")
        return DATASETS.build(loader, root=folder, split=split, **overrides)
    return DATASETS.build(name, split=split, **overrides)


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def as_uint8_image(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)
