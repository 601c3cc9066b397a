"""The diffusers DiT extractor on tiny random SD3 / FLUX / PixArt / DiT models, offline."""

import numpy as np
import pytest
import torch

from helpers import make_tiny
from probekit.datasets.shapeworld import ShapeWorld
from probekit.errors import ProbekitError
from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
from probekit.models.noise import NoiseSchedule, sample_noise
from probekit.extractors.runner import extract_dataset
from probekit.store import FeatureReader

TIMESTEPS = [0, 300, 900]


def _images(ds, n):
    samples = [ds[i] for i in range(n)]
    return torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255.0


def _plain_block_outputs(blocks, forward):
    """Run `forward` with plain hooks on every block; image tokens of each block, no early stop."""
    outs = {}
    handles = [b.register_forward_hook(
        lambda m, a, k, o, i=i: outs.__setitem__(i, (o[-1] if isinstance(o, tuple) else o).detach().clone()),
        with_kwargs=True) for i, b in enumerate(blocks)]
    with torch.no_grad():
        forward()
    for h in handles:
        h.remove()
    return outs


def _to_maps(tokens, n_img, grid, b, t):
    """(B*T, N, C) tokens -> (B, T, C, h, w), row-major over the token grid."""
    tokens = tokens[:, -n_img:]
    return tokens.reshape(b, t, grid[0], grid[1], -1).permute(0, 1, 4, 2, 3).numpy()


def _assert_stored_equal(path, layers, plain, n_img, grid, b):
    with FeatureReader(path) as r:
        for layer in layers:
            ref = _to_maps(plain[layer], n_img, grid, b, len(TIMESTEPS))
            for j, t in enumerate(TIMESTEPS):
                stored = r.read(f"t={t}/layer={layer}", range(b))
                np.testing.assert_allclose(stored, ref[:, j], rtol=4e-3, atol=4e-3)


@pytest.fixture(scope="module")
def ds32():
    return ShapeWorld("train", image_size=32, size=3)


def test_sd3_features_equal_a_plain_forward_with_the_same_noise(tiny_models, ds32, tmp_path):
    ex = DiffusersDiTExtractor(tiny_models["sd3"], timesteps=TIMESTEPS, layers=[0, 2], seed=5, device="cpu")
    path = extract_dataset(ex, ds32, tmp_path / "f.h5", batch_size=2, progress=False)
    tr = ex.transformer
    # Independent re-derivation: flow matching with shift 3 and the documented per-sample noise.
    x0 = _images(ds32, 3) * 2 - 1
    rows = []
    for i in range(3):
        eps = sample_noise((3, 32, 32), 5, i, 0)
        for t in TIMESTEPS:
            u = t / 1000
            s = 3 * u / (1 + 2 * u)
            rows.append(((1 - s) * x0[i] + s * eps, s))
    x_t = torch.stack([r[0] for r in rows])
    sig = torch.tensor([r[1] for r in rows])
    plain = _plain_block_outputs(tr.transformer_blocks, lambda: tr(
        hidden_states=x_t, timestep=sig * 1000, encoder_hidden_states=torch.zeros(9, 1, 32),
        pooled_projections=torch.zeros(9, 16)))
    _assert_stored_equal(path, [0, 2], plain, 256, (16, 16), 3)
    with FeatureReader(path) as r:
        assert r.shape("t=300/layer=2") == (32, 16, 16)
        prov = r.provenance
        assert prov["extractor"]["timesteps"] == TIMESTEPS and prov["extractor"]["seed"] == 5
        assert prov["weights"]["files"] and all(len(h) == 64 for h in prov["weights"]["files"].values())
        assert prov["dataset"]["dataset"] == "shapeworld" and prov["packages"]["torch"]
        assert "commit" in prov["git"] and prov["probekit_version"]


def test_dit_features_equal_a_plain_forward_with_ddpm_noise(tiny_models, ds32, tmp_path):
    ex = DiffusersDiTExtractor(tiny_models["dit"], timesteps=TIMESTEPS, layers=[1], seed=1, device="cpu")
    assert ex.schedule.kind == "ddpm"
    path = extract_dataset(ex, ds32, tmp_path / "f.h5", batch_size=3, progress=False)
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    x0 = _images(ds32, 3) * 2 - 1
    x_t = torch.stack([sched.add_noise(x0[i], sample_noise((3, 32, 32), 1, i, 0), torch.tensor(min(t, 999)))
                       for i in range(3) for t in TIMESTEPS])
    ts = torch.tensor([min(t, 999) for _ in range(3) for t in TIMESTEPS])
    tr = ex.transformer
    plain = _plain_block_outputs(tr.transformer_blocks, lambda: tr(
        hidden_states=x_t, timestep=ts, class_labels=torch.full((9,), 1000)))
    _assert_stored_equal(path, [1], plain, 256, (16, 16), 3)


def test_flux_tokens_are_unpacked_onto_the_right_grid(tiny_models, ds32, tmp_path):
    ex = DiffusersDiTExtractor(tiny_models["flux"], timesteps=TIMESTEPS, layers=[1, 3], device="cpu")
    path = extract_dataset(ex, ds32, tmp_path / "f.h5", batch_size=3, progress=False)
    inputs = ex.model_inputs(_images(ds32, 3), [""] * 3, [0, 1, 2])
    x_t, sigma, cond = inputs.x_t, inputs.sigma, inputs.cond
    assert inputs.grid == (16, 16)
    b, c, h, w = x_t.shape
    # Pack 2x2 latent patches into tokens by explicit loops (independent of the extractor's view/permute).
    packed = torch.zeros(b, (h // 2) * (w // 2), c * 4)
    for r in range(h // 2):
        for q in range(w // 2):
            packed[:, r * (w // 2) + q] = x_t[:, :, 2 * r:2 * r + 2, 2 * q:2 * q + 2].reshape(b, -1)
    ids = torch.tensor([[0, r, q] for r in range(h // 2) for q in range(w // 2)], dtype=torch.float32)
    tr = ex.transformer
    blocks = list(tr.transformer_blocks) + list(tr.single_transformer_blocks)
    plain = _plain_block_outputs(blocks, lambda: tr(
        hidden_states=packed, timestep=sigma, img_ids=ids, txt_ids=torch.zeros(1, 3),
        encoder_hidden_states=cond["encoder_hidden_states"], pooled_projections=cond["pooled_projections"]))
    _assert_stored_equal(path, [1, 3], plain, 256, (16, 16), 3)
    # Dynamic shifting: sigma follows exp(mu) / (exp(mu) + 1/u - 1) with mu from the token count.
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (256 - 256)
    assert float(sigma[1]) == pytest.approx(np.exp(mu) / (np.exp(mu) + 1 / 0.3 - 1), rel=1e-5)


def test_pixart_extracts_with_its_ddpm_schedule(tiny_models, ds32, tmp_path):
    ex = DiffusersDiTExtractor(tiny_models["pixart"], timesteps=TIMESTEPS, layers=[0, 1], device="cpu")
    path = extract_dataset(ex, ds32, tmp_path / "f.h5", batch_size=2, progress=False)
    inputs = ex.model_inputs(_images(ds32, 3), [""] * 3, [0, 1, 2])
    x_t, t_int, cond, grid = inputs.x_t, inputs.t_int, inputs.cond, inputs.grid
    tr = ex.transformer
    plain = _plain_block_outputs(tr.transformer_blocks, lambda: tr(
        hidden_states=x_t, timestep=t_int, encoder_hidden_states=cond["encoder_hidden_states"],
        encoder_attention_mask=cond["encoder_attention_mask"],
        added_cond_kwargs={"resolution": None, "aspect_ratio": None}))
    _assert_stored_equal(path, [0, 1], plain, 256, grid, 3)
    assert t_int.tolist() == [0, 300, 900] * 3


def test_vae_latents_are_encoded_and_scaled(tiny_models, tmp_path):
    ds = ShapeWorld("train", size=2)  # 64 px -> 16x16 latents (tiny VAE downsamples 4x) -> 8x8 tokens
    ex = DiffusersDiTExtractor(tiny_models["sd3-vae"], timesteps=[0, 500], layers=[1], device="cpu")
    path = extract_dataset(ex, ds, tmp_path / "f.h5", progress=False)
    with FeatureReader(path) as r:
        assert r.shape("t=500/layer=1") == (32, 8, 8)
        assert r.provenance["extractor"]["latent_space"] == "vae"
    x0 = ex.encode_images(_images(ds, 2))
    ref = ex.vae.encode(_images(ds, 2) * 2 - 1).latent_dist.mode() * ex.vae.config.scaling_factor
    torch.testing.assert_close(x0, ref)
    # t = 0 is the clean latent itself.
    x_t, *_ = ex.noised_batch(x0, [0, 1], 0)
    torch.testing.assert_close(x_t[0::2], x0)


def test_features_do_not_depend_on_batch_size(tiny_models, ds32, tmp_path):
    ex = DiffusersDiTExtractor(tiny_models["sd3"], timesteps=[500], layers=[1], device="cpu")
    a = extract_dataset(ex, ds32, tmp_path / "a.h5", batch_size=1, progress=False)
    b = extract_dataset(ex, ds32, tmp_path / "b.h5", batch_size=3, progress=False)
    with FeatureReader(a) as ra, FeatureReader(b) as rb:
        np.testing.assert_allclose(ra.read("t=500/layer=1", [0, 1, 2]), rb.read("t=500/layer=1", [0, 1, 2]),
                                   atol=2e-3)


def test_noise_ensemble_is_the_mean_over_draws(tiny_models, ds32):
    images = _images(ds32, 2)
    ex = DiffusersDiTExtractor(tiny_models["sd3"], timesteps=[700], layers=[2], ensemble=2, device="cpu")
    mean = ex.extract(images, ["", ""], [0, 1])["t=700/layer=2"]
    single = DiffusersDiTExtractor(tiny_models["sd3"], timesteps=[700], layers=[2], device="cpu")
    block = single.transformer.transformer_blocks[2]
    draws = []
    for draw in range(2):
        inputs = single.model_inputs(images, ["", ""], [0, 1], draw)
        tokens = _plain_block_outputs([block], lambda: single.run_forward(inputs))[0][:, -256:]
        draws.append(tokens.reshape(2, 16, 16, -1).permute(0, 3, 1, 2))
    torch.testing.assert_close(mean, (draws[0] + draws[1]) / 2)
    assert not torch.allclose(draws[0], draws[1])


def test_bad_settings_get_clear_errors(tiny_models, tmp_path):
    with pytest.raises(ProbekitError, match="layer 7 is out of range.*3 blocks"):
        DiffusersDiTExtractor(tiny_models["sd3"], layers=[7], device="cpu")
    with pytest.raises(ProbekitError, match=r"timesteps are integers in \[0, 1000\]"):
        DiffusersDiTExtractor(tiny_models["sd3"], timesteps=[1200], device="cpu")
    with pytest.raises(ProbekitError, match="caption conditioning needs a text encoder"):
        DiffusersDiTExtractor(tiny_models["sd3"], conditioning="caption", device="cpu")
    with pytest.raises(ProbekitError, match="neither a local folder nor a hub id available offline"):
        DiffusersDiTExtractor(tmp_path / "missing", device="cpu")
    latent_only = make_tiny("sd3", tmp_path / "latent", vae=True)
    import shutil

    shutil.rmtree(latent_only / "vae")
    with pytest.raises(ProbekitError, match="expects 4 latent channels but there is no vae"):
        DiffusersDiTExtractor(latent_only, device="cpu")
    from diffusers import UNet2DModel

    UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2).save_pretrained(
        tmp_path / "unet" / "transformer")
    with pytest.raises(ProbekitError, match="UNet2DModel is not a supported DiT family"):
        DiffusersDiTExtractor(tmp_path / "unet", device="cpu")


def test_noise_schedule_from_scheduler_configs():
    flow = NoiseSchedule.from_scheduler_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, "ddpm")
    assert flow.kind == "flow" and flow.sigma(0) == 0 and flow.sigma(1000) == 1
    assert flow.sigma(500) == pytest.approx(0.75)  # 3*0.5 / (1 + 2*0.5)
    ddpm = NoiseSchedule.from_scheduler_config(None, "ddpm")
    assert ddpm.kind == "ddpm" and NoiseSchedule.ddpm_t(1000) == 999


def test_non_square_resolution_keeps_the_aspect_ratio_and_probes_read_it(tiny_models, ds32, tmp_path):
    """--resolution 32,48 on square images: maps on a 16x24 token grid (patch 2), planned and stored alike, and
    the probe stage trains on them (labels stay at the dataset's size)."""
    from probekit.probes.trainer import train_probe

    ex = DiffusersDiTExtractor(tiny_models["sd3"], timesteps=[200], layers=[1], resolution=(32, 48), device="cpu")
    assert ex.feature_shapes((32, 32)) == {"t=200/layer=1": (32, 16, 24)}
    train = extract_dataset(ex, ds32, tmp_path / "train.h5", progress=False)
    test = extract_dataset(ex, ShapeWorld("test", image_size=32, size=2), tmp_path / "test.h5", progress=False)
    with FeatureReader(train) as r:
        assert r.shape("t=200/layer=1") == (32, 16, 24)
        assert r.provenance["extractor"]["resolution"] == [32, 48]
    rec = train_probe(train, test, out=tmp_path / "run", task="seg", key="t=200/layer=1", epochs=1, lrs=[1e-2],
                      progress=False)
    assert 0.0 <= rec["main_score"] <= 1.0 and rec["config"]["keys"] == ["t=200/layer=1"]


def test_text_encoders_are_freed_before_the_transformer_loads(tmp_path):
    """A folder's text encoders encode every prompt once and leave before the transformer arrives; the dry-run
    plan says what is resident when, with sizes from the safetensors headers."""
    from helpers import make_tiny_shapeworld_mmdit

    folder = make_tiny_shapeworld_mmdit(tmp_path / "mmdit", num_layers=2)
    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[1], conditioning="caption", device="cpu")
    assert ex.family.transformer is None  # nothing but configs read so far
    ex.prepare(["a red circle", "a blue square", "a red circle"])
    assert ex._encoder is None and ex.family.transformer is None
    assert set(ex._cond_cache) == {"a red circle", "a blue square"}
    maps = ex.extract(torch.rand(1, 3, 64, 64), ["a blue square"], [0])
    assert ex._encoder is None, "a prepared prompt must not bring the text encoder back"
    assert maps["t=300/layer=1"].shape[0] == 1
    lines = ex.memory_plan()
    from probekit.extractors.memory import parameter_counts

    counts = parameter_counts(folder)
    assert counts["transformer"] == sum(v.numel() for v in ex.transformer.state_dict().values())
    text_bytes = counts["text_encoder"] * 4
    assert any(line.startswith("  text encoders") and "then freed" in line for line in lines)
    from probekit.extractors.plan import human

    assert human(text_bytes) in "\n".join(lines)
