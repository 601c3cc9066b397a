"""Fusion of a (timestep x layer) stack of feature maps into the map(s) a head reads.

Modes (each one small module):

- ``single``:  one (t, layer) map, untouched.
- ``concat``:  every map projected by a per-layer 1x1 bottleneck (shared across timesteps), concatenated.
- ``global``:  one learned weight per (t, layer), softmax-normalised, over per-layer bottleneck projections
               shared across timesteps (the Diffusion Hyperfeatures design).
- ``spatial``: per-location softmax weights over the maps, predicted by a light conv net from the projected
               features themselves, so the mix varies across the image.

Maps may come at different grids (combined backbones); all are resampled to the finest grid first.
A probe whose head reads several layers (DPT) fuses each layer's timesteps separately ("groups").

What a fusion weight means: every map's projection is normalised per image (GroupNorm) *before* it is
weighted, and the weights are applied after the bottleneck, so nothing downstream can undo them and nothing
upstream can make a map loud or quiet: a map's weight is its share of the fused map. The weights
(``weight_parameters``) learn in their own optimiser group, at their own rate and without weight decay (which
would pull them back to uniform), so they can leave the uniform start within a probe's training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probekit.keys import FeatureKey


def _layer_of(key: str) -> str:
    """The key without its timestep: maps of one (source, layer) share a projection across timesteps."""
    return FeatureKey(key).without_timestep


def _module_name(group: str) -> str:
    return group.replace("=", "_").replace("/", "__").replace(".", "-")  # ModuleDict keys may not hold "."


class Bottleneck(nn.Module):
    """1x1 conv -> GroupNorm -> GELU: the per-layer projection, shared by every timestep of the layer.

    Batch statistics are deliberately kept out of the shared part: each (t, layer) map has its own input
    BatchNorm (see Fusion), because feature statistics change strongly with the noise level, and a BatchNorm
    shared across timesteps would normalise each map by its own batch in training but by a blend of all
    timesteps' running statistics at evaluation.
    """

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), nn.GroupNorm(1, dim), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Fusion(nn.Module):
    mode = "base"

    def __init__(self, keys: list[str], channels: dict[str, int], dim: int = 64):
        super().__init__()
        if not keys:
            raise ValueError("fusion needs at least one feature map")
        self.keys = list(keys)
        self.dim = dim
        self.layers = list(dict.fromkeys(_layer_of(k) for k in self.keys))
        self.norm = nn.ModuleDict({_module_name(k): nn.BatchNorm2d(channels[k]) for k in self.keys})
        self.proj = nn.ModuleDict({
            _module_name(layer): Bottleneck(channels[next(k for k in self.keys if _layer_of(k) == layer)], dim)
            for layer in self.layers})

    @staticmethod
    def _common_grid(feats: dict[str, torch.Tensor], keys: list[str]) -> tuple[int, int]:
        return max((feats[k].shape[-2:] for k in keys), key=lambda s: s[0] * s[1])

    def projected(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, K, dim, h, w): every map through its layer's bottleneck, on one grid."""
        size = self._common_grid(feats, self.keys)
        maps = []
        for k in self.keys:
            x = feats[k]
            if tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            maps.append(self.proj[_module_name(_layer_of(k))](self.norm[_module_name(k)](x)))
        return torch.stack(maps, dim=1)

    def key_weights(self) -> dict[str, float] | None:
        """Learned global weight of each key (global mode), else None."""
        return None

    def weight_parameters(self) -> list[nn.Parameter]:
        """Parameters that set the fusion weights (trained at their own rate, without weight decay)."""
        return []


class SingleFusion(Fusion):
    mode = "single"

    def __init__(self, keys, channels, dim=64):
        nn.Module.__init__(self)
        if len(keys) != 1:
            raise ValueError(f"single fusion takes exactly one feature map, got {len(keys)}")
        self.keys, self.layers = list(keys), [_layer_of(keys[0])]
        self.out_channels = channels[keys[0]]

    def forward(self, feats):
        return feats[self.keys[0]]


class ConcatFusion(Fusion):
    mode = "concat"

    def __init__(self, keys, channels, dim=64):
        super().__init__(keys, channels, dim)
        self.out_channels = dim * len(self.keys)

    def forward(self, feats):
        p = self.projected(feats)
        return p.flatten(1, 2)


class GlobalFusion(Fusion):
    mode = "global"

    def __init__(self, keys, channels, dim=64):
        super().__init__(keys, channels, dim)
        self.logits = nn.Parameter(torch.zeros(len(self.keys)))  # uniform mix at start
        self.out_channels = dim

    def forward(self, feats):
        w = torch.softmax(self.logits, dim=0)
        return (self.projected(feats) * w.view(1, -1, 1, 1, 1)).sum(1)

    def key_weights(self):
        return dict(zip(self.keys, torch.softmax(self.logits.detach(), 0).cpu().tolist()))

    def weight_parameters(self):
        return [self.logits]


class SpatialFusion(Fusion):
    mode = "spatial"

    def __init__(self, keys, channels, dim=64, hidden: int = 64):
        super().__init__(keys, channels, dim)
        k = len(self.keys)
        self.gate = nn.Sequential(nn.Conv2d(k * dim, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, k, 1))
        nn.init.zeros_(self.gate[-1].weight)  # start from a uniform mix, like global fusion
        nn.init.zeros_(self.gate[-1].bias)
        self.out_channels = dim
        self.last_weights: torch.Tensor | None = None  # (B, K, h, w) of the latest forward, for reports

    def forward(self, feats):
        p = self.projected(feats)
        w = torch.softmax(self.gate(p.flatten(1, 2)), dim=1)
        self.last_weights = w.detach()
        return (p * w.unsqueeze(2)).sum(1)

    def weight_parameters(self):
        return list(self.gate[-1].parameters())  # the per-location logits; the gate's features learn as usual


class GroupedFusion(nn.Module):
    """One fusion per group of keys: all keys in one group, or one group per layer (multi-layer heads)."""

    def __init__(self, mode: str, keys: list[str], channels: dict[str, int], dim: int = 64, by_layer: bool = False):
        from probekit.registries import FUSIONS

        super().__init__()
        cls = FUSIONS.get(mode).load()  # unknown names: UnknownNameError with a suggestion
        if by_layer:
            layers = list(dict.fromkeys(_layer_of(k) for k in keys))
            groups = [[k for k in keys if _layer_of(k) == layer] for layer in layers]
        else:
            groups = [list(keys)]
        self.mode = mode
        self.groups = nn.ModuleList(cls(g, channels, dim) for g in groups)
        self.out_channels = [g.out_channels for g in self.groups]

    def forward(self, feats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [g(feats) for g in self.groups]

    def key_weights(self) -> dict[str, float] | None:
        if self.mode != "global":
            return None
        out: dict[str, float] = {}
        for g in self.groups:
            out.update(g.key_weights())
        return out

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for g in self.groups for p in g.weight_parameters()]

    def spatial_weights(self) -> list[torch.Tensor] | None:
        if self.mode != "spatial":
            return None
        return [g.last_weights for g in self.groups]
