"""Storage reductions checked against independent computations, without a model: PCA against numpy's SVD on
tokens of a known spectrum, pooling against block means, the random projection's orthonormality and seed, the
massive-activation channels against a hand-made map, and the options' checks and labels.

What could break: PCA keeping the smallest components or the wrong order, a mean not subtracted, statistics that
cancel in float32, a projection that differs from one machine or seed to the next, the wrong channels dropped,
and a label or description that names other settings than the ones applied.
"""

import numpy as np
import pytest
import torch

from probekit.errors import ProbekitError
from probekit.extractors.storage import (Projection, Reducer, StorageOptions, _json_or_text, as_numpy, pooled_grid,
                                         stored_shape)

C, D = 12, 4
SPECTRUM = np.array([9.0, 6.0, 4.0, 2.5, 1.2, 0.8, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02])  # variances, distinct


def _tokens(n=600, offset=0.0, seed=0):
    """(n, C) tokens whose covariance has eigenvalues SPECTRUM along random orthonormal directions, plus a mean."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((C, C)))
    z = rng.standard_normal((n, C)) * np.sqrt(SPECTRUM)
    return z @ q.T + offset + np.arange(C), q


def _as_maps(tokens, batch=4, h=5, w=6):
    """Tokens laid out as batches of (B, C, h, w) maps, in the order fit_pca flattens them."""
    maps = tokens.reshape(-1, h, w, C).transpose(0, 3, 1, 2)
    return [{"k": torch.from_numpy(maps[a:a + batch].astype(np.float32))} for a in range(0, len(maps), batch)]


def _svd_components(tokens, dim):
    centred = tokens - tokens.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    top = vt[:dim]
    signs = np.sign(top[np.arange(dim), np.abs(top).argmax(1)])  # probekit's convention: largest entry positive
    return top * signs[:, None], s[:dim] ** 2 / len(tokens)


@pytest.mark.parametrize("offset", [0.0, 1e4])  # 1e4: channel means far above the spread (float32 would cancel)
def test_pca_finds_the_top_variance_directions_as_numpy_svd_does(offset):
    tokens, q = _tokens(n=4 * 5 * 6 * 5, offset=offset)  # 5 batches of 4 maps of 5x6 tokens
    tokens32 = tokens.astype(np.float32).astype(np.float64)  # what the maps hold
    proj = Projection.fit_pca(_as_maps(tokens), D, {"fit_samples": 20})
    comps, mean = proj.components["k"].numpy(), proj.means["k"].numpy()
    expected, variances = _svd_components(tokens32, D)
    np.testing.assert_allclose(comps, expected, atol=2e-5 if offset else 1e-6)
    np.testing.assert_allclose(mean, tokens32.mean(0), rtol=1e-6)
    # Largest variance first, and the variance along each component is the SVD's
    centred = tokens32 - tokens32.mean(0)
    np.testing.assert_allclose(((centred @ comps.T) ** 2).mean(0), variances, rtol=1e-4)
    assert np.all(np.diff(variances) < 0)
    # ... and the subspace is, roughly, the planted one (sampling noise aside)
    overlap = np.linalg.svd(comps @ q[:, :D], compute_uv=False)
    assert overlap.min() > 0.9
    assert proj.method == "pca" and proj.info == {"fit_samples": 20, "tokens": 600} and proj.dim == D


def test_pca_fits_each_key_on_its_own_and_does_not_depend_on_batching():
    a, _ = _tokens(seed=1)
    b, _ = _tokens(seed=2)
    batches = [{**x, "other": y["k"]} for x, y in zip(_as_maps(a), _as_maps(b))]
    both = Projection.fit_pca(batches, D, {})
    alone = Projection.fit_pca(_as_maps(b, batch=20), D, {})
    np.testing.assert_allclose(both.components["other"].numpy(), alone.components["k"].numpy(), atol=1e-6)
    np.testing.assert_allclose(both.means["other"].numpy(), alone.means["k"].numpy(), rtol=1e-6)
    assert not np.allclose(both.components["k"].numpy(), both.components["other"].numpy(), atol=1e-2)


def test_pca_needs_more_tokens_than_components_and_some_samples():
    tokens, _ = _tokens(n=30)
    with pytest.raises(ProbekitError, match="needs more than 30 tokens; the first samples give 30 for k"):
        Projection.fit_pca(_as_maps(tokens, batch=1), 30, {})
    assert Projection.fit_pca(_as_maps(tokens, batch=1), 11, {}).dim == 11  # 30 > 11: enough
    with pytest.raises(ProbekitError, match="no samples"):
        Projection.fit_pca([], 4, {})


def test_apply_subtracts_the_mean_then_projects():
    comps = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=torch.float64)
    mean = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    proj = Projection({"k": comps}, {"k": mean}, "pca")
    x = torch.tensor([2.0, 2.0, 3.0, 1.0, 7.0, 8.0]).view(2, 3, 1, 1)  # two maps of one token
    out = proj.apply("k", x)
    assert out.shape == (2, 2, 1, 1) and out.dtype == torch.float32
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 0.0, 0.0, 0.6 * 5 + 0.8 * 5]))
    torch.testing.assert_close(proj.apply("k", x), out)  # second call: the cached copy on the device
    # Each key keeps its own projection, also after another key's was used (the device copies are per key).
    two = Projection({"a": comps, "b": comps.flip(0)}, {"a": mean, "b": torch.zeros(3, dtype=torch.float64)}, "pca")
    a = two.apply("a", x)
    torch.testing.assert_close(two.apply("b", x).flatten(), torch.tensor([0.6 * 2 + 0.8 * 3, 2.0, 0.6 * 7 + 0.8 * 8,
                                                                          1.0]))
    torch.testing.assert_close(two.apply("a", x), a)


def test_random_projection_is_orthonormal_seeded_and_the_same_for_keys_of_one_width():
    a = Projection.random({"x": 16, "y": 16, "z": 24}, 6, seed=3)
    for key, width in (("x", 16), ("z", 24)):
        comp = a.components[key].numpy()
        assert comp.shape == (6, width)
        np.testing.assert_allclose(comp @ comp.T, np.eye(6), atol=1e-6)
        assert not a.means[key].numpy().any()
    assert torch.equal(a.components["x"], a.components["y"])
    assert torch.equal(Projection.random({"x": 16}, 6, seed=3).components["x"], a.components["x"])
    assert not torch.allclose(Projection.random({"x": 16}, 6, seed=4).components["x"], a.components["x"])
    assert a.method == "random" and a.info == {"seed": 3}
    # The draw, as documented: QR of a seeded standard normal (C, D) matrix, signs fixed by R's diagonal.
    g = torch.Generator().manual_seed(3 * 1_000_003 + 16)
    q, r = torch.linalg.qr(torch.randn(16, 6, generator=g, dtype=torch.float64))
    torch.testing.assert_close(a.components["x"], (q * torch.sign(torch.diagonal(r))).T.float())


def test_drop_massive_drops_the_channels_of_largest_mean_absolute_value():
    x = torch.full((2, 6, 2, 3), 0.5)  # maps of 2x3 tokens
    x[:, 1] = -50.0  # the largest |x|, negative
    x[:, 4] = 20.0
    x[0, 2] = 30.0  # mean |x| over both maps' tokens: 15.25
    x[0, 3, 0, 0] = 2.0  # mean |x|: (2 + 11 * 0.5) / 12 = 0.625
    x[:, 5] = 0.0
    proj = Projection.drop_massive([{"k": x[:1]}, {"k": x[1:]}], 2, {"fit_samples": 2})
    assert proj.method == "drop-massive" and proj.dim == 4
    torch.testing.assert_close(proj.components["k"], torch.eye(6)[[0, 2, 3, 5]])
    torch.testing.assert_close(proj.apply("k", x), x[:, [0, 2, 3, 5]])
    median = 0.625  # mean |x| per channel: 0.5, 50, 15.25, 0.625, 20, 0; torch's median of six: the lower middle
    assert proj.info == {"fit_samples": 2, "k": 2, "dropped": {"k": [
        {"channel": 1, "mean_abs": 50.0, "over_median": 50.0 / median},
        {"channel": 4, "mean_abs": 20.0, "over_median": 20.0 / median}]}}
    zeros = Projection.drop_massive([{"k": torch.zeros(1, 3, 1, 1)}], 1, {})
    assert zeros.info["dropped"]["k"][0]["over_median"] is None  # no ratio to a median of 0
    with pytest.raises(ProbekitError, match="no samples"):
        Projection.drop_massive([], 1, {})


def test_a_projection_round_trips_through_its_file_and_its_hash_follows_its_values(tmp_path):
    proj = Projection.fit_pca(_as_maps(_tokens()[0]), D, {"fit_samples": 20, "from": "x.h5"})
    proj.save(tmp_path / "p.safetensors")
    back = Projection.load(tmp_path / "p.safetensors")
    assert back.method == "pca" and back.info == proj.info and back.sha256() == proj.sha256()
    assert torch.equal(back.components["k"], proj.components["k"]) and torch.equal(back.means["k"], proj.means["k"])
    assert proj.describe() == {"method": "pca", "dim": D, "sha256": proj.sha256(), **proj.info}
    moved = Projection(proj.components, {"k": proj.means["k"] + 1}, "pca")
    turned = Projection({"k": -proj.components["k"]}, proj.means, "pca")
    assert len({proj.sha256(), moved.sha256(), turned.sha256()}) == 3
    two = {"a": torch.eye(2), "b": torch.eye(2) * 2}
    means = {"a": torch.zeros(2), "b": torch.ones(2)}
    assert Projection(two, means, "pca").sha256() == Projection(dict(reversed(two.items())), means, "pca").sha256()
    assert Projection(two, means, "pca").sha256() != Projection({"a": two["b"], "b": two["a"]}, means, "pca").sha256()
    assert _json_or_text("[1, 2]") == [1, 2] and _json_or_text("16") == 16 and _json_or_text("x.h5") == "x.h5"


def test_saving_is_durable_and_a_file_without_a_method_is_a_pca(tmp_path, monkeypatch):
    import probekit.atomic as atomic
    from safetensors.torch import save_file

    synced = []
    monkeypatch.setattr(atomic, "_fsync", lambda path: synced.append(path.name))
    Projection({"k": torch.eye(2)}, {"k": torch.zeros(2)}, "random", {"seed": 1}).save(tmp_path / "p.safetensors")
    assert synced == [".tmp-p.safetensors"]  # fsynced before it is renamed into place
    # Files written before the method was recorded held PCA projections.
    save_file({"k::components": torch.eye(2), "k::mean": torch.zeros(2)}, str(tmp_path / "old.safetensors"))
    old = Projection.load(tmp_path / "old.safetensors")
    assert old.method == "pca" and old.info == {} and torch.equal(old.components["k"], torch.eye(2))


def test_pooling_grids_and_stored_shapes():
    assert pooled_grid(16, 16, None) == (16, 16)
    assert pooled_grid(16, 24, 8) == (8, 12)  # the shorter side to K, the longer in proportion
    assert pooled_grid(24, 16, 8) == (12, 8)
    assert pooled_grid(16, 20, 8) == (8, 10) and pooled_grid(16, 18, 8) == (8, 9)
    assert pooled_grid(3, 64, 1) == (1, 21) and pooled_grid(64, 1, 1) == (64, 1)
    with pytest.raises(ProbekitError, match="--pool 17 is larger than the feature grid \\(16x24\\); choose at most 16"):
        pooled_grid(16, 24, 17)
    assert pooled_grid(16, 24, 16) == (16, 24)
    assert stored_shape((128, 16, 16), StorageOptions()) == (128, 16, 16)
    assert stored_shape((128, 16, 16), StorageOptions(pool=4, channels=32)) == (32, 4, 4)
    assert stored_shape((128, 16, 16), StorageOptions(channels=128)) == (128, 16, 16)
    assert stored_shape((128, 16, 16), StorageOptions(drop_massive=3)) == (125, 16, 16)
    with pytest.raises(ProbekitError, match="--channels 129 is more than the 128 channels"):
        stored_shape((128, 16, 16), StorageOptions(channels=129))
    assert stored_shape((4, 2, 2), StorageOptions(drop_massive=3)) == (1, 2, 2)
    with pytest.raises(ProbekitError, match="--drop-massive 4 would drop all 4 channels"):
        stored_shape((4, 2, 2), StorageOptions(drop_massive=4))


def test_the_reducer_pools_projects_and_casts_in_that_order():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    blocks = x.view(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))  # 2x2 block means
    pooled = Reducer(StorageOptions(pool=2, dtype="float32"))("k", x)
    torch.testing.assert_close(pooled, blocks)
    assert Reducer(StorageOptions(pool=4, dtype="float32")).pool(x) is x  # already that size: untouched
    wide = torch.arange(4 * 6, dtype=torch.float32).view(1, 1, 4, 6)
    pooled = Reducer(StorageOptions(pool=2, dtype="float32")).pool(wide)  # the short side to 2, the long to 3
    torch.testing.assert_close(pooled, wide.view(1, 1, 2, 2, 3, 2).mean(dim=(3, 5)))
    assert Reducer(StorageOptions(dtype="float32")).pool(x) is x
    proj = Projection({"k": torch.tensor([[0.0, 1.0, 0.0]])}, {"k": torch.tensor([0.0, 5.0, 0.0])}, "pca")
    reducer = Reducer(StorageOptions(pool=2, channels=1, dtype="bfloat16"), proj)
    out = reducer("k", x)
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
    torch.testing.assert_close(out.float(), (blocks[:, 1:2] - 5).to(torch.bfloat16).float())
    described = reducer.describe()
    assert described == {"pool": 2, "channels": 1, "dtype": "bfloat16", "drop_massive": None, "projection":
                         proj.describe(), "label": "pool2,pca1,bf16"}
    assert Reducer(StorageOptions())("k", x).dtype == torch.float16
    assert Reducer(StorageOptions()).describe() == {"pool": None, "channels": None, "dtype": "float16",
                                                    "drop_massive": None, "projection": None, "label": ""}


def test_storage_options_check_every_number_and_say_what_they_reduce():
    for bad, match in ((dict(pool=0), "--pool must be a positive"), (dict(channels=0), "--channels must be"),
                       (dict(projection="svd"), "--projection must be one of pca, random"),
                       (dict(fit_samples=0), "--fit-samples must be positive"),
                       (dict(dtype="int8"), "--store-dtype must be one of"),
                       (dict(drop_massive=0), "--drop-massive K drops K >= 1"),
                       (dict(drop_massive=2, channels=8), "cannot be combined with --channels"),
                       (dict(projection_from="t.h5"), "--projection-from reuses a channel projection")):
        with pytest.raises(ProbekitError, match=match):
            StorageOptions(**bad)
    StorageOptions(pool=1, channels=1, fit_samples=1, drop_massive=None)  # the smallest settings are fine
    StorageOptions(drop_massive=1, projection_from="t.h5")
    plain = StorageOptions()
    assert not plain.projects and not plain.reduces and plain.stored_channels(64) == 64 and plain.label() == ""
    assert StorageOptions(pool=8).reduces and not StorageOptions(pool=8).projects
    assert StorageOptions(channels=8).projects and StorageOptions(channels=8).reduces
    assert StorageOptions(drop_massive=2).projects and StorageOptions(drop_massive=2).stored_channels(64) == 62
    assert StorageOptions(channels=8).stored_channels(64) == 8
    assert StorageOptions(pool=8, channels=64, dtype="bfloat16").label() == "pool8,pca64,bf16"
    assert StorageOptions(channels=8, projection="random", dtype="float32").label() == "random8,fp32"
    assert StorageOptions(drop_massive=3).label() == "drop3"
    assert StorageOptions(dtype="bfloat16").reduces is False


def test_as_numpy_keeps_bfloat16_bits_and_other_dtypes_as_they_are():
    x = torch.tensor([1.0, -2.5, 3e38], dtype=torch.bfloat16)
    bits = as_numpy(x)
    assert bits.dtype == np.uint16
    assert torch.equal(torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16), x)
    half = torch.tensor([1.5, 2.0], dtype=torch.float16)
    assert as_numpy(half).dtype == np.float16 and as_numpy(half).tolist() == [1.5, 2.0]
