"""A probe = fusion of the frozen feature maps + a head, with logits upsampled to the label size.

Global and spatial fusion work at one of two levels (``fusion_level``):

- ``features``: the weights mix the standardised maps and one head reads the mix.
- ``predictions`` (the linear head's default): every map has its own linear read-out, and the weights mix the
  read-outs' predictions (logits; depth after the bins become metres). Each read-out is also trained on its own
  loss (``own_loss_gradient``), so it stays its map's own probe and a weight compares calibrated predictions:
  without that, a read-out's scale is free, and the mix can lean on maps that are weak alone. With one head
  reading a feature mix, the weights instead drift to the map that most resembles the mix, which need not be
  the one that predicts best (docs/results/fusion-diagnosis.md measures both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probekit.probes.fusion import GroupedFusion
from probekit.probes.heads import PerMapLinear


def _resized(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Probe(nn.Module):
    """``guidance_keys`` (e.g. concept-attention maps) bypass fusion: they are resampled and appended as extra
    channels to every fused map (at the prediction level: to every map) the head reads."""

    def __init__(self, fusion: str, head_cls: type[nn.Module], keys: list[str], channels: dict[str, int],
                 out_channels: int, fusion_dim: int | None = None, guidance_keys: list[str] | None = None,
                 head_transform=None, fusion_level: str = "features", own_loss_weight: float = 1.0):
        super().__init__()
        self.own_loss_weight = float(own_loss_weight)  # prediction level: the read-outs' own losses' weight
        self.head_transform = head_transform  # e.g. depth bins -> depth, on the feature grid
        self.keys = list(keys)
        self.guidance_keys = list(guidance_keys or [])
        self.fusion_level = fusion_level
        self.fusion = GroupedFusion(fusion, self.keys, channels, fusion_dim,
                                    by_layer=getattr(head_cls, "multi_layer", False))
        extra = sum(channels[k] for k in self.guidance_keys)
        self.per_map: torch.Tensor | None = None  # the read-outs' predictions of the latest training forward
        if fusion_level == "predictions":
            if not self.fusion.cls.mixes_predictions or len(self.fusion.groups) != 1:
                raise ValueError("prediction-level fusion mixes the maps of one fusion that mixes predictions "
                                 f"(global, spatial), not {fusion}")
            self.head = PerMapLinear(len(self.keys), self.fusion.out_channels[0] + extra, out_channels)
        elif fusion_level == "features":
            self.head = head_cls([c + extra for c in self.fusion.out_channels], out_channels)
        else:
            raise ValueError(f"fusion_level must be 'features' or 'predictions', got {fusion_level!r}")

    def _guidance(self, feats: dict[str, torch.Tensor], grid) -> list[torch.Tensor]:
        return [_resized(feats[k], grid) for k in self.guidance_keys]

    def forward(self, feats: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        if self.fusion_level == "predictions":
            return _resized(self._mixed_predictions(feats), size)
        maps = self.fusion(feats)
        if self.guidance_keys:
            maps = [torch.cat([m] + self._guidance(feats, m.shape[-2:]), dim=1) for m in maps]
        logits = self.head(maps)
        if self.head_transform is not None:
            logits = self.head_transform(logits)
        return _resized(logits, size)

    def _mixed_predictions(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        fusion = self.fusion.groups[0]
        p = fusion.projected(feats)  # (B, K, D, h, w), standardised
        x = p
        if self.guidance_keys:
            g = torch.cat(self._guidance(feats, p.shape[-2:]), dim=1)
            x = torch.cat([p, g.unsqueeze(1).expand(-1, p.shape[1], -1, -1, -1)], dim=2)
        per_map = self.head(x)  # (B, K, out, h, w)
        if self.head_transform is not None:
            per_map = self.head_transform(per_map.flatten(0, 1)).unflatten(0, per_map.shape[:2])
        self.per_map = per_map if (self.training and torch.is_grad_enabled()) else None
        return (per_map * fusion.mix_weights(p).unsqueeze(2)).sum(1)

    def own_loss_gradient(self, loss_fn, target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor | None:
        """The gradient, with respect to the latest training forward's per-map predictions, of the mean over maps
        of each map's own loss, times ``own_loss_weight`` (None at the feature level). Computed one map at a time
        on a detached copy, so the label-size tensors of only one map are alive at once; the caller sends it back
        through the read-outs in the same backward pass as the mixed loss.

        The own losses read every s-th label pixel, s chosen so that they see about twice the feature grid
        (``own_loss_stride``): a read-out is linear on that grid, so finer labels add little to what it learns
        from them, and one loss per map at full label size was most of a training step. The mixed prediction's
        loss, the one that is recorded and selects, stays at full resolution."""
        if self.per_map is None:
            return None
        sy, sx = own_loss_stride(size, self.per_map.shape[-2:])
        sub = target[..., ::sy, ::sx]
        per_map = self.per_map.detach().requires_grad_(True)
        k = per_map.shape[1]
        for i in range(k):
            (loss_fn(_resized(per_map[:, i], tuple(sub.shape[-2:])), sub) * (self.own_loss_weight / k)).backward()
        return per_map.grad


def own_loss_stride(label_size, grid) -> tuple[int, int]:
    """Label pixels between the samples the per-map losses read: the label grid over twice the feature grid."""
    return tuple(max(1, int(n) // (2 * int(g))) for n, g in zip(label_size, grid))
