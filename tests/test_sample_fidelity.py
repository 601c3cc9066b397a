"""The colour-and-shape judge of samples: accurate on real ShapeWorld images, and it can say no."""

import numpy as np
import pytest

from probekit.datasets.shapeworld import GROUND_RGB, SKY_TOP_RGB, ShapeWorld, shape_mask
from probekit.backbone import judge as sf


def _scene_with(shape: str, colour: str, half: float = 12.0) -> np.ndarray:
    dataset = ShapeWorld("test")
    n = dataset.image_size
    image = np.empty((n, n, 3))
    image[: n // 2], image[n // 2:] = SKY_TOP_RGB, GROUND_RGB[0]
    grid = np.arange(n) + 0.5
    u, v = (grid[None, :] - 32) / half, (grid[:, None] - 34) / half
    image[shape_mask(shape, u, v)] = dataset.colours[colour]
    return image.round().astype(np.uint8)


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "star", "ring", "cross"])
def test_each_drawn_silhouette_is_judged_as_itself(shape):
    j = sf.judge(_scene_with(shape, "red"), f"a red {shape}")
    assert j.found and j.judged_shape == shape and j.correct, j.iou
    runner_up = max(iou for s, iou in j.iou.items() if s != shape)
    assert j.iou[shape] > 0.8 and j.iou[shape] - runner_up > 0.15, j.iou  # thin star spikes cost some IoU


def test_the_wrong_colour_or_shape_is_not_credited():
    image = _scene_with("square", "blue")
    assert not sf.judge(image, "a red square").found  # no red at all
    wrong = sf.judge(image, "a blue circle")
    assert wrong.found and wrong.judged_shape == "square" and not wrong.correct
    summary = sf.summarise([wrong, sf.judge(image, "a blue square")])
    assert summary["shape_accuracy"] == 0.5 and summary["per_shape"]["circle"]["judged"] == {"square": 1}


def test_the_judge_is_accurate_on_real_single_object_images():
    result = sf.judge_real_images(n=40)
    assert result["n"] == 40
    assert result["colour_found"] == 1.0 and result["shape_accuracy"] >= 0.9, result


def test_only_single_solid_object_prompts_are_judged():
    with pytest.raises(ValueError, match="single solid-object"):
        sf.judge(_scene_with("circle", "red"), "a red striped circle")
    with pytest.raises(ValueError, match="single solid-object"):
        sf.judge(_scene_with("circle", "red"), "a red circle in front of a blue square")
    with pytest.raises(ValueError, match="haze"):
        sf.judge(_scene_with("circle", "white"), "a white circle")
    prompts = sf.judged_prompts()
    assert len(prompts) == len(sf.JUDGED_COLOURS) * 6 and "an orange star" in prompts
