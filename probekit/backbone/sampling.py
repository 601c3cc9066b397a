"""Sampling from a flow-matching MM-DiT: Euler steps with classifier-free guidance.

The step itself is diffusers' ``FlowMatchEulerDiscreteScheduler``; this module adds guidance and an
optional per-step callback (used to reuse block features along the trajectory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

StepCallback = Callable[[int, float, torch.Tensor], None]  # (step index, sigma, x_t)


class FlowSampler:
    def __init__(self, folder: str | Path, device: str = "cpu"):
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

        from probekit.devices import resolve_device
        from probekit.models.loading import load_pretrained
        from probekit.backbone.model import prediction_type
        from probekit.models.text_conditioning import TextConditioner

        folder = Path(folder)
        self.folder = folder
        self.device = resolve_device(device)
        self.transformer = load_pretrained(SD3Transformer2DModel, folder / "transformer", "transformer")
        self.transformer = self.transformer.to(self.device).eval()
        self.conditioner = TextConditioner.from_folder(folder).to(self.device)
        self.scheduler = load_pretrained(FlowMatchEulerDiscreteScheduler, folder / "scheduler", "scheduler")
        self.prediction = prediction_type(folder)
        self.size = int(self.transformer.config.sample_size)
        self.channels = int(self.transformer.config.in_channels)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], *, steps: int = 30, guidance: float = 4.0, seed: int = 0,
               callback: StepCallback | None = None, noise_ids: Sequence[int] | None = None) -> np.ndarray:
        """uint8 images (N, H, W, 3) for ``prompts``; image i's initial noise is seeded by (seed, noise_ids[i]),
        noise_ids defaulting to 0..N-1, so a resumed or re-batched run draws the same images."""
        check_sampling(steps, guidance, len(prompts))
        n = len(prompts)
        ids = list(range(n)) if noise_ids is None else [int(i) for i in noise_ids]
        noise = torch.stack([
            torch.randn(self.channels, self.size, self.size, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
            for i in ids]).to(self.device)
        cond = self.conditioner(list(prompts))
        uncond = self.conditioner([""] * n)
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        self.scheduler.set_timesteps(steps, device=self.device)
        x = noise
        for i, t in enumerate(self.scheduler.timesteps):
            sigma = float(self.scheduler.sigmas[i])
            if callback is not None:
                callback(i, sigma, x)
            out = self.transformer(hidden_states=torch.cat([x, x]), timestep=t.expand(2 * n), return_dict=False,
                                   **both)[0]
            v = out if self.prediction == "velocity" else (torch.cat([x, x]) - out) / sigma  # sigma > 0 here
            v_uncond, v_cond = v.chunk(2)
            x = self.scheduler.step(v_uncond + guidance * (v_cond - v_uncond), t, x, return_dict=False)[0]
        images = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return images


def check_sampling(steps: int, guidance: float, n: int) -> None:
    """Refuse settings that would write noise or black images as if they were samples."""
    import math

    from probekit.errors import ProbekitError

    if int(steps) < 1:
        raise ProbekitError(f"--steps must be at least 1, got {steps}: zero steps would save the initial noise")
    if not math.isfinite(float(guidance)):
        raise ProbekitError(f"--guidance must be a finite number, got {guidance}")
    if int(n) < 1:
        raise ProbekitError("no prompts to sample")


def image_grid(images: np.ndarray, columns: int | None = None, scale: int = 2):
    """A PIL image of the samples tiled row by row (nearest-neighbour upscaled)."""
    from PIL import Image

    n, h, w, _ = images.shape
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = img
    pil = Image.fromarray(grid)
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil
