"""Noising a clean latent to timestep t without a sampler (no inversion).

Timesteps are integers in [0, 1000] for every family: 0 is the clean input, 1000 pure noise.
Flow-matching models map t to a noise level sigma with the model's shift; DDPM models use t
directly with their scheduler's ``add_noise``.
"""

from __future__ import annotations

import functools
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


def static_shift(u, shift: float):
    """A flow model's static shift of an unshifted noise level ``u`` (a float, or a tensor of them, computed in its
    dtype): ``k u / (1 + (k - 1) u)`` with ``k = shift``.

    The one place probekit writes it: it is what ``FlowMatchEulerDiscreteScheduler.set_timesteps`` does to a sigma
    without dynamic shifting (inline there; diffusers has no helper for it) and the flow sigmas of DPM-Solver /
    UniPC (``flow_shift``). Extraction (``NoiseSchedule``) and training (``probekit.backbone.train``) both call
    it. Dynamic shifting (``mu``, exponential or linear) is the scheduler's own ``time_shift``
    (``NoiseSchedule.shifted``).
    """
    return shift * u / (1.0 + (shift - 1.0) * u)


@dataclass
class NoiseSchedule:
    """``kind`` is "flow" (x_t = (1-s) x0 + s eps) or "ddpm" (scheduler.add_noise).

    A flow model's noise level for timestep t is its scheduler's own: ``u = t / 1000`` shifted by the static
    ``shift`` or, with ``dynamic`` shifting, by ``mu`` (which the family computes from the image's token count
    with its pipeline's helper), through diffusers' ``FlowMatchEulerDiscreteScheduler`` with the folder's
    ``time_shift_type``. ``shift_terminal`` stretches an N-step sampling schedule so that its last step lands
    there; one timestep has no schedule to stretch, so it is recorded and not applied.
    """

    kind: str
    shift: float = 1.0
    dynamic: bool = False
    time_shift_type: str = "exponential"
    scheduler_class: str | None = None
    shift_terminal: float | None = None
    ddpm_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_scheduler_config(cls, config: dict[str, Any] | None, default: str,
                              default_shift: float = 3.0) -> "NoiseSchedule":
        if not config:
            return cls(kind=default, shift=default_shift if default == "flow" else 1.0)
        name = config.get("_class_name", "")
        if "FlowMatch" in name:
            return cls(kind="flow", shift=float(config.get("shift", 1.0)),
                       dynamic=bool(config.get("use_dynamic_shifting")),
                       time_shift_type=config.get("time_shift_type", "exponential"), scheduler_class=name,
                       shift_terminal=config.get("shift_terminal"))
        if config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction":
            # DPM-Solver / UniPC run as flow samplers (Sana, HiDream): sigma = static_shift(u, flow_shift)
            return cls(kind="flow", shift=float(config.get("flow_shift", 1.0)), scheduler_class=name)
        return cls(kind="ddpm", scheduler_class=name,
                   ddpm_config={k: v for k, v in config.items() if not k.startswith("_")})

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> "NoiseSchedule":
        """The schedule a feature file's provenance recorded (``describe()``)."""
        fields = {k: v for k, v in described.items() if k in cls.__dataclass_fields__}
        if isinstance(fields.get("dynamic"), dict):  # files of earlier versions recorded the shift range here
            fields["dynamic"] = True
        return cls(**fields)

    def sigma(self, t: int, mu: float | None = None) -> float:
        """Flow-matching noise level in [0, 1] for integer timestep t (``mu``: the dynamic shift)."""
        return self.shifted(min(max(t / T_MAX, 0.0), 1.0), mu)

    def shifted(self, u: float, mu: float | None = None) -> float:
        """The scheduler's shift applied to an unshifted noise level u in [0, 1] (what its ``set_timesteps``
        does to a sigma it is given): ``static_shift`` or, with dynamic shifting, the scheduler's own
        ``time_shift`` at ``mu`` with the folder's ``time_shift_type`` (exponential or linear)."""
        if u == 0.0:
            return 0.0
        if self.dynamic:
            if mu is None:
                raise ValueError("a dynamically shifted schedule needs mu (from the image's token count)")
            sched = self._flow_scheduler
            sched.set_timesteps(sigmas=[u], mu=float(mu))
            return float(sched.sigmas[0])
        return static_shift(u, self.shift)

    @functools.cached_property
    def _flow_scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(shift=self.shift, use_dynamic_shifting=True,
                                               time_shift_type=self.time_shift_type)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: int, mu: float | None = None) -> torch.Tensor:
        if self.kind == "flow":
            s = self.sigma(t, mu)
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
        out = {"kind": self.kind, "shift": self.shift, "dynamic": self.dynamic, "scheduler_class": self.scheduler_class,
               "ddpm_config": self.ddpm_config}
        if self.dynamic:
            out["time_shift_type"] = self.time_shift_type
        if self.shift_terminal:
            out["shift_terminal"] = self.shift_terminal
            out["shift_terminal_applied"] = False
        return out
