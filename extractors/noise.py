"""Noising a clean latent to timestep t without a sampler (no inversion).

Timesteps are integers in [0, 1000] for every family: 0 is the clean input, 1000 pure noise.
Flow-matching models map t to a noise level sigma with the model's shift; DDPM models use t
directly with their scheduler's ``add_noise``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

T_MAX = 1000


def sample_seed(seed: int, index: int, draw: int) -> int:
    """A 63-bit seed for one sample's noise draw, independent of batching and device."""
    return int(np.random.SeedSequence([seed, index, draw]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def sample_noise(shape: tuple[int, ...], seed: int, index: int, draw: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(sample_seed(seed, index, draw))
    return torch.randn(shape, generator=gen, dtype=torch.float32)


@dataclass
class NoiseSchedule:
    """``kind`` is "flow" (x_t = (1-s) x0 + s eps) or "ddpm" (scheduler.add_noise)."""

    kind: str
    shift: float = 1.0
    dynamic_shift: dict[str, float] | None = None  # FLUX-style resolution-dependent shift
    ddpm_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_scheduler_config(cls, config: dict[str, Any] | None, default: str) -> "NoiseSchedule":
        if not config:
            return cls(kind=default, shift=3.0 if default == "flow" else 1.0)
        name = config.get("_class_name", "")
        if "FlowMatch" in name:
            dyn = None
            if config.get("use_dynamic_shifting"):
                dyn = {k: float(config[k]) for k in ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")
                       if k in config}
            return cls(kind="flow", shift=float(config.get("shift", 1.0)), dynamic_shift=dyn)
        return cls(kind="ddpm", ddpm_config={k: v for k, v in config.items() if not k.startswith("_")})

    def sigma(self, t: int, image_seq_len: int | None = None) -> float:
        """Flow-matching noise level in [0, 1] for integer timestep t."""
        u = min(max(t / T_MAX, 0.0), 1.0)
        if self.dynamic_shift and image_seq_len is not None:
            d = self.dynamic_shift
            slope = (d["max_shift"] - d["base_shift"]) / (d["max_image_seq_len"] - d["base_image_seq_len"])
            mu = d["base_shift"] + slope * (image_seq_len - d["base_image_seq_len"])
            if u <= 0.0:
                return 0.0
            return math.exp(mu) / (math.exp(mu) + (1.0 / u - 1.0))
        k = self.shift
        return k * u / (1.0 + (k - 1.0) * u)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: int, image_seq_len: int | None = None) -> torch.Tensor:
        if self.kind == "flow":
            s = self.sigma(t, image_seq_len)
            return (1.0 - s) * x0 + s * eps
        sched = self._ddpm
        tt = torch.full((x0.shape[0],), self.ddpm_t(t, sched.config.num_train_timesteps), dtype=torch.long)
        return sched.add_noise(x0, eps, tt)

    @functools.cached_property
    def _ddpm(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.ddpm_config) if self.ddpm_config else DDPMScheduler()

    @staticmethod
    def ddpm_t(t: int, num_train_timesteps: int = 1000) -> int:
        return int(min(max(round(t * num_train_timesteps / T_MAX), 0), num_train_timesteps - 1))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "shift": self.shift, "dynamic_shift": self.dynamic_shift,
                "ddpm_config": self.ddpm_config}
