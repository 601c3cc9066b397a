"""Probe heads: small trainable modules on top of the fused feature map(s).

Every head takes ``maps`` (a list of (B, C_i, h, w) tensors: one map, or one per layer for a head with
``multi_layer = True``) and returns logits on the features' grid, or a finer one; the probe upsamples them
bilinearly to the label size. Heads are found by name through ``probekit.registries.HEADS``.

What a head can do is said by its class: ``multi_layer`` (reads one fused map per layer), ``prediction_level``
(cheap enough to read each map on its own, so that global and spatial fusion mix the maps' predictions by
default: probes/config.py). Nothing else looks at a head's name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class LinearHead(nn.Module):
    """BatchNorm + 1x1 conv: a per-location linear read-out."""

    multi_layer = False
    prediction_level = True

    def __init__(self, in_channels: list[int] | int, out_channels: int):
        super().__init__()
        cin = in_channels[0] if isinstance(in_channels, list) else in_channels
        self.norm = nn.BatchNorm2d(cin)
        self.proj = nn.Conv2d(cin, out_channels, kernel_size=1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.proj(self.norm(maps[0]))


class PerMapLinear(nn.Module):
    """One linear read-out per map, all in one grouped 1x1 conv: (B, K, C, h, w) -> (B, K, out, h, w), read-out k
    seeing map k only (prediction-level fusion).

    Each read-out is ``LinearHead``'s BatchNorm + 1x1 conv with the batch statistics replaced by the fixed
    training statistics the maps arrive standardised with (probes/fusion.py). BatchNorm's per-channel scale and
    shift stay, folded into the conv's weight and bias, so nothing runs over the maps but one conv: they matter
    for how fast the read-out trains (a shift per input channel moves the bias, the class prior, about C times
    faster than the conv's own bias), and running BatchNorm over every map's every channel would be most of the
    cost."""

    def __init__(self, maps: int, in_channels: int, out_channels: int):
        super().__init__()
        self.maps, self.in_channels, self.out_channels = maps, in_channels, out_channels
        conv = nn.Conv2d(maps * in_channels, maps * out_channels, kernel_size=1, groups=maps)  # its initialisation
        self.weight = nn.Parameter(conv.weight.detach().view(maps, out_channels, in_channels).clone())
        self.bias = nn.Parameter(conv.bias.detach().view(maps, out_channels).clone())
        self.scale = nn.Parameter(torch.ones(maps, in_channels))
        self.shift = nn.Parameter(torch.zeros(maps, in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, c, h, w = x.shape
        weight = self.weight * self.scale[:, None, :]  # W (gamma x + beta) + b = (W gamma) x + (W beta + b)
        bias = self.bias + torch.einsum("koc,kc->ko", self.weight, self.shift)
        out = F.conv2d(x.reshape(b, k * c, h, w), weight.reshape(k * self.out_channels, c, 1, 1), bias.reshape(-1),
                       groups=k)
        return out.view(b, k, self.out_channels, h, w)


class ConvHead(nn.Module):
    """Two 3x3 conv + BN + ReLU layers, then a 1x1 classifier."""

    multi_layer = False
    prediction_level = False

    def __init__(self, in_channels: list[int] | int, out_channels: int, hidden: int = 128):
        super().__init__()
        cin = in_channels[0] if isinstance(in_channels, list) else in_channels
        self.net = nn.Sequential(nn.BatchNorm2d(cin), _conv_bn(cin, hidden), _conv_bn(hidden, hidden),
                                 nn.Conv2d(hidden, out_channels, 1))

    def forward(self, maps):
        return self.net(maps[0])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling, with dilations suited to 16-64 token grids."""

    def __init__(self, cin: int, cout: int, dilations=(1, 2, 4)):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn(cin, cout, 1)] + [_conv_bn(cin, cout, 3, d) for d in dilations[1:]])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = _conv_bn(cout * (len(self.branches) + 1), cout, 1)

    def forward(self, x):
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabHead(nn.Module):
    """DeepLabV3+-lite: ASPP on the features, then a light decoder at twice the resolution with a skip."""

    multi_layer = False
    prediction_level = False

    def __init__(self, in_channels: list[int] | int, out_channels: int, hidden: int = 96):
        super().__init__()
        cin = in_channels[0] if isinstance(in_channels, list) else in_channels
        self.norm = nn.BatchNorm2d(cin)
        self.aspp = ASPP(cin, hidden)
        self.skip = _conv_bn(cin, hidden // 2, 1)
        self.decoder = nn.Sequential(_conv_bn(hidden + hidden // 2, hidden), _conv_bn(hidden, hidden),
                                     nn.Conv2d(hidden, out_channels, 1))

    def forward(self, maps):
        x = self.norm(maps[0])
        size = (x.shape[-2] * 2, x.shape[-1] * 2)
        up = F.interpolate(self.aspp(x), size=size, mode="bilinear", align_corners=False)
        skip = F.interpolate(self.skip(x), size=size, mode="bilinear", align_corners=False)
        return self.decoder(torch.cat([up, skip], dim=1))


class ResidualConvUnit(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)


class FeatureFusionBlock(nn.Module):
    """DPT's fusion block: refine the skip, add the coarser path, refine, upsample x2."""

    def __init__(self, dim: int):
        super().__init__()
        self.skip_unit = ResidualConvUnit(dim)
        self.out_unit = ResidualConvUnit(dim)
        self.out_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, coarse: torch.Tensor | None, skip: torch.Tensor) -> torch.Tensor:
        x = self.skip_unit(skip)
        if coarse is not None:
            x = x + F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = self.out_unit(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """DPT-lite: reassemble the maps of several layers at increasing strides (earliest layer finest), fuse
    them coarse-to-fine with residual fusion blocks, then a small output conv."""

    multi_layer = True
    prediction_level = False
    SCALES = (2.0, 1.0, 0.5, 0.25)

    def __init__(self, in_channels: list[int] | int, out_channels: int, dim: int = 64):
        super().__init__()
        chans = in_channels if isinstance(in_channels, list) else [in_channels]
        self.scales = self.SCALES[: len(chans)] if len(chans) <= 4 else None
        if self.scales is None:
            raise ValueError(f"DPT-lite reassembles up to 4 layers, got {len(chans)}")
        self.reassemble = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(c), nn.Conv2d(c, dim, 1)) for c in chans)
        self.fusion = nn.ModuleList(FeatureFusionBlock(dim) for _ in chans)
        self.out = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1), nn.ReLU(), nn.Conv2d(dim // 2, out_channels, 1))

    def forward(self, maps):
        levels = []
        for x, scale, proj in zip(maps, self.scales, self.reassemble):
            x = proj(x)
            if scale != 1.0:
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            levels.append(x)
        path = None
        for level, block in zip(reversed(levels), reversed(self.fusion)):  # coarsest first
            path = block(path, level)
        return self.out(path)

