"""Probe heads: small trainable modules on top of frozen feature maps."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class LinearHead(nn.Module):
    """BatchNorm + 1x1 conv: a per-location linear classifier; logits upsampled bilinearly to the label size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        logits = self.proj(self.norm(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
