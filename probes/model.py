"""A probe = fusion of the frozen feature maps + a head, with logits upsampled to the label size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probekit.probes.fusion import GroupedFusion


class Probe(nn.Module):
    """``guidance_keys`` (e.g. concept-attention maps) bypass fusion: they are resampled and appended as extra
    channels to every fused map the head reads."""

    def __init__(self, fusion: str, head_cls: type[nn.Module], keys: list[str], channels: dict[str, int],
                 out_channels: int, fusion_dim: int | None = None, guidance_keys: list[str] | None = None,
                 head_transform=None):
        super().__init__()
        self.head_transform = head_transform  # e.g. depth bins -> depth, on the feature grid
        self.keys = list(keys)
        self.guidance_keys = list(guidance_keys or [])
        self.fusion = GroupedFusion(fusion, self.keys, channels, fusion_dim,
                                    by_layer=getattr(head_cls, "multi_layer", False))
        extra = sum(channels[k] for k in self.guidance_keys)
        self.head = head_cls([c + extra for c in self.fusion.out_channels], out_channels)

    def forward(self, feats: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        maps = self.fusion(feats)
        if self.guidance_keys:
            maps = [torch.cat([m] + [F.interpolate(feats[k], size=m.shape[-2:], mode="bilinear", align_corners=False)
                                     for k in self.guidance_keys], dim=1) for m in maps]
        logits = self.head(maps)
        if self.head_transform is not None:
            logits = self.head_transform(logits)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
