"""Training the ShapeWorld MM-DiT: the loss falls, and an interrupted run resumes to the same weights."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_mmdit_overrides
from probekit.backbone import train as tb

# A much smaller transformer than the shipped one, so a few dozen steps take seconds.
TINY = tiny_mmdit_overrides(num_layers=1)


def _rows(run):
    with open(run / "train_log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_a_few_steps_lower_the_held_out_loss(tmp_path):
    from probekit.datasets import load_manifest
    from probekit.backbone.model import build_models, save_folder

    manifest, _ = load_manifest("shapeworld")
    init = save_folder(tmp_path / "init", *build_models(manifest, seed=0, overrides=TINY))
    trained = tb.train_backbone(tmp_path / "run", steps=40, batch_size=8, lr=2e-3, warmup=1, ema_decay=0.0,
                                shift=2.0, config_overrides=TINY, checkpoint_every=20, progress=False,
                                scene={"objects_per_image": ["1", "2"]}, log=lambda s: None)
    # sampling and extraction must use the noise schedule the model was trained with
    assert json.loads((trained / "scheduler" / "scheduler_config.json").read_text())["shift"] == 2.0
    kwargs = dict(timesteps=(250, 750), n=16, batch_size=16)
    before = tb.denoising_loss_per_timestep(init, **kwargs)
    after = tb.denoising_loss_per_timestep(trained, **kwargs)
    assert sum(after.values()) < 0.8 * sum(before.values()), (before, after)
    rows = _rows(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    info = (trained / "training_info.json").read_text()
    assert '"steps": 40' in info and '"seed": 0' in info
    assert json.loads(info)["recipe"]["scene"] == {"objects_per_image": [1, 2]}  # checked numbers, not strings
    assert {p.name for p in trained.iterdir()} >= {"transformer", "text_encoder", "tokenizer", "scheduler"}
    assert not list(trained.rglob("*.bin")) and list(trained.rglob("*.safetensors"))


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    args = dict(steps=6, batch_size=4, lr=1e-3, warmup=1, config_overrides=TINY, checkpoint_every=3,
                progress=False, log=lambda s: None)
    straight = tb.train_backbone(tmp_path / "straight", **args)
    # the interrupted run renders its images in loader processes: same images, same order, so same weights
    args["workers"] = 2

    real_save = tb._save_checkpoint

    def killed_after_first_checkpoint(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt  # as if the job were killed right after step 3's checkpoint

    monkeypatch.setattr(tb, "_save_checkpoint", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        tb.train_backbone(tmp_path / "resumed", **args)
    monkeypatch.setattr(tb, "_save_checkpoint", real_save)
    assert torch.load(tmp_path / "resumed" / tb.CHECKPOINT, weights_only=True)["step"] == 3
    resumed = tb.train_backbone(tmp_path / "resumed", **args)

    a = load_file(straight / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "transformer" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert [int(r["step"]) for r in _rows(tmp_path / "resumed")] == list(range(1, 7))
    # Losses are read back from the device in blocks; a checkpoint writes the block first, so the log of the
    # killed-and-resumed run holds every step's loss, as the straight run's does.
    assert [float(r["loss"]) for r in _rows(tmp_path / "resumed")] == \
        pytest.approx([float(r["loss"]) for r in _rows(tmp_path / "straight")], abs=1e-4)

    with pytest.raises(ValueError, match="other settings"):
        tb.train_backbone(tmp_path / "resumed", **{**args, "lr": 5e-4})


def test_learning_rate_warms_up_then_decays():
    f = [tb.lr_factor(i, warmup=10, steps=100) for i in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.1, abs=1e-3)


def test_clean_image_prediction_trains_and_samples_through_the_derived_velocity(tmp_path):
    """prediction="sample": the network outputs x0, the loss and the sampler use the velocity derived from it."""
    from probekit.datasets import load_manifest
    from probekit.backbone.sampling import FlowSampler
    from probekit.backbone.model import build_models, prediction_type, save_folder

    manifest, _ = load_manifest("shapeworld")
    init = save_folder(tmp_path / "init", *build_models(manifest, seed=0, overrides=TINY), prediction="sample")
    trained = tb.train_backbone(tmp_path / "run", steps=40, batch_size=8, lr=2e-3, warmup=1, ema_decay=0.0,
                                prediction="sample", precision="bf16", config_overrides=TINY,
                                checkpoint_every=20, progress=False, log=lambda s: None)
    assert prediction_type(trained) == "sample" and prediction_type(init) == "sample"
    assert json.loads((trained / "training_info.json").read_text())["recipe"]["precision"] == "bf16"
    kwargs = dict(timesteps=(250, 750), n=16, batch_size=16)
    before = tb.denoising_loss_per_timestep(init, **kwargs)
    after = tb.denoising_loss_per_timestep(trained, **kwargs)
    assert sum(after.values()) < 0.8 * sum(before.values()), (before, after)

    sampler = FlowSampler(trained)
    assert sampler.prediction == "sample"
    images = sampler.sample(["a red circle"], steps=3)
    assert images.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="prediction"):
        tb.train_backbone(tmp_path / "bad", steps=1, prediction="epsilon", config_overrides=TINY)


def test_sample_prediction_loss_is_the_velocity_error():
    """Predicting x0 exactly costs nothing; an x0 error e costs |e|^2 / sigma^2, the velocity error it implies."""
    class Echo(torch.nn.Module):  # returns a fixed "prediction", whatever the input
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, hidden_states, timestep, return_dict, **cond):
            return (self.out,)

    x0 = torch.randn(2, 3, 8, 8)
    eps = torch.randn(2, 3, 8, 8)
    sigma = torch.tensor([0.5, 0.02])
    no_text = lambda prompts: {}  # noqa: E731
    exact = tb.flow_loss(Echo(x0), no_text, x0, ["", ""], sigma, eps, prediction="sample")
    torch.testing.assert_close(exact, torch.zeros(2))
    off = tb.flow_loss(Echo(x0 + 0.1), no_text, x0, ["", ""], sigma, eps, prediction="sample", min_sigma=0.05)
    torch.testing.assert_close(off, torch.tensor([0.01 / 0.25, 0.01 / 0.0025]))
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    implied_v = (x_t - (x0 + 0.1)) / s
    torch.testing.assert_close(tb.flow_loss(Echo(x0 + 0.1), no_text, x0, ["", ""], sigma, eps, prediction="sample"),
                               ((implied_v - (eps - x0)) ** 2).mean(dim=(1, 2, 3)))


def test_the_image_cache_serves_the_rendered_images_resumes_a_killed_build_and_trains_the_same(tmp_path,
                                                                                                monkeypatch):
    from probekit.backbone import cache as cache_mod
    from probekit.datasets.shapeworld import ShapeWorld

    ds = ShapeWorld("pretrain", size=40)
    monkeypatch.setattr(cache_mod, "CHUNK", 16)
    cache = cache_mod.ImageCache(ds, root=tmp_path / "cache")
    real_write = cache_mod.atomic.write_text
    calls = {"n": 0}

    def killed_during_the_second_chunk(path, text, **kw):
        real_write(path, text, **kw)
        if path.name == "progress.json":
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt  # as if the build were killed after its first chunk

    monkeypatch.setattr(cache_mod.atomic, "write_text", killed_during_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        cache.build(progress=False)
    assert cache.done == 16 and not cache.complete
    lines = []
    cache.build(progress=False, log=lines.append)
    assert cache.complete and "resuming the image cache at 16 of 40" in lines[0]
    for i in (0, 15, 16, 39):
        image, caption = cache.item(i)
        assert (image == ds[i].image).all() and caption == ds[i].caption
    other = cache_mod.ImageCache(ShapeWorld("pretrain", size=40, scene={"objects_per_image": [1, 1]}),
                                 root=tmp_path / "cache")
    assert other.dir != cache.dir  # another scene never reads this cache

    # Training from the cache is training from rendered images: the same weights.
    monkeypatch.setattr(cache_mod, "cache_dir", lambda: tmp_path / "cache2")
    args = dict(steps=3, batch_size=4, lr=1e-3, warmup=1, config_overrides=TINY, checkpoint_every=3,
                progress=False, log=lambda s: None)
    rendered = tb.train_backbone(tmp_path / "rendered", **args)
    cached = tb.train_backbone(tmp_path / "cached", cache=True, **args)
    a = load_file(rendered / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(cached / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_image_cache_built_by_worker_processes_holds_the_same_rows(tmp_path, monkeypatch):
    from probekit.backbone import cache as cache_mod
    from probekit.datasets.shapeworld import ShapeWorld

    monkeypatch.setattr(cache_mod, "CHUNK", 8)
    ds = ShapeWorld("pretrain", size=30)
    serial = cache_mod.ImageCache(ds, root=tmp_path / "serial").build(rows=20, progress=False)
    parallel = cache_mod.ImageCache(ds, root=tmp_path / "parallel").build(rows=20, progress=False, workers=2)
    assert serial.done == parallel.done == 20
    for i in range(20):
        (a, ca), (b, cb) = serial.item(i), parallel.item(i)
        assert (a == b).all() and ca == cb
    parallel.build(progress=False, workers=2)  # extends the same cache to the whole split
    assert parallel.complete and (parallel.item(29)[0] == ds[29].image).all()


def test_architecture_options_change_width_depth_and_token_grid_and_round_trip_through_the_config():
    from diffusers import SD3Transformer2DModel

    from probekit.backbone.model import TRANSFORMER_CONFIG, architecture, config_overrides

    assert architecture() == {}
    over = architecture(width=64, depth=2, patch_size=8)
    model = SD3Transformer2DModel(**{**TRANSFORMER_CONFIG, **over})
    assert model.inner_dim == 64 and len(model.transformer_blocks) == 2
    out = model(hidden_states=torch.zeros(1, 3, 64, 64), encoder_hidden_states=torch.zeros(1, 4, 64),
                pooled_projections=torch.zeros(1, 64), timestep=torch.tensor([500.0])).sample
    assert out.shape == (1, 3, 64, 64)
    assert config_overrides(dict(model.config)) == over  # what the random control rebuilds from a shipped config
    for bad in (dict(width=100), dict(depth=0), dict(patch_size=3)):
        with pytest.raises(ValueError):
            architecture(**bad)


def test_a_model_folder_stored_in_float16_loads_as_float32_with_the_weights_rounded_once(tmp_path):
    """A wider backbone may ship in float16 (half the bytes); every loader gives float32 weights to compute in."""
    from safetensors.torch import save_file

    from helpers import make_tiny_shapeworld_mmdit
    from probekit.backbone.model import load_denoiser

    folder = make_tiny_shapeworld_mmdit(tmp_path / "m", num_layers=1)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    full = load_file(weights)
    save_file({k: v.half() for k, v in full.items()}, weights)
    transformer, conditioner, _ = load_denoiser(folder)
    loaded = dict(transformer.state_dict())
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], full[k].half().float()) for k in full)
    out = transformer(hidden_states=torch.randn(1, 3, 64, 64), timestep=torch.tensor([500.0]), return_dict=False,
                      **conditioner(["a red circle"]))[0]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
