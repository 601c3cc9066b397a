import numpy as np
import torch

from probekit.datasets.shapeworld import ShapeWorld
from probekit.extractors.runner import extract_dataset
from probekit.registries import EXTRACTORS
from probekit.store import FeatureReader


def test_pixels_are_patches_plus_position(tmp_path):
    ex = EXTRACTORS.build("pixels", timesteps=[1, 2], seed=3)  # network options are accepted, recorded ignored
    assert ex.config()["ignored_options"] == ["seed", "timesteps"]
    images = torch.rand(2, 3, 8, 8)
    out = ex.extract(images, ["", ""], [0, 1])["layer=0"]
    assert out.shape == (2, 3 * 16 + 16, 2, 2)
    # Channel order of a patch follows torch's unfold: (channel, row, column) within the patch.
    np.testing.assert_allclose(out[1, :16, 0, 1].numpy(), (images[1, 0, 0:4, 4:8] * 2 - 1).flatten().numpy(), rtol=1e-6)
    # Positional channels are the same for every image and differ between locations.
    torch.testing.assert_close(out[0, 48:], out[1, 48:])
    assert not torch.allclose(out[0, 48:, 0, 0], out[0, 48:, 1, 1])
    path = extract_dataset(ex, ShapeWorld("val", size=3), tmp_path / "p.h5", progress=False)
    with FeatureReader(path) as r:
        assert r.keys == ["layer=0"] and r.shape("layer=0") == (64, 16, 16)
