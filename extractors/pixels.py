"""The floor every backbone must beat: raw RGB patches plus a Fourier positional encoding.

Each p x p patch of the image (in [-1, 1]) becomes a 3*p*p vector, concatenated with sin/cos encodings of
the patch's (row, column) at ``n_freqs`` octaves, giving a (3p^2 + 4*n_freqs, H/p, W/p) map: what a probe
can read from the pixels and their position alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from probekit.extractors.base import Extractor
from probekit.store import feature_key


class PixelsExtractor(Extractor):
    name = "pixels"

    def __init__(self, patch_size: int = 4, n_freqs: int = 4, **ignored: Any):
        # Options that only make sense for a network (timesteps, seed, device, ...) are accepted and
        # recorded as ignored, so the same command line works for every extractor.
        self.patch_size, self.n_freqs = int(patch_size), int(n_freqs)
        self.ignored = {k: v for k, v in ignored.items() if v is not None}

    def feature_keys(self) -> list[str]:
        return [feature_key(None, 0)]

    @property
    def layers(self) -> list[int]:
        return [0]

    def config(self) -> dict[str, Any]:
        return {"extractor": self.name, "patch_size": self.patch_size, "n_freqs": self.n_freqs,
                "ignored_options": sorted(self.ignored)}

    def positional(self, h: int, w: int) -> torch.Tensor:
        rows = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        cols = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))  # (2, h, w)
        bands = [fn(grid * math.pi * 2**k) for k in range(self.n_freqs) for fn in (torch.sin, torch.cos)]
        return torch.cat(bands)  # (4 * n_freqs, h, w)

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, captions: Sequence[str], indices: Sequence[int]) -> dict[str, torch.Tensor]:
        b, _, hh, ww = images.shape
        p = self.patch_size
        if hh % p or ww % p:
            raise ValueError(f"image size {hh}x{ww} is not divisible by the patch size {p}")
        x = images.float() * 2 - 1
        patches = F.unfold(x, kernel_size=p, stride=p).view(b, 3 * p * p, hh // p, ww // p)
        pos = self.positional(hh // p, ww // p).expand(b, -1, -1, -1)
        return {feature_key(None, 0): torch.cat([patches, pos], dim=1)}
