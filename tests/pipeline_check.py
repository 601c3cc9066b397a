"""The proof of a DiT family, shared by tests/test_family_*.py: probekit's stored maps equal the block outputs
the family's own diffusers pipeline computes at its first denoising step, from the same noised latent at the
same noise level.

For every sample and timestep, probekit extracts into an HDF5 file (float16, as users store them). The pipeline
is then called with ``latents=`` that sample's noised latent in the pipeline's own layout, a one-step scheduler
that yields exactly probekit's noise level (flow) or timestep (DDPM) whatever the pipeline asks it, and
``output_type="latent"``. Plain forward hooks on the compared blocks (not probekit's capture) record the image
tokens, and the pipeline is stopped once the deepest compared block has run. The pipeline encodes the prompt
itself (``prompt=""`` or the caption), so the conditioning is checked too.

Each family test gives what only it knows, independently of probekit's family module: how to reach the blocks,
where the image tokens sit in a block's output, and the pipeline's call arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

TIMESTEPS = [100, 500, 900]
MAX_RELATIVE_DIFFERENCE = 1e-3  # float16 storage rounds at about 5e-4 of a value


class _FixedStep:
    """``set_timesteps`` yields the one step under test, whatever number of steps, sigmas or mu it is given."""

    fixed_timestep: float = 0.0
    fixed_sigma: float = 0.0

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None, **kwargs):
        dtype = torch.long if isinstance(self.fixed_timestep, int) else torch.float32
        self.timesteps = torch.tensor([self.fixed_timestep], dtype=dtype, device=device)
        self.sigmas = torch.tensor([self.fixed_sigma, 0.0], dtype=torch.float32, device=device)
        self.num_inference_steps = 1
        self._step_index = self._begin_index = None


def fixed_step_scheduler(kind: str, sigma: float, t_int: int):
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if kind == "flow":
        sched = type("FixedFlowStep", (_FixedStep, FlowMatchEulerDiscreteScheduler), {})()
        sched.fixed_timestep, sched.fixed_sigma = float(sigma) * 1000.0, float(sigma)
    else:
        sched = type("FixedDDPMStep", (_FixedStep, DDPMScheduler), {})()
        sched.fixed_timestep, sched.fixed_sigma = int(t_int), 0.0
    return sched


class _Stop(Exception):
    pass


def last_element(output, n_img: int) -> torch.Tensor:
    """Image tokens of a block returning (text, image) or the image stream alone."""
    return output[-1] if isinstance(output, (tuple, list)) else output


def last_tokens(output, n_img: int) -> torch.Tensor:
    """Image tokens at the end of a joined [text; image] sequence."""
    tokens = output[-1] if isinstance(output, (tuple, list)) else output
    return tokens[:, -n_img:]


@dataclass
class PipelineCheck:
    """What a family test knows about its pipeline."""

    pipe: object  # the pipeline loaded whole from the saved folder (text encoders included)
    blocks: Callable[[torch.nn.Module], Sequence[torch.nn.Module]]  # transformer -> every block, probekit's order
    call: Callable[[str], dict] = field(default=lambda prompt: {"prompt": prompt})  # prompt -> pipe() kwargs
    image_tokens: Callable[[object, int], torch.Tensor] | dict[int, Callable] = last_element
    grid: tuple[int, int] = (8, 8)  # token rows, columns for the test images

    def tokens_of(self, layer: int, output, n_img: int) -> torch.Tensor:
        pick = self.image_tokens.get(layer, last_element) if isinstance(self.image_tokens, dict) else self.image_tokens
        return pick(output, n_img)


def pipeline_block_tokens(check: PipelineCheck, layers: Sequence[int], latents: torch.Tensor, prompt: str,
                          sigma: float, t_int: int, kind: str, height: int, width: int) -> dict[int, torch.Tensor]:
    """{layer: (N, C) image tokens} of the pipeline's first denoising step."""
    pipe = check.pipe
    pipe.scheduler = fixed_step_scheduler(kind, sigma, t_int)
    blocks = check.blocks(pipe.transformer)
    n_img = check.grid[0] * check.grid[1]
    out: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def hook(layer):
        def fn(module, args, kwargs, output):
            out[layer] = check.tokens_of(layer, output, n_img)[0].detach().float().clone()
            if layer == deepest:
                raise _Stop
        return fn

    accepted = inspect.signature(type(pipe).__call__).parameters
    kwargs = {k: v for k, v in {"latents": latents, "num_inference_steps": 1, "output_type": "latent",
                                "height": height, "width": width}.items() if k in accepted}
    kwargs.update(check.call(prompt))  # the family's own arguments win
    handles = [blocks[layer].register_forward_hook(hook(layer), with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            pipe(**kwargs)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    assert set(out) == set(layers), f"blocks {sorted(set(layers) - set(out))} never ran in the pipeline"
    return out


def relative_difference(stored: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(stored.astype(np.float64) - reference).max() / max(np.abs(reference).max(), 1e-12))


def assert_matches_pipeline(folder, check: PipelineCheck, tmp_path, *, layers: Sequence[int], conditioning: str,
                            dataset, timesteps: Sequence[int] = TIMESTEPS, **extractor_kwargs) -> float:
    """Extract ``dataset`` with probekit and compare every stored map with the pipeline's; returns the largest
    relative difference seen (max |stored - pipeline| / max |pipeline| per map)."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
    from probekit.extractors.runner import extract_dataset
    from probekit.store import FeatureReader

    ex = DiffusersDiTExtractor(folder, timesteps=timesteps, layers=layers, conditioning=conditioning, seed=3,
                               device="cpu", **extractor_kwargs)
    path = extract_dataset(ex, dataset, tmp_path / f"{conditioning}.h5", progress=False)
    n = len(dataset)
    samples = [dataset[i] for i in range(n)]
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255.0
    captions = [s.caption for s in samples]
    inputs = ex.model_inputs(images, captions, list(range(n)))  # the same seeded noise as the stored maps
    height, width = images.shape[-2:]
    worst = 0.0
    with FeatureReader(path) as reader:
        assert reader.shape(f"t={timesteps[0]}/layer={layers[0]}")[1:] == check.grid
        for i in range(n):
            prompt = captions[i] if conditioning == "caption" else ""
            for j, t in enumerate(timesteps):
                row = i * len(timesteps) + j
                latents = ex.family.pipeline_latents(inputs.x_t[row:row + 1])
                ref = pipeline_block_tokens(check, layers, latents, prompt, float(inputs.sigma[row]),
                                            int(inputs.t_int[row]), ex.schedule.kind, height, width)
                for layer in layers:
                    stored = reader.read(f"t={t}/layer={layer}", [i])[0]
                    expected = ref[layer].reshape(*check.grid, -1).permute(2, 0, 1).numpy()
                    diff = relative_difference(stored, expected)
                    assert diff < MAX_RELATIVE_DIFFERENCE, (f"{conditioning} sample {i} t={t} block {layer}: "
                                                            f"relative difference {diff:.2e}")
                    worst = max(worst, diff)
    _log(ex, conditioning, worst, layers, timesteps)
    return worst


def _log(ex, conditioning: str, worst: float, layers, timesteps) -> None:
    """With PROBEKIT_PIPELINE_CHECK_LOG set, one JSON line per check (docs/families.py builds its table from them)."""
    import json
    import os

    path = os.environ.get("PROBEKIT_PIPELINE_CHECK_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"transformer_class": ex.transformer_class, "pipeline_class": ex.family.pipeline_class,
                                "conditioning": conditioning, "worst": worst, "layers": list(layers),
                                "timesteps": list(timesteps), "test": os.environ.get("PYTEST_CURRENT_TEST")}) + "\n")
