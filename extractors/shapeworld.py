"""The embedded default's extractors: the shipped ShapeWorld MM-DiT, its random-init control, and a tiny random
MM-DiT, each a ``DiffusersDiTExtractor`` over a folder the backbone lab (``probekit.backbone``) provides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probekit.errors import ProbekitError
from probekit.extractors.diffusers_dit import DiffusersDiTExtractor


def shapeworld_mmdit(weights: str | None = None, **kwargs: Any) -> DiffusersDiTExtractor:
    from probekit.backbone.model import shipped_weights

    folder = Path(weights) if weights else shipped_weights()
    if not (folder / "transformer" / "config.json").is_file():
        raise ProbekitError(f"the ShapeWorld MM-DiT weights are missing at {folder}; train them with "
                            "`probekit train-backbone --out DIR` and pass --weights DIR")
    return DiffusersDiTExtractor(weights=folder, name="shapeworld-mmdit", **kwargs)


def shapeworld_mmdit_random(weights: str | None = None, init_seed: int = 0, **kwargs: Any) -> DiffusersDiTExtractor:
    from probekit.backbone.model import random_folder

    note = "RANDOMLY INITIALISED backbone (shapeworld-mmdit-random): same architecture, never trained; a control"
    folder = Path(weights) if weights else random_folder(init_seed)
    return DiffusersDiTExtractor(weights=folder, name="shapeworld-mmdit-random", notes=[note], **kwargs)


def tiny_random_mmdit(weights: str | None = None, init_seed: int = 0, **kwargs: Any) -> DiffusersDiTExtractor:
    from probekit.backbone.tiny import build_tiny_mmdit
    from probekit.provenance import cache_dir

    folder = Path(weights) if weights else cache_dir() / f"tiny-mmdit-random-seed{init_seed}"
    build_tiny_mmdit(folder, seed=init_seed)
    note = "RANDOMLY INITIALISED backbone (tiny-mmdit-random): features of an untrained network, a control only"
    return DiffusersDiTExtractor(weights=folder, name="tiny-mmdit-random", notes=[note], **kwargs)
