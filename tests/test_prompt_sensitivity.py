"""Prompt sensitivity: captions are edited exactly as documented, and a trained model is measured to use text."""

import numpy as np
import pytest

from probekit.datasets.shapeworld import ShapeWorld
from probekit.backbone.prompt_sensitivity import prompt_sensitivity, single_object_samples, swap_shape
from probekit.backbone.model import shipped_weights

SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]


def test_swap_shape_changes_only_the_shape_word():
    rng = np.random.default_rng(0)
    swapped = {swap_shape("a red striped circle", "circle", SHAPES, rng) for _ in range(200)}
    assert swapped == {f"a red striped {s}" for s in SHAPES if s != "circle"}
    with pytest.raises(ValueError, match="does not end with its shape"):
        swap_shape("a red circle in front of a blue star", "circle", SHAPES, rng)


def test_single_object_samples_are_single_and_large():
    samples = single_object_samples(ShapeWorld("test"), 10, min_size_px=14)
    assert len(samples) == 10
    for s in samples:
        (obj,) = s.meta["objects"]
        assert obj["size_px"] >= 14 and s.caption.endswith(obj["shape"])
    with pytest.raises(ValueError, match="ask for fewer"):
        single_object_samples(ShapeWorld("test", size=5), 10)


def test_the_shipped_model_relies_on_its_caption():
    result = prompt_sensitivity(shipped_weights(), noise_levels=(0.7,), n=16)
    level = result["noise_levels"]["0.7"]
    assert result["n"] == 16
    assert level["text_gain"] == pytest.approx(level["empty"] / level["true"] - 1)
    # the caption (mostly its colours) lowers the loss by several percent at this noise level
    assert level["text_gain"] > 0.03, level
