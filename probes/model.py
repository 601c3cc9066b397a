"""A probe = fusion of the frozen feature maps + a head, with logits upsampled to the label size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probekit.probes.fusion import GroupedFusion


class Probe(nn.Module):
    def __init__(self, fusion: str, head_cls: type[nn.Module], keys: list[str], channels: dict[str, int],
                 out_channels: int, fusion_dim: int = 64):
        super().__init__()
        self.keys = list(keys)
        self.fusion = GroupedFusion(fusion, self.keys, channels, fusion_dim,
                                    by_layer=getattr(head_cls, "multi_layer", False))
        self.head = head_cls(self.fusion.out_channels, out_channels)

    def forward(self, feats: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        logits = self.head(self.fusion(feats))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
