"""Noise levels and noise draws against hand-computed values and diffusers' own schedulers.

What could break: the shift formula (static, or dynamic through the scheduler with either time-shift type),
the clamping of timesteps to [0, 1000], the DDPM timestep index, a schedule read from a scheduler config or a
feature file's provenance as another one, and a noise draw that depends on anything but (seed, sample, draw).
"""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from probekit.models.noise import NoiseSchedule, sample_noise, sample_seed, static_shift

FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
DDPM = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
        "beta_schedule": "linear", "_diffusers_version": "0.42.1"}


@pytest.mark.parametrize("t, expected", [(0, 0.0), (250, 0.5), (500, 0.75), (1000, 1.0), (-10, 0.0), (1300, 1.0)])
def test_a_static_shift_maps_t_to_k_u_over_1_plus_k_minus_1_u(t, expected):
    assert NoiseSchedule("flow", shift=3.0).sigma(t) == pytest.approx(expected, abs=1e-15)


def test_shift_one_is_the_identity_and_shifted_takes_u_directly():
    flat = NoiseSchedule("flow", shift=1.0)
    assert [flat.sigma(t) for t in (0, 100, 730, 1000)] == pytest.approx([0.0, 0.1, 0.73, 1.0], abs=1e-15)
    assert NoiseSchedule("flow", shift=2.0).shifted(0.25) == pytest.approx(2 * 0.25 / (1 + 0.25), abs=1e-15)


@pytest.mark.parametrize("kind, shift_of", [("exponential", lambda mu, u: math.exp(mu) / (math.exp(mu) + 1 / u - 1)),
                                            ("linear", lambda mu, u: mu / (mu + 1 / u - 1))])
def test_a_dynamic_shift_is_the_schedulers_time_shift_at_mu(kind, shift_of):
    sched = NoiseSchedule("flow", shift=3.0, dynamic=True, time_shift_type=kind)
    for t, mu in ((300, 0.7), (800, 1.15), (50, 0.5)):
        assert sched.sigma(t, mu) == pytest.approx(shift_of(mu, t / 1000), rel=1e-6)
    assert sched.sigma(0, 0.7) == 0.0 and sched.sigma(0) == 0.0  # the clean input needs no mu
    with pytest.raises(ValueError, match="needs mu"):
        sched.sigma(500)


@pytest.mark.parametrize("kind", ["exponential", "linear"])
def test_noise_levels_are_the_flow_schedulers_own_for_each_time_shift_type(kind):
    """The noise level read from a scheduler config is the one diffusers' scheduler gives the same unshifted
    sigma: statically shifted (float64 here, float32 there) or dynamically at mu with the config's time-shift
    type (the scheduler itself: the same bits)."""
    for shift in (1.0, 3.0, 6.93):
        static_config = {**FLOW, "shift": shift, "time_shift_type": kind}
        ours, theirs = NoiseSchedule.from_scheduler_config(static_config, "ddpm"), \
            FlowMatchEulerDiscreteScheduler.from_config(static_config)
        for t in (1, 50, 300, 500, 800, 999, 1000):
            theirs.set_timesteps(sigmas=[t / 1000])
            assert ours.sigma(t) == pytest.approx(float(theirs.sigmas[0]), rel=1e-6)
        dynamic_config = {**static_config, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}
        ours, theirs = NoiseSchedule.from_scheduler_config(dynamic_config, "ddpm"), \
            FlowMatchEulerDiscreteScheduler.from_config(dynamic_config)
        assert ours.time_shift_type == kind
        for t in (1, 50, 300, 500, 800, 999, 1000):
            for mu in (0.5, 0.9, 1.15, 2.0):
                theirs.set_timesteps(sigmas=[t / 1000], mu=mu)
                assert ours.sigma(t, mu) == float(theirs.sigmas[0])


def test_training_and_extraction_shift_with_the_same_function():
    """``static_shift`` on a float32 batch (training) is the scheduler's static shift of each sigma, in float32."""
    u = torch.linspace(0.0, 1.0, 101)
    reference = FlowMatchEulerDiscreteScheduler(shift=3.0)
    reference.set_timesteps(sigmas=u.tolist())
    assert static_shift(u, 3.0).dtype == torch.float32
    torch.testing.assert_close(static_shift(u, 3.0), reference.sigmas[:-1], rtol=1e-6, atol=1e-7)
    assert [NoiseSchedule("flow", shift=3.0).shifted(float(x)) for x in (0.1, 0.5)] == \
        [static_shift(0.1, 3.0), static_shift(0.5, 3.0)]


def test_flow_noise_mixes_the_clean_input_and_the_noise_at_sigma():
    x0 = torch.full((2, 3, 4, 4), 2.0)
    eps = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    sched = NoiseSchedule("flow", shift=3.0)
    torch.testing.assert_close(sched.add_noise(x0, eps, 500), 0.25 * x0 + 0.75 * eps)
    torch.testing.assert_close(sched.add_noise(x0, eps, 0), x0)
    dynamic = NoiseSchedule("flow", dynamic=True)
    s = dynamic.sigma(400, 0.9)
    torch.testing.assert_close(dynamic.add_noise(x0, eps, 400, mu=0.9), (1 - s) * x0 + s * eps)


def test_ddpm_noise_is_the_schedulers_add_noise_at_the_rounded_index():
    config = {k: v for k, v in DDPM.items() if not k.startswith("_")}
    ours = NoiseSchedule.from_scheduler_config(DDPM, "flow")
    assert ours.kind == "ddpm" and ours.ddpm_config == config and ours.scheduler_class == "DDPMScheduler"
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    reference = DDPMScheduler.from_config(config)
    for t, index in ((0, 0), (1, 1), (500, 500), (1000, 999)):
        expected = reference.add_noise(x0, eps, torch.full((2,), index, dtype=torch.long))
        torch.testing.assert_close(ours.add_noise(x0, eps, t), expected, rtol=0, atol=0)
    # A scheduler of 500 steps: t in [0, 1000] maps onto its indices 0..499.
    short = NoiseSchedule("ddpm", ddpm_config={**config, "num_train_timesteps": 500})
    torch.testing.assert_close(short.add_noise(x0, eps, 600), DDPMScheduler(**{**config, "num_train_timesteps": 500})
                               .add_noise(x0, eps, torch.full((2,), 300, dtype=torch.long)), rtol=0, atol=0)
    plain = NoiseSchedule("ddpm")  # no config: diffusers' default DDPM
    torch.testing.assert_close(plain.add_noise(x0, eps, 300),
                               DDPMScheduler().add_noise(x0, eps, torch.full((2,), 300, dtype=torch.long)))


def test_the_ddpm_index_defaults_to_a_1000_step_scheduler():
    assert NoiseSchedule.ddpm_t(1000) == 999 and NoiseSchedule.ddpm_t(500) == 500


@pytest.mark.parametrize("t, steps, index", [(0, 1000, 0), (999, 1000, 999), (1000, 1000, 999), (-4, 1000, 0),
                                             (1500, 1000, 999), (600, 500, 300), (3, 500, 2), (1, 2000, 2),
                                             (1000, 2000, 1999)])
def test_ddpm_index_of_a_timestep(t, steps, index):
    assert NoiseSchedule.ddpm_t(t, steps) == index


def test_schedules_read_from_scheduler_configs():
    flow = NoiseSchedule.from_scheduler_config(FLOW, "ddpm")
    assert (flow.kind, flow.shift, flow.dynamic, flow.time_shift_type, flow.scheduler_class, flow.shift_terminal) == \
        ("flow", 3.0, False, "exponential", "FlowMatchEulerDiscreteScheduler", None)
    flux = NoiseSchedule.from_scheduler_config({**FLOW, "use_dynamic_shifting": True, "time_shift_type": "linear",
                                                "shift_terminal": 0.02}, "flow")
    assert flux.dynamic is True and flux.time_shift_type == "linear" and flux.shift_terminal == 0.02
    bare = NoiseSchedule.from_scheduler_config({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "ddpm")
    assert bare.shift == 1.0 and bare.dynamic is False
    for solver in ({"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": True, "flow_shift": 4.0},
                   {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction", "flow_shift": 4.0}):
        s = NoiseSchedule.from_scheduler_config(solver, "ddpm")
        assert (s.kind, s.shift, s.dynamic, s.scheduler_class) == ("flow", 4.0, False, solver["_class_name"])
    assert NoiseSchedule.from_scheduler_config({"_class_name": "X", "use_flow_sigmas": True}, "ddpm").shift == 1.0
    assert NoiseSchedule.from_scheduler_config({"_class_name": "X", "prediction_type": "epsilon"}, "flow").kind == "ddpm"
    unnamed = NoiseSchedule.from_scheduler_config({"num_train_timesteps": 1000}, "flow")  # a config naming no class
    assert unnamed.kind == "ddpm" and unnamed.scheduler_class == ""
    # No scheduler in the folder: the family's default kind, with its default shift for flow models.
    assert (NoiseSchedule.from_scheduler_config(None, "flow").kind, NoiseSchedule.from_scheduler_config(None, "flow")
            .shift) == ("flow", 3.0)
    assert NoiseSchedule.from_scheduler_config({}, "flow", default_shift=2.5).shift == 2.5
    ddpm = NoiseSchedule.from_scheduler_config(None, "ddpm", default_shift=2.5)
    assert ddpm.kind == "ddpm" and ddpm.shift == 1.0


def test_a_schedule_is_described_and_read_back_from_a_feature_files_provenance():
    static = NoiseSchedule.from_scheduler_config(FLOW, "flow")
    assert static.describe() == {"kind": "flow", "shift": 3.0, "dynamic": False,
                                 "scheduler_class": "FlowMatchEulerDiscreteScheduler", "ddpm_config": {}}
    dynamic = NoiseSchedule("flow", shift=1.0, dynamic=True, time_shift_type="linear", shift_terminal=0.1)
    described = dynamic.describe()
    assert described["time_shift_type"] == "linear" and described["dynamic"] is True
    assert described["shift_terminal"] == 0.1 and described["shift_terminal_applied"] is False
    for schedule in (static, dynamic, NoiseSchedule.from_scheduler_config(DDPM, "ddpm")):
        assert NoiseSchedule.from_description(schedule.describe()) == schedule
    # Files of earlier versions recorded the dynamic shift's range in place of a flag.
    old = NoiseSchedule.from_description({"kind": "flow", "shift": 1.0, "dynamic": {"base_shift": 0.5}})
    assert old.dynamic is True
    assert NoiseSchedule.from_description({"kind": "flow", "shift": 2.0, "dynamic": False}).dynamic is False


def test_a_noise_draw_depends_on_seed_sample_and_draw_only():
    seed = sample_seed(5, 3, 1)
    assert seed == sample_seed(5, 3, 1) and 0 <= seed < 2**63
    state = np.random.SeedSequence([5, 3, 1]).generate_state(2, dtype=np.uint64)[0]
    assert seed == int(state) >> 1  # documented: the first 64-bit word of numpy's SeedSequence, halved
    assert len({sample_seed(5, 3, 1), sample_seed(6, 3, 1), sample_seed(5, 4, 1), sample_seed(5, 3, 2)}) == 4
    eps = sample_noise((3, 4, 4), 5, 3, 1)
    assert eps.shape == (3, 4, 4) and eps.dtype == torch.float32
    assert torch.equal(eps, sample_noise((3, 4, 4), 5, 3, 1))
    assert torch.equal(eps, torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(seed)))
    assert not torch.equal(eps, sample_noise((3, 4, 4), 5, 3, 2))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # a user's default dtype changes nothing: the draw is float32
    try:
        assert torch.equal(sample_noise((3, 4, 4), 5, 3, 1), eps)
    finally:
        torch.set_default_dtype(default)
