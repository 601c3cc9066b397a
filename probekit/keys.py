"""Feature keys: the name of one stored map, e.g. ``t=250/layer=2``, ``layer=5``, ``src=dinov3/layer=11`` or
``t=250/site=norm1/layer=2`` (a capture site other than the block output).

One small type so that no caller decodes key strings by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


DEFAULT_SITE = "output"  # a DiT block's output; keys of other capture sites hold "site=NAME/"


def feature_key(timestep: int | None, layer: int | str, site: str = DEFAULT_SITE) -> str:
    """The canonical key of one feature map: "t=250/layer=2", "layer=2" without a timestep, and
    "t=250/site=attn/layer=2" for a capture site other than the block output. (The site comes before the layer:
    keys are HDF5 paths, and a block output's dataset "t=250/layer=2" cannot also be a group.)"""
    site_part = "" if site == DEFAULT_SITE else f"site={site}/"
    return f"{site_part}layer={layer}" if timestep is None else f"t={timestep}/{site_part}layer={layer}"


def parse_key(key: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in key.split("/"))


@dataclass(frozen=True)
class FeatureKey:
    text: str

    @property
    def parts(self) -> dict[str, str]:
        return parse_key(self.text)

    @property
    def timestep(self) -> int | None:
        t = self.parts.get("t")
        return None if t is None else int(t)

    @property
    def layer(self) -> str | None:
        return self.parts.get("layer")

    @property
    def source(self) -> str | None:
        return self.parts.get("src")

    @property
    def site(self) -> str:
        """The capture site in the block ("output" when the key names none)."""
        return self.parts.get("site", DEFAULT_SITE)

    @property
    def without_timestep(self) -> str:
        """The key of its (source, layer): maps that share a projection across timesteps."""
        return "/".join(f"{k}={v}" for k, v in self.parts.items() if k != "t")

    @property
    def column(self) -> str:
        """The key's place across a (timestep x layer) grid: its layer, then its site when not the block
        output ("4/attn"), after its source in a combined file ("dinov3/11")."""
        parts = [self.source] if self.source else []
        parts.append(self.layer or "")
        if self.site != DEFAULT_SITE:
            parts.append(self.site)
        return "/".join(parts)

    def short(self) -> str:
        """"t250-l4": the key as it appears in probe names (the source left out)."""
        return "-".join(f"{k[0]}{v}" for k, v in self.parts.items() if k != "src")


def timesteps_of(keys: Iterable[str]) -> list[int]:
    """The distinct timesteps among ``keys``, ascending (keys without one are ignored)."""
    return sorted({t for t in (FeatureKey(k).timestep for k in keys) if t is not None})


def columns_of(keys: Iterable[str]) -> list[str]:
    """The distinct grid columns (layer, with site and source where they vary) among ``keys``, first-seen order."""
    return list(dict.fromkeys(FeatureKey(k).column for k in keys))


def sites_of(keys: Iterable[str]) -> list[str]:
    """The distinct capture sites among ``keys``, first-seen order."""
    return list(dict.fromkeys(FeatureKey(k).site for k in keys))


def layers_of(keys: Iterable[str]) -> list[str]:
    """The distinct layers among ``keys``, in first-seen order."""
    return list(dict.fromkeys(FeatureKey(k).layer for k in keys))
