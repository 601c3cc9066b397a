"""A data engine: sample images with the DiT and label them with trained probe heads, from the block outputs
computed along the sampling trajectory (no extra forward passes).

Each head was trained on features at timesteps t (noised real images). During sampling, each t is snapped to
the sampler step whose noise level is nearest to t's, and the block outputs of that step are what the head
reads; the mapping actually used is recorded in the dataset manifest. The half of the classifier-free-guidance
batch whose conditioning matches the head's training features (empty prompt, or the caption) is used.

Output folder::

    manifest.yaml             loader "generated", classes, palette, depth scale, heads, sampler, snapped steps
    images/000000.png         RGB
    seg/000000.png            palette PNG of class ids
    depth/000000.png          16-bit PNG; depth in metres = value * depth_scale
    saliency/000000.png       0 / 255

A sample counts as written once its image PNG exists (written last, atomically), so an interrupted run resumes
without duplicating or half-writing samples.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from tqdm.auto import tqdm

from probekit import atomic
from probekit.errors import ProbekitError
from probekit.keys import FeatureKey
from probekit.probes.load import TrainedProbe
from probekit.provenance import base_provenance, weights_identity

PALETTE = [(34, 34, 34), (0, 114, 178), (230, 159, 0), (0, 158, 115), (213, 94, 0), (204, 121, 167),
           (86, 180, 233), (240, 228, 66), (0, 0, 0)]


def _shift_sigma(t: int, schedule: dict[str, Any]) -> float:
    """The noise level a head's feature file used for timestep t (its recorded schedule; the sampler's model
    shifts statically)."""
    from probekit.models.noise import NoiseSchedule

    return NoiseSchedule.from_description({"kind": "flow", "shift": 1.0, **schedule}).sigma(t)


def default_prompts(n: int, seed: int) -> list[str]:
    """Scene descriptions in ShapeWorld's caption grammar, from its pretrain split (never probed)."""
    from probekit.datasets.shapeworld import ShapeWorld

    ds = ShapeWorld("pretrain")
    start = (seed * 7919) % (len(ds) - n)
    return [ds[start + i].caption for i in range(n)]


def generate_dataset(weights: str | Path, heads: Sequence[str | Path], out: str | Path, *,
                     prompts: Sequence[str] | None = None, n: int | None = None, steps: int = 30,
                     guidance: float = 4.0, seed: int = 0, batch_size: int = 8, device: str = "cpu",
                     progress: bool = True, name: str | None = None) -> dict[str, Any]:
    from probekit.backbone.sampling import FlowSampler

    out = Path(out)
    if prompts is None:
        if n is None:
            raise ProbekitError("give prompts or a number of images")
        prompts = default_prompts(n, seed)
    prompts = list(prompts)
    trained = [TrainedProbe(h) for h in heads]
    if not trained:
        raise ProbekitError("no heads given")
    sampler = FlowSampler(weights, device=device)
    ident = weights_identity(weights)
    for h in trained:
        if h.weights_files and ident["files"] and h.weights_files != ident["files"]:
            raise ProbekitError(f"{h.run_dir} was trained on features of other weights than {weights}")
    snapped = snap_timesteps(trained, sampler, steps)
    manifest = _manifest(out, name, trained, prompts, snapped, {"steps": steps, "guidance": guidance, "seed": seed},
                         weights, ident)
    _prepare_folder(out, manifest)
    todo = [i for i in range(len(prompts)) if not (out / "images" / f"{i:06d}.png").is_file()]
    started, made = time.perf_counter(), 0
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=f"generate -> {out.name}", unit="img",
               disable=not progress)
    with _Trajectory(sampler, trained, snapped) as trajectory:
        try:
            for start in range(0, len(todo), batch_size):
                idx = todo[start:start + batch_size]
                images = trajectory.sample([prompts[i] for i in idx], idx, steps, guidance, seed)
                labels = {h.task_name: h.predict(trajectory.maps(h, len(idx)), images.shape[1:3]) for h in trained}
                for row, i in enumerate(idx):
                    _write_sample(out, i, images[row], {t: v[row] for t, v in labels.items()}, manifest)
                made += len(idx)
                bar.update(len(idx))
        finally:
            bar.close()
    wall = time.perf_counter() - started
    return {"out": out, "generated": made, "skipped": len(prompts) - len(todo), "wall_time_s": wall,
            "images_per_second": made / wall if wall > 0 else float("nan"),
            "halves": sorted({h.conditioning for h in trained}),
            "snapped": {t: v["step"] for t, v in sorted(snapped.items())}}


def snap_timesteps(trained: list[TrainedProbe], sampler, steps: int) -> dict[int, dict[str, Any]]:
    """Every head timestep snapped to the sampler's grid of ``steps`` (the step of nearest noise level)."""
    sampler.scheduler.set_timesteps(steps)
    grid = [float(s) for s in sampler.scheduler.sigmas[:-1]]
    snapped: dict[int, dict[str, Any]] = {}
    for h in trained:
        schedule = h.extractor.get("noise_schedule", {"shift": 3.0})
        for key in h.keys:
            t = FeatureKey(key).timestep
            if t not in snapped:
                sigma = _shift_sigma(t, schedule)
                step = int(np.argmin([abs(g - sigma) for g in grid]))
                snapped[t] = {"step": step, "sigma_probe": sigma, "sigma_used": grid[step]}
    return snapped


def _manifest(out: Path, name: str | None, trained: list[TrainedProbe], prompts: list[str], snapped: dict,
              sampler: dict[str, Any], weights, ident) -> dict[str, Any]:
    manifest = {
        "name": name or out.name, "loader": "generated", "version": 1,
        "description": "images sampled by the backbone, labelled by trained probe heads from trajectory features",
        "classes": next((h.task.classes for h in trained if h.task_name == "seg"), None),
        "ignore_index": 255, "palette": [list(c) for c in PALETTE],
        "depth_range": next((list(h.record["config"]["task_config"]["depth_range"]) for h in trained
                             if h.task_name == "depth"), None),
        "tasks": sorted(h.task_name for h in trained), "size": len(prompts), "prompts": prompts,
        "sampler": {**sampler, "scheduler": "FlowMatchEulerDiscreteScheduler"},
        "snapped_timesteps": {str(t): v for t, v in sorted(snapped.items())},
        "heads": [{"task": h.task_name, "run": str(h.run_dir.resolve()), "probe": h.record["probe"]["name"],
                   "conditioning": h.conditioning} for h in trained],
        "backbone": {"weights": str(weights), "identity": ident}, "provenance": base_provenance(),
    }
    if manifest["depth_range"]:
        manifest["depth_scale"] = manifest["depth_range"][1] / 65535.0
    return manifest


def _prepare_folder(out: Path, manifest: dict[str, Any]) -> None:
    """The output folders and manifest; a folder generated with other settings is refused."""
    for sub in ("images", "seg", "depth", "saliency"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    old = out / "manifest.yaml"
    if old.is_file():
        prev = yaml.safe_load(old.read_text())
        for field in ("sampler", "heads", "size", "prompts"):
            if prev.get(field) != manifest[field]:
                raise ProbekitError(f"{out} was generated with other settings ({field} differs); use a new folder")
    atomic.write_text(old, yaml.safe_dump(manifest, sort_keys=False))


class _Trajectory:
    """The sampler's block outputs at the steps the heads read, kept while a batch is sampled (the same capture
    sites and token layout as extraction, through the model's DiT family)."""

    def __init__(self, sampler, trained: list[TrainedProbe], snapped: dict[int, dict[str, Any]]):
        from probekit.extractors.families.sd3 import SD3Family
        from probekit.models.hooks import SiteCapture

        self.sampler, self.snapped = sampler, snapped
        self.family = SD3Family(dict(sampler.transformer.config))
        self.family.transformer = sampler.transformer
        requests = sorted({(int(FeatureKey(k).layer), FeatureKey(k).site) for h in trained for k in h.keys})
        self.needed = {v["step"] for v in snapped.values()}
        self.step, self.captured = -1, {}
        self.capture = SiteCapture(self.family, requests, self._keep, stop_after_last=False)

    def _keep(self, layer: int, site: str, tokens) -> None:
        if self.step in self.needed:
            self.captured[(self.step, layer, site)] = tokens.detach()

    def __enter__(self) -> "_Trajectory":
        self.capture.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.capture.__exit__(*exc)

    def sample(self, prompts: list[str], ids: list[int], steps: int, guidance: float, seed: int) -> np.ndarray:
        self.captured = {}
        return self.sampler.sample(prompts, steps=steps, guidance=guidance, seed=seed, noise_ids=ids,
                                   callback=lambda i, sigma, x: setattr(self, "step", i))

    def maps(self, head: TrainedProbe, b: int) -> dict[str, Any]:
        """{key: (B, C, h, w)} of one head, from the guidance half whose conditioning it was trained on."""
        from probekit.models.hooks import token_maps

        half = slice(0, b) if head.conditioning == "empty" else slice(b, 2 * b)  # [uncond, cond] batches
        grid = (self.sampler.size // self.family.patch,) * 2
        out = {}
        for key in head.keys:
            k = FeatureKey(key)
            tokens = self.captured[(self.snapped[k.timestep]["step"], int(k.layer), k.site)][half]
            out[key] = token_maps(tokens.float(), grid)
        return out


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic.atomic_path(path.with_name(path.stem + ".png")) as tmp:
        image.save(tmp, format="PNG")


def _write_sample(out: Path, i: int, image: np.ndarray, labels: dict[str, np.ndarray], manifest) -> None:
    name = f"{i:06d}.png"
    if "seg" in labels:
        seg = Image.fromarray(labels["seg"].astype(np.uint8), mode="P")
        seg.putpalette([c for rgb in manifest["palette"] for c in rgb])
        _save_png(seg, out / "seg" / name)
    if "depth" in labels:
        scaled = np.clip(np.rint(labels["depth"] / manifest["depth_scale"]), 0, 65535).astype(np.uint16)
        _save_png(Image.fromarray(scaled), out / "depth" / name)
    if "saliency" in labels:
        _save_png(Image.fromarray(((labels["saliency"] > 0.5) * 255).astype(np.uint8)), out / "saliency" / name)
    _save_png(Image.fromarray(image), out / "images" / name)  # last: marks the sample as written
