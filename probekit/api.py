"""Library entry points behind the CLI (import this, not the CLI, from Python)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probekit.datasets import load_dataset
from probekit.registries import EXTRACTORS


def build_extractor(name: str, weights: str | None = None, **params: Any):
    """A registered extractor; ``weights=None`` keeps the registry's default weights."""
    if name.startswith("timm:"):  # any timm model by name, like timm.create_model
        entry = EXTRACTORS.get("timm")
        params = {**params, "model": name.split(":", 1)[1], "name": name}
    else:
        entry = EXTRACTORS.get(name)
    overrides = {k: v for k, v in params.items() if v is not None}
    if weights is not None:
        overrides["weights"] = weights
    return entry.build(**overrides)


def run_extraction(extractor, dataset: str, split: str, out: str | Path, **kwargs: Any) -> Path:
    from probekit.extractors.runner import extract_dataset

    ds = load_dataset(dataset, split)
    return extract_dataset(extractor, ds, out, **kwargs)
