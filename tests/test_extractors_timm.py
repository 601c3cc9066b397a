"""timm ViT encoders, offline: tiny random models saved as safetensors and loaded back."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from probekit.api import build_extractor
from probekit.datasets.shapeworld import ShapeWorld
from probekit.errors import ProbekitError
from probekit.extractors.runner import extract_dataset
from probekit.store import FeatureReader

TINY = {"depth": 3, "embed_dim": 32, "num_heads": 2}
FAMILIES = [  # (timm model, prefix tokens it must report)
    ("vit_small_patch16_dinov3", 5),  # CLS + 4 storage tokens
    ("vit_small_patch14_dinov2", 1),
    ("vit_small_patch14_reg4_dinov2", 5),
    ("vit_tiny_patch16_224", 1),
]


def _saved(tmp_path, model_name):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=0, dynamic_img_size=True, **TINY).eval()
    path = tmp_path / f"{model_name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


@pytest.mark.parametrize("model_name,prefix", FAMILIES)
def test_patch_tokens_equal_block_outputs_without_prefix_tokens(tmp_path, model_name, prefix):
    model, path = _saved(tmp_path, model_name)
    ex = build_extractor(f"timm:{model_name}", weights=str(path), layers=[0, 2], model_kwargs=TINY, device="cpu")
    assert ex.num_prefix_tokens == prefix and ex.notes() == []
    patch = ex.config()["patch_size"]
    images = torch.rand(2, 3, 4 * patch, 3 * patch)
    out = ex.extract(images, ["", ""], [0, 1])
    # Reference: plain hooks on the blocks of the original model, normalised input, prefix tokens dropped.
    captured = {}
    for i in (0, 2):
        model.blocks[i].register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o))
    mean, std = torch.tensor(ex.config()["mean"]).view(1, 3, 1, 1), torch.tensor(ex.config()["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        model((images - mean) / std)
    for i in (0, 2):
        tokens = captured[i][:, prefix:]
        assert tokens.shape[1] == 12
        ref = tokens.reshape(2, 4, 3, -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(out[f"layer={i}"], ref, rtol=1e-4, atol=1e-4)


def test_named_dinov3_entry_loads_a_local_file_and_extracts_shapeworld(tmp_path):
    _, path = _saved(tmp_path, "vit_small_patch16_dinov3")
    ex = build_extractor("dinov3-vits16", weights=str(path), layers=[1], resolution=96, model_kwargs=TINY)
    assert ex.name == "dinov3-vits16"
    f = extract_dataset(ex, ShapeWorld("val", size=2), tmp_path / "d.h5", progress=False)
    with FeatureReader(f) as r:
        assert r.keys == ["layer=1"] and r.shape("layer=1") == (32, 6, 6)
        assert r.provenance["weights"]["files"][path.name]
        assert r.provenance["extractor"]["num_prefix_tokens"] == 5
        assert np.isfinite(r.provenance["extractor"]["mean"]).all()


def test_bad_timm_inputs(tmp_path):
    with pytest.raises(ProbekitError, match="pickled weight files are not loaded"):
        build_extractor("timm:vit_tiny_patch16_224", weights=str(tmp_path / "w.pth"))
    with pytest.raises(ProbekitError, match="layer 9 is out of range"):
        build_extractor("timm:vit_tiny_patch16_224", layers=[9], model_kwargs=TINY)
    with pytest.raises(ProbekitError, match="Offline, pass a local .safetensors"):
        build_extractor("dinov3-vits16")  # the hub tag is not in the (empty) cache
    ex = build_extractor("timm:vit_tiny_patch16_224", model_kwargs=TINY)
    assert "RANDOMLY INITIALISED" in ex.notes()[0]
    with pytest.raises(ProbekitError, match="not divisible by the patch size 16"):
        ex.extract(torch.rand(1, 3, 40, 40), [""], [0])
