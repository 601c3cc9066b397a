"""Fusion of a (timestep x layer) stack of feature maps into the map(s) a head reads.

Modes (each one small module, registered in ``probekit.registries.FUSIONS``):

- ``single``:  one (t, layer) map, untouched.
- ``concat``:  every map standardised (and projected, see below), concatenated.
- ``global``:  one learned softmax weight per (t, layer): the head reads ``sum_k w_k z_k``.
- ``spatial``: per-location softmax weights over the maps, predicted by a light gate from the maps themselves,
               so the mix varies across the image.

Every map ``x_k`` becomes ``z_k = P_layer((x_k - mean_k) / std_k)``: each channel of that (t, layer) map is
standardised with statistics of its own, measured once on the training split before training and kept as
buffers (feature statistics change strongly with the noise level; fixed statistics are the same transform in
training and evaluation, and nothing is learned there, so no map can be made loud or quiet behind the
weights' back). ``P_layer`` is a linear map shared by all timesteps of a layer: the identity when the maps all
have the same width (the default), else a learned 1x1 projection to ``dim`` channels (combined backbones of
different widths, or ``--fusion-dim``). Global and spatial fusion weight either the standardised maps, which one
head then reads (``fusion_level`` "features", the decoder heads' default), or each map's own prediction from a
linear read-out of its own (``fusion_level`` "predictions", the linear head's default: ``mix_weights`` gives the
weights, probes/model.py mixes). Nothing follows the weighting but the head (or nothing at all), so:

- a fusion weight is the share of its map (or of its map's prediction) in the mix, comparable across maps;
- with the identity projection a one-hot weight *is* the single-map probe of that map: global fusion contains
  every single map it fuses. At the feature level it can still lose to the best of them through optimisation:
  one head reads the mix, so the weights drift towards the map that most resembles the mix. At the prediction
  level every read-out is also trained alone, so the weights compare the maps' own predictions.

The weights (``weight_parameters``) learn in their own optimiser group, at their own rate and without weight
decay (which would pull them back to uniform), so they leave the uniform start within a probe's training.
They (and spatial fusion's gate) stay still for a short warm-up while the head learns to read the uniform mix:
a head that reads nothing yet sends the weights arbitrary gradients, and a softmax pushed to zero for a map
early never sees that map again.
Maps may come at different grids (combined backbones); all are resampled to the finest grid first. A head that
reads several layers (DPT) fuses each layer's timesteps separately ("groups").
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


def fused_width(keys: list[str], channels: dict[str, int], dim: int | None) -> int:
    """The width of each standardised map: the maps' own when they agree and no ``dim`` is asked for."""
    widths = {channels[k] for k in keys}
    if dim is None and len(widths) == 1:
        return widths.pop()
    return int(dim) if dim is not None else min(256, max(widths))


# A batch may carry its maps already stacked, (B, K, C, h, w) under STACKED with their keys under STACKED_KEYS
# (probes/data.py does when the maps agree in shape): fusion then reads them without copying them together.
STACKED, STACKED_KEYS = "__stacked__", "__stacked_keys__"
# Trials trained in lockstep share one batch's standardised maps (fixed statistics, nothing learned):
# (B, K, C, h, w) under PROJECTED, computed once per batch by probes/fit.py.
PROJECTED = "__projected__"


def _resampled(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Fusion(nn.Module):
    """A fusion mode. Its class says what it can do; every other place (config, data, model, trainer, grid,
    reports, suites) asks these attributes, never the mode's name:

    - ``reads_one_map``: it takes exactly one map (a single-map probe: one run per map, named by its map);
    - ``min_maps``: the fewest maps it fuses (a mix of one map learns nothing);
    - ``learns_weights``: it learns a weight per map (``weight_parameters``; ``key_weights`` for the ones the
      reports draw);
    - ``spatial``: its weights vary across the image (``mix_weights`` per location, ``last_weights`` kept for the
      reports' maps);
    - ``mixes_predictions``: it can weight each map's own prediction instead of the maps (``mix_weights``;
      the fusion level "predictions", see probes/config.py).
    """

    mode = "base"
    reads_one_map = False
    min_maps = 1
    learns_weights = False
    spatial = False
    mixes_predictions = False

    def __init__(self, keys: list[str], channels: dict[str, int], dim: int | None = None):
        super().__init__()
        if not keys:
            raise ValueError("fusion needs at least one feature map")
        self.keys = list(keys)
        self.layers = list(dict.fromkeys(_layer_of(k) for k in self.keys))
        self.dim = fused_width(self.keys, channels, dim)
        widths = {layer: channels[next(k for k in self.keys if _layer_of(k) == layer)] for layer in self.layers}
        # Maps of one width are read as they are (no projection), each standardised per channel with its own
        # fixed training statistics (the mean and scale buffers below), all in one broadcast.
        self.uniform = dim is None and len(set(channels[k] for k in self.keys)) == 1
        width = max(channels[k] for k in self.keys)
        # Per (map, channel) statistics of the training split: set by set_statistics before training.
        self.register_buffer("mean", torch.zeros(len(self.keys), width))
        self.register_buffer("scale", torch.ones(len(self.keys), width))
        self._widths = [channels[k] for k in self.keys]
        if not self.uniform:
            self.proj = nn.ModuleDict({_module_name(layer): nn.Conv2d(width, self.dim, 1, bias=False)
                                       for layer, width in widths.items()})

    def set_statistics(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Channel means and standard deviations of every map, {key: (mean (C,), std (C,))}."""
        for i, k in enumerate(self.keys):
            mean, std = stats[k]
            c = self._widths[i]
            self.mean[i, :c] = mean.to(self.mean)
            self.scale[i, :c] = 1.0 / std.to(self.scale).clamp_min(1e-6)

    def _stacked(self, feats: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The raw maps as one (B, K, C, h, w) tensor, when the batch carries them so (no copy)."""
        if feats.get(STACKED_KEYS) == tuple(self.keys):
            return feats[STACKED]
        return None

    @staticmethod
    def _common_grid(feats: dict[str, torch.Tensor], keys: list[str]) -> tuple[int, int]:
        return max((feats[k].shape[-2:] for k in keys), key=lambda s: s[0] * s[1])

    def raw(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, K, C, h, w): the maps of a uniform fusion on one grid, not yet standardised."""
        x = self._stacked(feats)
        if x is None:
            size = tuple(self._common_grid(feats, self.keys))
            x = torch.stack([_resampled(feats[k], size) for k in self.keys], dim=1)
        return x

    def projected(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, K, dim, h, w): every map standardised and through its layer's projection, on one grid."""
        if self.uniform:
            if PROJECTED in feats and feats.get(STACKED_KEYS) == tuple(self.keys):
                return feats[PROJECTED]
            return (self.raw(feats) - self.mean[None, :, :, None, None]) * self.scale[None, :, :, None, None]
        size = tuple(self._common_grid(feats, self.keys))
        maps = []
        for i, k in enumerate(self.keys):
            c = self._widths[i]
            z = (feats[k] - self.mean[i, :c, None, None]) * self.scale[i, :c, None, None]
            maps.append(_resampled(self.proj[_module_name(_layer_of(k))](z), size))
        return torch.stack(maps, dim=1)

    def key_weights(self) -> dict[str, float] | None:
        """Learned global weight of each key (a fusion whose weights the reports draw), else None."""
        return None

    def weight_parameters(self) -> list[nn.Parameter]:
        """Parameters that set the fusion weights (trained at their own rate, without weight decay)."""
        return []

    def gate_parameters(self) -> list[nn.Parameter]:
        """Parameters that shape the weights locally (spatial fusion's gate): held still during the warm-up."""
        return []


class SingleFusion(Fusion):
    mode = "single"
    reads_one_map = True

    def __init__(self, keys, channels, dim=None):
        nn.Module.__init__(self)
        if len(keys) != 1:
            raise ValueError(f"single fusion takes exactly one feature map, got {len(keys)}")
        self.keys, self.layers = list(keys), [_layer_of(keys[0])]
        self.out_channels = channels[keys[0]]

    def forward(self, feats):
        return feats[self.keys[0]]

    def set_statistics(self, stats) -> None:
        """A single map is read as stored (its head normalises it): no fixed statistics to hold."""


class ConcatFusion(Fusion):
    mode = "concat"

    def __init__(self, keys, channels, dim=None):
        super().__init__(keys, channels, dim)
        self.out_channels = self.dim * len(self.keys)

    def forward(self, feats):
        return self.projected(feats).flatten(1, 2)


class GlobalFusion(Fusion):
    mode = "global"
    min_maps = 2
    learns_weights = True
    mixes_predictions = True

    def __init__(self, keys, channels, dim=None):
        super().__init__(keys, channels, dim)
        self.logits = nn.Parameter(torch.zeros(len(self.keys)))  # uniform mix at start
        self.out_channels = self.dim

    def mix_weights(self, projected: torch.Tensor) -> torch.Tensor:
        """(1, K, 1, 1): one weight per map, the same everywhere."""
        return torch.softmax(self.logits, dim=0).view(1, -1, 1, 1)

    def forward(self, feats):
        w = torch.softmax(self.logits, dim=0)
        if self.uniform and PROJECTED not in feats:  # sum_k w_k (x_k - m_k) s_k in one pass over the maps
            coef = w[:, None] * self.scale  # (K, C)
            shift = (coef * self.mean).sum(0)
            return torch.einsum("bkchw,kc->bchw", self.raw(feats), coef) - shift[None, :, None, None]
        return torch.einsum("bkchw,k->bchw", self.projected(feats), w)

    def key_weights(self):
        return dict(zip(self.keys, torch.softmax(self.logits.detach(), 0).cpu().tolist()))

    def weight_parameters(self):
        return [self.logits]


class SpatialFusion(Fusion):
    """Per-location weights: softmax over maps of a per-map logit (as global fusion's, at the fusion weights'
    own rate) plus a local correction from a light gate (each standardised map through a shared 1x1 reduction,
    the reductions side by side through a 3x3 conv; zero-initialised, trained with the head). The global part
    finds the useful maps robustly; the gate moves the mix across the image where that helps."""

    mode = "spatial"
    min_maps = 2
    learns_weights = True
    spatial = True
    mixes_predictions = True

    def __init__(self, keys, channels, dim=None, hidden: int = 32):
        super().__init__(keys, channels, dim)
        k = len(self.keys)
        self.logits = nn.Parameter(torch.zeros(k))
        self.reduce = nn.Sequential(nn.Conv2d(self.dim, hidden, 1), nn.GELU())
        self.gate = nn.Conv2d(k * hidden, k, 3, padding=1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.out_channels = self.dim
        self.last_weights: torch.Tensor | None = None  # (B, K, h, w) of the latest forward, for reports

    def mix_weights(self, projected: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w): the weights of every map at every location, from the standardised maps."""
        b, k = projected.shape[:2]
        hidden = self.reduce(projected.flatten(0, 1)).unflatten(0, (b, k)).flatten(1, 2)
        w = torch.softmax(self.logits.view(1, -1, 1, 1) + self.gate(hidden), dim=1)
        self.last_weights = w.detach()
        return w

    def forward(self, feats):
        p = self.projected(feats)  # (B, K, D, h, w)
        return (p * self.mix_weights(p).unsqueeze(2)).sum(1)

    def weight_parameters(self):
        return [self.logits]

    def gate_parameters(self):
        return list(self.reduce.parameters()) + list(self.gate.parameters())  # local correction: at the head's rate


class GroupedFusion(nn.Module):
    """One fusion per group of keys: all keys in one group, or one group per layer (multi-layer heads)."""

    def __init__(self, mode: str, keys: list[str], channels: dict[str, int], dim: int | None = None,
                 by_layer: bool = False):
        from probekit.registries import FUSIONS

        super().__init__()
        cls = FUSIONS.get(mode).load()  # unknown names: UnknownNameError with a suggestion
        if by_layer:
            layers = list(dict.fromkeys(_layer_of(k) for k in keys))
            groups = [[k for k in keys if _layer_of(k) == layer] for layer in layers]
        else:
            groups = [list(keys)]
        self.mode = mode
        self.cls = cls  # what the mode can do: its capability attributes (see Fusion)
        self.groups = nn.ModuleList(cls(g, channels, dim) for g in groups)
        self.out_channels = [g.out_channels for g in self.groups]

    def forward(self, feats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [g(feats) for g in self.groups]

    def key_weights(self) -> dict[str, float] | None:
        parts = [g.key_weights() for g in self.groups]
        if any(p is None for p in parts):
            return None
        out: dict[str, float] = {}
        for part in parts:
            out.update(part)
        return out

    def set_statistics(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for g in self.groups:
            g.set_statistics(stats)

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for g in self.groups for p in g.weight_parameters()]

    def gate_parameters(self) -> list[nn.Parameter]:
        return [p for g in self.groups for p in g.gate_parameters()]

    def spatial_weights(self) -> list[torch.Tensor] | None:
        if not self.cls.spatial:
            return None
        return [g.last_weights for g in self.groups]
