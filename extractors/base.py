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
    and returns ``{feature_key: (B, C, h, w)}`` float tensors with keys from ``feature_keys()``.
    """

    name: str = "extractor"

    @abstractmethod
    def feature_keys(self) -> list[str]: ...

    @abstractmethod
    def extract(self, images: torch.Tensor, captions: Sequence[str], indices: Sequence[int]) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Every parameter that affects the features (recorded in the feature file)."""

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
