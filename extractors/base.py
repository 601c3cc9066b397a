"""The contract every backbone implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch


class Extractor(ABC):
    """Frozen backbone -> dense feature maps.

    ``extract`` takes images as float tensors in [0, 1], shape (B, 3, H, W), with their captions
    and dataset indices (indices seed per-sample noise, so features never depend on batching),
    and returns ``{feature_key: (B, C, h, w)}`` floating tensors with keys from ``feature_keys()``, left on the
    extractor's device in its compute dtype: the runner reduces, converts and copies them to the host while
    the next batch runs.
    """

    name: str = "extractor"

    @abstractmethod
    def feature_keys(self) -> list[str]: ...

    @abstractmethod
    def extract(self, images: torch.Tensor, captions: Sequence[str], indices: Sequence[int]) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Every parameter that affects the features (recorded in the feature file)."""

    def feature_shapes(self, image_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        """(C, h, w) of every map for images of ``image_size`` (H, W), known before extraction starts (to plan
        storage). Families that can tell from their config override this; the fallback runs one black image."""
        out = self.extract(torch.zeros(1, 3, *image_size), [""], [0])
        return {k: tuple(int(s) for s in v.shape[1:]) for k, v in out.items()}

    def weights_identity(self) -> dict[str, Any]:
        return {"source": None, "files": {}}

    @property
    def timesteps(self) -> list[int]:
        return []

    @property
    def layers(self) -> list[int]:
        return []

    def notes(self) -> list[str]:
        """Caveats a user must see (e.g. randomly initialised weights)."""
        return []

    @property
    def uses_captions(self) -> bool:
        """Whether ``extract`` reads the captions (then ``prepare`` is given every caption of the run)."""
        return False

    def prepare(self, captions: Sequence[str] = ()) -> None:
        """Called once before the first batch, with the captions of every sample still to extract when
        ``uses_captions``: a model can encode all its prompts at once and free its text encoder before its
        largest component loads."""

    def memory_plan(self) -> list[str]:
        """Lines for the extraction plan: what is resident on the device when (empty when nothing to say)."""
        return []


def normalise_layers(layers: Sequence[int], n_blocks: int, what: str) -> list[int]:
    """Block indices (negative ones count from the end) -> distinct non-negative indices, in the given order;
    out-of-range ones refused naming ``what`` and its block count."""
    from probekit.errors import ProbekitError

    out: list[int] = []
    for layer in layers:
        layer = int(layer)
        if not -n_blocks <= layer < n_blocks:
            raise ProbekitError(f"layer {layer} is out of range: {what} has {n_blocks} blocks (0..{n_blocks - 1}, "
                                f"or -{n_blocks}..-1 from the end)")
        if layer % n_blocks not in out:
            out.append(layer % n_blocks)
    return out


def parse_resolution(resolution) -> tuple[int, int] | None:
    """--resolution as (height, width): None, one size (square), "H,W", or a pair."""
    from probekit.errors import ProbekitError

    if resolution is None:
        return None
    if isinstance(resolution, str):
        resolution = [p for p in resolution.replace("x", ",").split(",") if p.strip()]
    if isinstance(resolution, (int, float)):
        resolution = (resolution, resolution)
    try:
        h, w = (int(x) for x in (resolution if len(resolution) == 2 else (resolution[0],) * 2))
    except (TypeError, ValueError):
        raise ProbekitError(f"--resolution is one size or HEIGHT,WIDTH, got {resolution!r}") from None
    if h <= 0 or w <= 0:
        raise ProbekitError(f"--resolution must be positive, got {h}x{w}")
    return h, w
