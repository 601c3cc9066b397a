"""Feature keys: the name of one stored map, e.g. ``t=250/layer=2``, ``layer=5``, ``src=dinov3/layer=11`` or
``t=250/layer=2/site=norm1`` (a capture site other than the block output).

One small type so that no caller decodes key strings by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


DEFAULT_SITE = "output"  # a DiT block's output; keys of other capture sites end in "/site=NAME"


def feature_key(timestep: int | None, layer: int | str, site: str = DEFAULT_SITE) -> str:
    """The canonical key of one feature map: "t=250/layer=2", "layer=2" without a timestep, and
    "t=250/layer=2/site=attn" for a capture site other than the block output."""
    key = f"layer={layer}" if timestep is None else f"t={timestep}/layer={layer}"
    return key if site == DEFAULT_SITE else f"{key}/site={site}"


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

    def short(self) -> str:
        """"t250-l4": the key as it appears in probe names (the source left out)."""
        return "-".join(f"{k[0]}{v}" for k, v in self.parts.items() if k != "src")


def timesteps_of(keys: Iterable[str]) -> list[int]:
    """The distinct timesteps among ``keys``, ascending (keys without one are ignored)."""
    return sorted({t for t in (FeatureKey(k).timestep for k in keys) if t is not None})


def layers_of(keys: Iterable[str]) -> list[str]:
    """The distinct layers among ``keys``, in first-seen order."""
    return list(dict.fromkeys(FeatureKey(k).layer for k in keys))
