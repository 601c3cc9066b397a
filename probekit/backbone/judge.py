"""Do samples follow their prompts? A judge of colour and shape for single-object ShapeWorld prompts.

For a prompt "a <colour> <shape>" the judge takes the pixels nearest to the prompted palette colour (among
the palette, the sky and the ground colours), keeps the largest connected region, and fits every ShapeWorld
silhouette to that region (placed by its bounding box, refined over small shifts and scales). The shape whose template overlaps the region best (IoU) is the
judged shape. Nothing is learnt, so the judge cannot share a model's mistakes; its own accuracy is measured
on real ShapeWorld images of single solid objects (``judge_real_images``), which bounds what it can report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from probekit.datasets.shapeworld import GROUND_RGB, HAZE_RGB, SKY_TOP_RGB, ShapeWorld, shape_mask, with_article

MIN_PIXELS = 12  # below this a region is speckle, not an object
# White is not judged: shaded and hazed white is too close to the sky haze to separate by colour alone.
JUDGED_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan")
_PROMPT = re.compile(r"^an? (\w+) (\w+)$")


@dataclass(frozen=True)
class Judgement:
    prompt: str
    colour: str
    shape: str
    found: bool  # a region of the prompted colour exists
    judged_shape: str | None
    iou: dict[str, float]  # template IoU per shape

    @property
    def correct(self) -> bool:
        return self.judged_shape == self.shape


def parse_prompt(prompt: str, colours: Sequence[str], shapes: Sequence[str]) -> tuple[str, str]:
    """(colour, shape) of a single solid-object prompt such as "a red circle"."""
    match = _PROMPT.match(prompt.strip())
    if not match or match.group(1) not in colours or match.group(2) not in shapes:
        raise ValueError(f"not a single solid-object ShapeWorld prompt: {prompt!r} "
                         "(expected 'a <colour> <shape>')")
    if match.group(1) not in JUDGED_COLOURS:
        raise ValueError(f"{prompt!r}: {match.group(1)} objects are not judged (too close to the sky haze); "
                         f"colours judged: {', '.join(JUDGED_COLOURS)}")
    return match.group(1), match.group(2)


def colour_mask(image: np.ndarray, colour: str, palette: dict[str, np.ndarray]) -> np.ndarray:
    """Pixels whose nearest reference colour is ``colour``; shaded and hazed variants of every palette colour
    are references too, so a dark red still counts as red and a hazy white as white, not as sky."""
    refs, names = [], []
    for name, rgb in palette.items():
        for shade in (1.0, 0.82):
            for fog in (0.0, 0.3):
                refs.append(rgb * shade * (1 - fog) + HAZE_RGB * fog)
                names.append(name)
    for rgb in (*GROUND_RGB, SKY_TOP_RGB, HAZE_RGB, (SKY_TOP_RGB + HAZE_RGB) / 2):
        refs.append(np.asarray(rgb, dtype=np.float64))
        names.append("")
    refs_arr = np.stack(refs)
    dist = ((image.astype(np.float64)[..., None, :] - refs_arr) ** 2).sum(-1)
    nearest = np.asarray(names)[dist.argmin(-1)]
    return nearest == colour


def largest_region(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def shape_names() -> list[str]:
    return [c for c in ShapeWorld("test").classes if c != "background"]


@lru_cache(maxsize=None)  # a fine render per shape, needed by every fit
def _template_box(shape: str, samples: int = 401) -> tuple[float, float, float, float]:
    """(u_min, u_max, v_min, v_max) of a silhouette in object coordinates."""
    grid = np.linspace(-1.0, 1.0, samples)
    inside = shape_mask(shape, grid[None, :], grid[:, None])
    us, vs = grid[inside.any(0)], grid[inside.any(1)]
    return float(us.min()), float(us.max()), float(vs.min()), float(vs.max())


def template_iou(region: np.ndarray, shape: str) -> float:
    """Best IoU of ``region`` with ``shape``'s silhouette, drawn as ShapeWorld draws it (a square box, one scale).

    The box starts where the region's bounding box puts it and is refined over small shifts and scales, so
    an object cut by the image border, whose bounding box is cut too, is still fitted.
    """
    rows, cols = np.nonzero(region)
    if rows.size == 0:
        return 0.0
    u0, u1, v0, v1 = _template_box(shape)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1.0, cols.min(), cols.max() + 1.0
    half = max((c1 - c0) / (u1 - u0), (r1 - r0) / (v1 - v0))  # the larger extent: the other may be cut
    # box centre such that the template's own extent maps onto the region's bounding box
    cx, cy = (c0 + c1) / 2 - (u0 + u1) / 2 * half, (r0 + r1) / 2 - (v0 + v1) / 2 * half
    yy, xx = np.mgrid[0:region.shape[0], 0:region.shape[1]] + 0.5
    best = 0.0
    for scale in (0.85, 0.92, 1.0, 1.08, 1.16):
        for dy in (-2, -1, 0, 1, 2):
            for dx in (-2, -1, 0, 1, 2):
                h = half * scale
                template = shape_mask(shape, (xx - cx - dx) / h, (yy - cy - dy) / h)
                union = (template | region).sum()
                best = max(best, float((template & region).sum() / union) if union else 0.0)
    return best


def judge(image: np.ndarray, prompt: str, dataset: ShapeWorld | None = None) -> Judgement:
    dataset = dataset or ShapeWorld("test")
    shapes = [c for c in dataset.classes if c != "background"]
    colour, shape = parse_prompt(prompt, list(dataset.colours), shapes)
    region = largest_region(colour_mask(image, colour, dataset.colours))
    if region.sum() < MIN_PIXELS:
        return Judgement(prompt, colour, shape, False, None, {})
    ious = {s: template_iou(region, s) for s in shapes}
    return Judgement(prompt, colour, shape, True, max(ious, key=ious.get), ious)


def summarise(judgements: Sequence[Judgement]) -> dict:
    """Colour found / shape correct rates, overall and per prompted shape, plus the confusion counts."""
    n = len(judgements)
    per_shape: dict[str, dict] = {}
    for j in judgements:
        row = per_shape.setdefault(j.shape, {"n": 0, "found": 0, "correct": 0, "judged": {}})
        row["n"] += 1
        row["found"] += int(j.found)
        row["correct"] += int(j.correct)
        key = j.judged_shape or "(none)"
        row["judged"][key] = row["judged"].get(key, 0) + 1
    return {"n": n, "colour_found": sum(j.found for j in judgements) / max(n, 1),
            "shape_accuracy": sum(j.correct for j in judgements) / max(n, 1),
            "chance": 1.0 / len(shape_names()),
            "per_shape": per_shape}


def judge_real_images(n: int = 200, split: str = "pretrain") -> dict:
    """The judge's accuracy on real ShapeWorld images whose caption is one solid object of a judged colour."""
    dataset = ShapeWorld(split)
    judgements = []
    for i in range(len(dataset)):
        sample = dataset[i]
        if _PROMPT.match(sample.caption) and sample.caption.split()[1] in JUDGED_COLOURS:
            judgements.append(judge(sample.image, sample.caption, dataset))
            if len(judgements) == n:
                break
    return summarise(judgements)


def judged_prompts() -> list[str]:
    """Every single solid-object prompt the judge can score: each judged colour with each shape."""
    return [with_article(f"{c} {s}") for c in JUDGED_COLOURS for s in shape_names()]


def prompt_fidelity(folder, *, per_prompt: int = 2, steps: int = 30, guidance: float = 4.0, seed: int = 0,
                    device: str = "cpu") -> dict:
    """Sample every judged prompt ``per_prompt`` times from the model in ``folder`` and summarise the judge."""
    from probekit.backbone.sampling import FlowSampler

    dataset = ShapeWorld("test")
    prompts = judged_prompts() * per_prompt
    images = FlowSampler(folder, device=device).sample(prompts, steps=steps, guidance=guidance, seed=seed)
    summary = summarise([judge(image, prompt, dataset) for image, prompt in zip(images, prompts)])
    summary["settings"] = {"per_prompt": per_prompt, "steps": steps, "guidance": guidance, "seed": seed}
    return summary
