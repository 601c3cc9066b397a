"""The shipped ShapeWorld MM-DiT: loads offline, gives features, samples, and is actually trained."""

import json

import numpy as np
from click.testing import CliRunner

from probekit.cli import cli
from probekit.datasets.shapeworld import ShapeWorld
from probekit.extractors.runner import extract_dataset
from probekit.backbone.model import random_folder, shipped_weights
from probekit.registries import EXTRACTORS
from probekit.store import FeatureReader


def test_shipped_folder_is_safetensors_only_and_small():
    folder = shipped_weights()
    assert (folder / "transformer" / "config.json").is_file(), f"shipped weights missing at {folder}"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 1024**2
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    for part in ("transformer", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir()


def test_shipped_weights_give_features_of_the_expected_shape(tmp_path):
    ex = EXTRACTORS.build("shapeworld-mmdit", timesteps=[100, 500], layers=[0, 5], device="cpu",
                          conditioning="caption")
    cfg = ex.config()
    assert cfg["transformer_class"] == "SD3Transformer2DModel" and cfg["text_encoder"] == "encoder"
    assert ex.notes() == []
    path = extract_dataset(ex, ShapeWorld("val", size=3), tmp_path / "f.h5", progress=False)
    with FeatureReader(path) as r:
        assert r.keys == ["t=100/layer=0", "t=100/layer=5", "t=500/layer=0", "t=500/layer=5"]
        assert r.shape("t=500/layer=5") == (128, 16, 16)
        assert r.provenance["weights"]["files"]


def test_random_control_shares_the_shipped_noise_schedule():
    shipped = json.loads((shipped_weights() / "scheduler" / "scheduler_config.json").read_text())
    control = json.loads((random_folder() / "scheduler" / "scheduler_config.json").read_text())
    assert control == shipped


def test_trained_weights_denoise_better_than_the_random_control():
    from probekit.backbone.train import denoising_loss_per_timestep

    kwargs = dict(timesteps=(300, 700), n=16, batch_size=16)
    trained = denoising_loss_per_timestep(shipped_weights(), **kwargs)
    control = denoising_loss_per_timestep(random_folder(), **kwargs)
    for t in trained:
        assert trained[t] < 0.5 * control[t], (trained, control)


def test_sampling_is_seeded_and_writes_a_grid(tmp_path):
    from probekit.backbone.sampling import FlowSampler

    sampler = FlowSampler(shipped_weights())
    a = sampler.sample(["a red circle", "a blue square"], steps=4, seed=1)
    b = sampler.sample(["a red circle", "a blue square"], steps=4, seed=1)
    c = sampler.sample(["a red circle", "a blue square"], steps=4, seed=2)
    assert a.shape == (2, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    res = CliRunner().invoke(cli, ["sample", "--prompt", "a red circle in front of a blue square", "--n", "4",
                                   "--steps", "3", "--out", str(tmp_path / "grid.png")])
    assert res.exit_code == 0, res.output
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (2 * 2 * 66, 2 * 2 * 66)


def test_training_info_records_the_recipe():
    info = json.loads((shipped_weights() / "training_info.json").read_text())
    assert info["recipe"]["seed"] == 0 and info["steps"] == info["recipe"]["steps"]
    assert info["wall_time_s"] <= 3600
