"""The data side of a probe run (probes/data.py), without training: which rows play which role, what a batch
holds, resident and streamed alike, the statistics fusion standardises with, and the files refused together.

What could break: a batch whose features or targets come from other rows than its positions say, a validation
slice that overlaps training or ignores the seed, a training cut that keeps other rows, resident and streamed
batches that differ, a memory budget that picks the wrong mode or dtype, and files of other settings, samples
or shapes read as one run.
"""

import numpy as np
import pytest
import torch

from helpers import CLASSES, REF, labels
from probekit.errors import FeatureFileError, ProbekitError
from probekit.probes.config import ProbeConfig
from probekit.probes.data import ProbeData, check_compatible, default_resident_bytes, resolve_keys, storage_label
from probekit.probes.fusion import STACKED, STACKED_KEYS
from probekit.store import FeatureReader, write_features

KEYS = ["t=100/layer=0", "t=900/layer=0"]


def _write(path, split, n, seed, *, keys=KEYS, channels=3, grid=8, dataset=None, extractor=None, storage=None,
           ids=None, dtype="float16", scale=1.0, offset=0.0, name="synthetic", provenance=None):
    """A feature file of ``n`` samples: each map's values are random, with a per-channel offset (so means and
    spreads differ by channel) and a per-key scale. ``grid``: a side, or (h, w)."""
    rng = np.random.default_rng(seed)
    seg, depth, sal = labels(rng, n)
    h, w = (grid, grid) if isinstance(grid, int) else grid
    feats = {k: (scale * (i + 1) * rng.standard_normal((n, channels, h, w)) + offset
                 + np.arange(channels).reshape(1, -1, 1, 1)).astype(np.float32) for i, k in enumerate(keys)}
    if provenance is None:
        provenance = {"extractor": {"name": "synthetic", **(extractor or {})}}
    attrs = {"extractor": name, "dataset": {**REF, "split": split, **(dataset or {})}, "provenance": provenance}
    if storage is not None:
        attrs["storage"] = storage
    ids = ids or [f"synthetic/{split}/{i:06d}" for i in range(n)]
    return write_features(path, feats, {"seg": seg, "depth": depth, "saliency": sal}, ids, attrs=attrs,
                          feature_dtype=dtype)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {split: _write(root / f"{split}.h5", split, n, seed)
            for split, n, seed in (("train", 40, 0), ("val", 12, 1), ("test", 10, 2))}


def _data(files, *, val=True, **cfg):
    cfg = ProbeConfig(**{"fusion": "global", "batch_size": 8, "device": "cpu", **cfg})
    return ProbeData(cfg, files["train"], files["test"], val_features=files["val"] if val else None)


def _all(data, split, **kw):
    out = [(p.copy(), {k: v.clone() for k, v in f.items() if k in KEYS}, t.clone())
           for p, f, t in data.batches(split, **kw)]
    return out


@pytest.mark.parametrize("budget", [None, 0], ids=["resident", "streamed"])
def test_a_batch_holds_the_features_and_targets_of_the_rows_it_names(files, budget):
    with _data(files, resident_bytes=budget, task="depth") as data:
        assert data.mode == ("resident" if budget is None else "streamed")
        reader = FeatureReader(files["train"])
        seen = []
        for positions, feats, target in data.batches(data.train, shuffle=True, seed=3, epoch=1):
            assert len(positions) <= 8
            for key in KEYS:
                np.testing.assert_array_equal(feats[key].numpy(), reader.read(key, positions).astype(np.float32))
                assert feats[key].dtype == torch.float32
            np.testing.assert_array_equal(target.numpy(), reader.read_labels("depth", positions))
            seen.extend(positions.tolist())
        assert sorted(seen) == list(range(40)) and seen != list(range(40))  # every row once, shuffled


def test_resident_and_streamed_serve_the_same_batches_in_the_same_seeded_order(files):
    with _data(files) as resident, _data(files, resident_bytes=0) as streamed:
        assert (resident.mode, streamed.mode) == ("resident", "streamed")
        for split in ("train", "val", "eval"):
            a = _all(resident, getattr(resident, split), shuffle=True, seed=1, epoch=2)
            b = _all(streamed, getattr(streamed, split), shuffle=True, seed=1, epoch=2)
            assert len(a) == len(b)
            for (pa, fa, ta), (pb, fb, tb) in zip(a, b):
                np.testing.assert_array_equal(pa, pb)
                assert torch.equal(ta, tb) and all(torch.equal(fa[k], fb[k]) for k in KEYS)
        orders = {(seed, epoch): np.concatenate([p for p, _, _ in _all(resident, resident.train, shuffle=True,
                                                                            seed=seed, epoch=epoch)]).tolist()
                  for seed, epoch in ((1, 2), (1, 3), (2, 2))}
        assert len({tuple(o) for o in orders.values()}) == 3  # the order depends on the seed and the epoch
        plain = np.concatenate([p for p, _, _ in _all(resident, resident.train)]).tolist()
        assert plain == list(range(40))  # unshuffled: the file's order


def test_fused_maps_of_one_shape_are_served_stacked_in_key_order(files):
    with _data(files) as data:
        _, feats, _ = next(data.batches(data.train))
        assert feats[STACKED_KEYS] == tuple(KEYS) and feats[STACKED].shape == (8, 2, 3, 8, 8)
        for i, key in enumerate(KEYS):
            assert torch.equal(feats[STACKED][:, i], feats[key])
    with _data(files, fusion="single", keys=KEYS[:1]) as data:  # one map: nothing to stack
        _, feats, _ = next(data.batches(data.train))
        assert STACKED not in feats and set(feats) == set(KEYS[:1])


def test_the_validation_slice_of_train_is_seeded_disjoint_and_sized_by_the_fraction(files):
    slices = {}
    for seed in (0, 1):
        with _data(files, val=False, seeds=[seed], val_fraction=0.25) as data:
            train, val = set(data.train.rows.tolist()), set(data.val.rows.tolist())
            assert len(val) == 10 and not train & val and train | val == set(range(40))
            assert list(data.val.rows) == sorted(val) and list(data.train.rows) == sorted(train)
            assert data.val.reader is data.train.reader
            assert data.validation == {"from": "train", "fraction": 0.25, "rows": 10}
            slices[seed] = sorted(val)
    assert slices[0] != slices[1]
    expected = np.sort(np.random.default_rng([0, 7]).permutation(40)[:10])  # the documented draw
    assert slices[0] == expected.tolist()
    with _data(files, val=False, seeds=[0, 5], val_fraction=0.25) as data:
        assert data.val.rows.tolist() == slices[0]  # the first seed chooses, for every seed of the run
    with _data(files, val=False, val_fraction=0.01) as data:
        assert len(data.val) == 1  # at least one row
    with pytest.raises(ProbekitError, match="has 40 samples: too few to hold out"):
        _data(files, val=False, val_fraction=0.99)


def test_a_validation_file_keeps_every_training_row_and_is_recorded(files):
    with _data(files) as data:
        assert data.train.rows.tolist() == list(range(40)) and data.val.rows.tolist() == list(range(12))
        assert data.eval.rows.tolist() == list(range(10))
        assert data.validation == {"from": str(files["val"].resolve()), "split": "val", "rows": 12}
        assert data.describe() == {"mode": "resident", "device": "cpu", "rows": {"train": 40, "val": 12, "eval": 10}}
        assert data.paths == {"train": [str(files["train"])], "eval": [str(files["test"])],
                              "val": [str(files["val"])]}


def test_train_limit_keeps_the_first_training_rows(files):
    with _data(files, train_limit=7) as data:
        assert data.train.rows.tolist() == list(range(7)) and len(data.val) == 12
    with _data(files, val=False, train_limit=7) as data:  # the first 7 of the rows validation left
        order = np.random.default_rng([0, 7]).permutation(40)
        assert data.train.rows.tolist() == np.sort(order[6:])[:7].tolist()
    with _data(files, train_limit=40) as data:
        assert len(data.train) == 40
    with pytest.raises(ProbekitError, match="train_limit 41 exceeds the 40 training rows"):
        _data(files, train_limit=41)


def test_channel_statistics_are_the_training_rows_mean_and_spread_resident_or_streamed(files):
    reader = FeatureReader(files["train"])
    for budget in (None, 0):
        with _data(files, resident_bytes=budget, train_limit=30) as data:
            stats = data.channel_stats()
            assert data.channel_stats() is stats  # computed once
            for key in KEYS:
                x = reader.read(key, range(30)).astype(np.float64)
                mean, std = stats[key]
                np.testing.assert_allclose(mean.numpy(), x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(std.numpy(), x.std(axis=(0, 2, 3)), rtol=1e-5)
                assert mean.dtype == torch.float32 and std.dtype == torch.float32


def test_the_memory_budget_picks_resident_float32_half_size_or_streamed(files, tmp_path):
    with _data(files) as data:
        per_row = 2 * 3 * 8 * 8  # two maps of (3, 8, 8)
        label = 16 * 16 * 8
        assert data.bytes_needed(4) == (per_row * 4 + label) * (40 + 12 + 10)
        assert data.bytes_needed(2) == (per_row * 2 + label) * (40 + 12 + 10)
        full, half = data.bytes_needed(4), data.bytes_needed(2)
    for budget, mode, dtype in ((full, "resident", torch.float32), (full - 1, "resident", torch.float16),
                                (half, "resident", torch.float16), (half - 1, "streamed", None)):
        with _data(files, resident_bytes=budget) as data:
            assert data.mode == mode, budget
            if dtype is not None:
                assert data._dtype == dtype
                _, feats, _ = next(data.batches(data.train))
                assert feats[KEYS[0]].dtype == torch.float32  # served as float32 whatever is held
    wide = {s: _write(tmp_path / f"{s}.h5", s, n, seed, dtype="float32") for s, n, seed in
            (("train", 40, 0), ("val", 12, 1), ("test", 10, 2))}
    with _data(wide, resident_bytes=half) as data:
        assert data.mode == "resident" and data._dtype == torch.bfloat16  # float32 files: float32's range
    with _data(wide, resident_bytes=None) as data:
        assert data.mode == "resident" and data._dtype == torch.float32


def test_the_default_budget_on_the_cpu_is_a_quarter_of_memory_up_to_8_gib():
    import os

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_resident_bytes(torch.device("cpu")) == min(ram // 4, 8 << 30)


def test_files_that_do_not_belong_together_are_refused_naming_what_differs(files, tmp_path):
    train = FeatureReader(files["train"])

    def other(name, **kw):
        return FeatureReader(_write(tmp_path / f"{name}.h5", "test", 4, 9, **kw))

    check_compatible(train, other("same", extractor={"device": "cuda", "dtype": "bfloat16"}), KEYS)
    with pytest.raises(FeatureFileError, match="different extractor settings \\(layers, shift\\)"):
        check_compatible(train, other("ex", extractor={"shift": 3.0, "layers": [1]}), KEYS)
    with pytest.raises(FeatureFileError, match="stored differently \\(pool: \\[None\\] vs \\[8\\]\\)$"):
        check_compatible(train, other("pool", storage={"pool": 8}), KEYS)
    with pytest.raises(FeatureFileError, match="stored differently \\(channels, projection.*--projection-from"):
        check_compatible(train, other("proj", storage={"channels": 8, "projection": {"sha256": "ab"}}), KEYS)
    check_compatible(train, other("dtype", storage={"dtype": "bfloat16"}), KEYS)  # the dtype may differ
    for name in ("dataset", "manifest_sha256", "params_hash", "classes"):
        changed = other(f"ds-{name}", dataset={name: ["x"] if name == "classes" else "other"})
        with pytest.raises(FeatureFileError, match=f"differ in dataset {name}"):
            check_compatible(train, changed, KEYS)
    check_compatible(train, other("cross", dataset={"dataset": "other", "manifest_sha256": "1"}), KEYS,
                     cross_dataset=True)
    with pytest.raises(FeatureFileError, match="differ in dataset classes"):
        check_compatible(train, other("cross-classes", dataset={"classes": ["x"]}), KEYS, cross_dataset=True)
    with pytest.raises(FeatureFileError, match="has no feature 't=900/layer=0' \\(it has: t=100/layer=0\\)"):
        check_compatible(train, other("keys", keys=KEYS[:1]), KEYS)
    check_compatible(train, other("fewer", keys=KEYS[:1]), KEYS[:1])
    with pytest.raises(FeatureFileError, match="has shape \\(3, 8, 8\\) in .* but \\(3, 4, 4\\)"):
        check_compatible(train, other("grid", grid=4), KEYS)
    with pytest.raises(FeatureFileError, match="share 2 samples \\(e.g. synthetic/train/000001\\)"):
        check_compatible(train, other("shared", ids=["synthetic/train/000001", "x/1", "synthetic/train/000003",
                                                        "x/2"]), KEYS)


def test_keys_are_resolved_by_fusion_layer_site_and_suffix(files):
    reader = FeatureReader(files["train"])
    assert resolve_keys(reader, "single", 100, 0) == ["t=100/layer=0"]
    assert resolve_keys(reader, "global") == KEYS and resolve_keys(reader, "concat", keys=KEYS[1:]) == KEYS[1:]
    assert resolve_keys(reader, "global", site="output") == KEYS
    with pytest.raises(ProbekitError, match="global fusion fuses several maps"):
        resolve_keys(reader, "global", 100, 0)
    with pytest.raises(ProbekitError, match="holds 2 feature maps; choose one"):
        resolve_keys(reader, "single")
    with pytest.raises(ProbekitError, match="holds 2 maps of site 'output'"):
        resolve_keys(reader, "single", site="output")
    with pytest.raises(ProbekitError, match="holds no maps of capture site 'attn'"):
        resolve_keys(reader, "global", site="attn")
    with pytest.raises(ProbekitError, match="has no feature 't=500/layer=0'"):
        resolve_keys(reader, "single", 500, 0)
    with pytest.raises(ProbekitError, match="single fusion probes exactly one feature map, got 2"):
        resolve_keys(reader, "single", keys=KEYS)
    with pytest.raises(ProbekitError, match="global fusion learns weights over several maps"):
        resolve_keys(reader, "global", keys=KEYS[:1])
    with pytest.raises(ProbekitError, match="spatial fusion learns weights"):
        resolve_keys(reader, "spatial", keys=KEYS[:1])
    assert resolve_keys(reader, "concat", keys=KEYS[:1]) == KEYS[:1]

    class Combined:  # a combined reader's keys carry their source
        keys, path = ["src=a/t=100/layer=0", "src=b/t=100/layer=0", "src=a/t=900/layer=0"], "c"

    assert resolve_keys(Combined, "single", keys=["t=900/layer=0"]) == ["src=a/t=900/layer=0"]
    with pytest.raises(ProbekitError, match="has no feature 't=100/layer=0'"):  # two sources: ambiguous
        resolve_keys(Combined, "single", keys=["t=100/layer=0"])


def test_a_file_of_one_map_needs_no_choice_and_the_storage_label_is_read(files, tmp_path):
    one = FeatureReader(_write(tmp_path / "one.h5", "train", 4, 0, keys=KEYS[:1], storage={"label": "pool8"}))
    assert resolve_keys(one, "single") == KEYS[:1]
    assert storage_label(one) == "pool8" and storage_label(FeatureReader(files["train"])) == ""


def test_the_task_is_built_from_the_files_reference_and_the_depth_crop_from_the_dataset(files, tmp_path):
    with _data(files, task="depth", depth_output="regression", depth_loss="silog") as data:
        assert data.task.name == "depth" and data.task.depth_output == "regression"
        assert data.task.depth_loss == "silog" and data.task.crop is None and data.cfg.eval_crop is None
        assert data.label_size == (16, 16) and data.channels == {k: 3 for k in KEYS}
        assert data.reference["classes"] == CLASSES and data.keys == KEYS and data.cfg.keys == KEYS
    cropped = {s: _write(tmp_path / f"{s}.h5", s, n, seed, dataset={"eval_crop": [0.1, 0.9, 0.2, 0.8]})
               for s, n, seed in (("train", 40, 0), ("val", 12, 1), ("test", 10, 2))}
    with _data(cropped, task="depth") as data:
        assert data.cfg.eval_crop == [0.1, 0.9, 0.2, 0.8] and data.task.crop == (0.1, 0.9, 0.2, 0.8)
    with _data(cropped, task="depth", eval_crop=[0.0, 1.0, 0.0, 0.5]) as data:
        assert data.task.crop == (0.0, 1.0, 0.0, 0.5)  # the user's crop wins
    with _data(cropped, task="seg") as data:
        assert data.cfg.eval_crop is None  # a depth protocol only
    no_range = {s: _write(tmp_path / f"n{s}.h5", s, n, seed, dataset={"depth_range": None})
                for s, n, seed in (("train", 40, 0), ("val", 12, 1), ("test", 10, 2))}
    with pytest.raises(ProbekitError, match="n?train.h5: depth needs 'depth_range'"):
        _data(no_range, task="depth")


def test_guidance_maps_are_read_beside_the_features_and_not_fused(files, tmp_path):
    guide = {s: _write(tmp_path / f"g{s}.h5", s, n, seed, keys=["concepts=output"], channels=2)
             for s, n, seed in (("train", 40, 0), ("val", 12, 1), ("test", 10, 2))}
    cfg = ProbeConfig(fusion="global", batch_size=8, device="cpu")
    with ProbeData(cfg, files["train"], files["test"], val_features=files["val"], guidance=guide["train"],
                   eval_guidance=guide["test"], val_guidance=guide["val"]) as data:
        assert data.guidance_keys == ["src=synthetic#1/concepts=output"]  # the combined reader names its sources
        assert data.keys == [f"src=synthetic#0/{k}" for k in KEYS]
        assert data.all_keys == data.keys + data.guidance_keys
        _, feats, _ = next(data.batches(data.train))
        assert set(data.all_keys) <= set(feats)
    for kw, match in ((dict(guidance=guide["train"]), "needed for every split"),
                      (dict(guidance=guide["train"], eval_guidance=guide["test"], val_features=files["val"]),
                       "--val-features with --guidance needs --val-guidance"),
                      (dict(val_guidance=guide["val"]), "needed for every split")):
        with pytest.raises(ProbekitError, match=match):
            ProbeData(cfg, files["train"], files["test"], **kw)
    with pytest.raises(FeatureFileError, match="holds no concept maps to use as guidance"):
        ProbeData(cfg, files["train"], files["test"], guidance=files["train"], eval_guidance=files["test"])


def test_a_split_without_the_tasks_labels_is_refused(files, tmp_path):
    rng = np.random.default_rng(0)
    seg, _, _ = labels(rng, 10)
    bare = write_features(tmp_path / "bare.h5", {k: rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
                                                  for k in KEYS}, {"seg": seg}, [f"synthetic/test/{i}" for i in
                                                                                 range(10)],
                          attrs={"extractor": "synthetic", "dataset": {**REF, "split": "test"},
                                 "provenance": {"extractor": {"name": "synthetic"}}})
    with pytest.raises(FeatureFileError, match="bare.h5 holds no 'depth' labels \\(it has: seg\\)"):
        ProbeData(ProbeConfig(task="depth", fusion="global", device="cpu"), files["train"], bare)


# -- what the first mutation run of probes/data.py found unchecked (docs/mutation.md) -------------------------
def _splits(root, prefix="", sizes=(("train", 40, 0), ("val", 12, 1), ("test", 10, 2)), **kw):
    return {split: _write(root / f"{prefix}{split}.h5", split, n, seed, **kw) for split, n, seed in sizes}


def test_a_non_finite_value_names_its_map_and_sample_resident_or_streamed(files, tmp_path):
    import h5py

    from probekit.store import NonFiniteFeatures

    bad = _splits(tmp_path)
    with h5py.File(bad["train"], "r+") as f:  # damaged after writing (the writer refuses NaN)
        f[f"features/{KEYS[1]}"][2, 2, 1, 1] = np.nan
        f[f"features/{KEYS[1]}"][5, 0, 0, 3] = np.inf  # both in the first batch of 8
    for budget in (None, 0):
        with pytest.raises(NonFiniteFeatures) as info, _data(bad, resident_bytes=budget) as data:
            for _ in data.batches(data.train):
                pass
        assert info.value.key == KEYS[1] and info.value.rows == [2, 5]
        assert info.value.sample_ids == ["synthetic/train/000002", "synthetic/train/000005"]
        assert str(info.value).startswith(f"{bad['train']}: feature '{KEYS[1]}' of synthetic/train/000002, ")


@pytest.mark.parametrize("budget", [None, 0], ids=["resident", "streamed"])
def test_statistics_over_many_rows_of_large_values_on_a_wide_grid(tmp_path, budget):
    """100 rows (more than one chunk of 64), maps of 4x6 tokens, values near 1e4: the float64 sums keep the
    spread exact where float32 ones would cancel."""
    big = _splits(tmp_path, sizes=(("train", 100, 0), ("val", 12, 1), ("test", 10, 2)), grid=(4, 6),
                  offset=1e4, dtype="float32")
    with _data(big, resident_bytes=budget) as data:
        stats = data.channel_stats()
    x = FeatureReader(big["train"]).read(KEYS[1], range(100)).astype(np.float64)
    mean, std = stats[KEYS[1]]
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(std.numpy(), x.std(axis=(0, 2, 3)), rtol=1e-4)


def test_bfloat16_files_are_served_as_their_values_and_half_size_copies_are_bfloat16(tmp_path):
    bf = _splits(tmp_path, prefix="bf", dtype="bfloat16")
    reader = FeatureReader(bf["train"])
    expected = torch.from_numpy(reader.read(KEYS[0], range(8)).astype(np.float32))
    for budget in (None, 0):
        with _data(bf, resident_bytes=budget) as data:
            _, feats, _ = next(data.batches(data.train))
            assert torch.equal(feats[KEYS[0]], expected)
    # A float32 file held at half size: bfloat16 copies, served as bfloat16-rounded values.
    wide = _splits(tmp_path, prefix="f32", dtype="float32", offset=0.123)
    with _data(wide) as data:
        half = data.bytes_needed(2)
        assert data.bytes_needed() == data.bytes_needed(4)  # the default: float32 copies
    with _data(wide, resident_bytes=half) as data:
        _, feats, _ = next(data.batches(data.train))
        values = torch.from_numpy(FeatureReader(wide["train"]).read(KEYS[0], range(8)))
        assert torch.equal(feats[KEYS[0]], values.to(torch.bfloat16).float())
        held = data._resident_split(data.train)
        assert held.stacked.dtype == torch.bfloat16
    with _data(wide, fusion="single", keys=KEYS[:1]) as data:
        one_half = data.bytes_needed(2)
    with _data(wide, resident_bytes=one_half, fusion="single", keys=KEYS[:1]) as data:
        assert data._resident_split(data.train).features[KEYS[0]].dtype == torch.bfloat16


def test_combined_files_of_other_grids_and_dtypes_are_read_per_source(tmp_path):
    """Two sources of the same samples: float16 maps on an 8x8 grid and bfloat16 maps on 4x4 (not stackable)."""
    a = _splits(tmp_path, prefix="a", name="dit")
    b = _splits(tmp_path, prefix="b", name="vit", keys=["layer=5"], grid=4, dtype="bfloat16")
    pair = {s: [a[s], b[s]] for s in a}
    keys = ["src=dit/t=100/layer=0", "src=dit/t=900/layer=0", "src=vit/layer=5"]
    with _data(pair) as data:
        half = data.bytes_needed(2)
    for budget in (None, half, 0):
        with _data(pair, resident_bytes=budget) as data:
            assert data.keys == keys and data.paths["train"] == [str(a["train"]), str(b["train"])]
            if budget == half:
                assert data.mode == "resident" and data._dtype == torch.bfloat16  # one source is not float16
            _, feats, _ = next(data.batches(data.train))
            assert STACKED not in feats and feats[keys[2]].shape == (8, 3, 4, 4)
            expected = FeatureReader(b["train"]).read("layer=5", range(8)).astype(np.float32)
            np.testing.assert_array_equal(feats[keys[2]].numpy(), expected)
            stats = data.channel_stats()
            x = FeatureReader(b["train"]).read("layer=5", range(40)).astype(np.float64)
            np.testing.assert_allclose(stats[keys[2]][0].numpy(), x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_maps_are_chosen_by_timestep_layer_and_site_given_to_probe_data(tmp_path):
    sites = ["t=100/layer=0", "t=100/site=attn/layer=0", "t=900/layer=0"]
    f = _splits(tmp_path, keys=sites)
    cfg = ProbeConfig(fusion="single", device="cpu")
    with ProbeData(cfg, f["train"], f["test"], timestep=100, layer=0, site="attn") as data:
        assert data.keys == ["t=100/site=attn/layer=0"]
    with ProbeData(ProbeConfig(fusion="single", device="cpu"), f["train"], f["test"], timestep=900, layer=0) as data:
        assert data.keys == ["t=900/layer=0"]
    with ProbeData(ProbeConfig(fusion="single", device="cpu"), f["train"], f["test"], site="attn") as data:
        assert data.keys == ["t=100/site=attn/layer=0"]  # the site's one map needs no choice
    with ProbeData(ProbeConfig(fusion="concat", device="cpu"), f["train"], f["test"], site="output") as data:
        assert data.keys == ["t=100/layer=0", "t=900/layer=0"]
    reader = FeatureReader(f["train"])
    with pytest.raises(ProbekitError, match="--timestep/--layer pick the one map"):
        resolve_keys(reader, "global", 100, None)
    with pytest.raises(ProbekitError, match="--timestep/--layer pick the one map"):
        resolve_keys(reader, "concat", None, 0)
    with pytest.raises(ProbekitError, match=f"{f['train']} holds 3 feature maps; choose one"):
        ProbeData(ProbeConfig(fusion="single", device="cpu"), f["train"], f["test"])


def test_every_split_is_checked_against_training_and_another_dataset_only_when_asked(files, tmp_path):
    other_ds = {"dataset": "other", "manifest_sha256": "9", "params_hash": "9"}
    foreign = _write(tmp_path / "foreign-test.h5", "test", 10, 2, dataset=other_ds)
    with pytest.raises(FeatureFileError, match="differ in dataset dataset"):
        ProbeData(ProbeConfig(fusion="global", device="cpu"), files["train"], foreign)  # no validation file
    cfg = ProbeConfig(fusion="global", device="cpu", cross_dataset=True)
    with ProbeData(cfg, files["train"], foreign, val_features=files["val"]) as data:
        assert data.eval.reader.dataset["dataset"] == "other"
    odd = _write(tmp_path / "odd-val.h5", "val", 12, 1, grid=4)
    with pytest.raises(FeatureFileError, match="has shape"):
        ProbeData(ProbeConfig(fusion="global", device="cpu"), files["train"], files["test"], val_features=odd)


def test_without_guidance_concept_maps_of_a_combined_file_are_fused_like_any_map(files, tmp_path):
    concepts = _splits(tmp_path, prefix="c", keys=["concepts=output"], name="concepts")
    pair = {s: [files[s], concepts[s]] for s in files}
    with _data(pair) as data:
        assert data.guidance_keys == [] and "src=concepts/concepts=output" in data.keys


def test_files_without_extractor_provenance_are_compatible_with_each_other(tmp_path):
    bare = _splits(tmp_path, provenance={})
    with _data(bare) as data:
        assert data.keys == KEYS


def test_storage_differences_name_only_the_fields_that_differ(files, tmp_path):
    same = {"channels": 8, "projection": {"sha256": "ab"}}
    a = FeatureReader(_write(tmp_path / "a.h5", "train", 4, 0, storage={**same, "pool": 4}))
    b = FeatureReader(_write(tmp_path / "b.h5", "test", 4, 1, storage={**same, "pool": 8}))
    with pytest.raises(FeatureFileError, match=r"stored differently \(pool: \[4\] vs \[8\]\)$"):
        check_compatible(a, b, KEYS)
    c = FeatureReader(_write(tmp_path / "c.h5", "test", 4, 1, storage={**same, "projection": {"sha256": "cd"},
                                                                      "pool": 4}))
    with pytest.raises(FeatureFileError, match=r"\(extract the other splits with --projection-from TRAIN.h5 to "
                                               r"share the training split's projection\)$"):
        check_compatible(a, c, KEYS)


def test_the_default_budget_on_a_gpu_is_a_third_of_its_free_memory_and_ram_is_capped(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or (3001, 9000))
    assert default_resident_bytes(torch.device("cuda:1")) == 1000
    assert asked == [torch.device("cuda:1")]  # the probe's own GPU, not the current one
    import os

    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 16 << 20}[name])
    assert default_resident_bytes(torch.device("cpu")) == 8 << 30  # a quarter of 64 GiB, capped at 8 GiB

    def unknown(name):
        raise ValueError(name)

    monkeypatch.setattr(os, "sysconf", unknown)
    assert default_resident_bytes(torch.device("cpu")) == 2 << 30  # RAM unknown: taken as 8 GiB


def test_the_config_given_is_left_as_given_and_the_resolved_one_is_the_datas(files, tmp_path):
    """ProbeData resolves the keys and the dataset's depth crop into a copy (``data.cfg``), recorded as the run's
    settings; the caller's config (reused for another run, say) keeps what it said."""
    cropped = {s: _write(tmp_path / f"{s}.h5", s, n, seed, dataset={"eval_crop": [0.1, 0.9, 0.2, 0.8]})
               for s, n, seed in (("train", 40, 0), ("val", 12, 1), ("test", 10, 2))}
    cfg = ProbeConfig(task="depth", fusion="global", device="cpu", epochs=1)
    with ProbeData(cfg, cropped["train"], cropped["test"], val_features=cropped["val"]) as data:
        assert data.cfg.keys == KEYS and data.cfg.eval_crop == [0.1, 0.9, 0.2, 0.8]
        assert data.cfg is not cfg
    assert cfg.keys is None and cfg.eval_crop is None


def test_streamed_and_resident_channel_statistics_agree_with_numpy(files):
    """The per-channel mean and std that standardise fused maps, resident (chunks of 64 rows) and streamed (batch
    by batch), against numpy over the training rows."""
    from probekit.store import FeatureReader as Reader

    stats = {}
    for mode, budget in (("resident", None), ("streamed", 0)):
        with _data(files, resident_bytes=budget) as data:
            assert data.mode == mode
            stats[mode] = data.channel_stats()
            rows = data.train.rows
    reader = Reader(files["train"])
    for key in KEYS:
        x = np.stack([np.asarray(reader.read(key, [int(r)]))[0] for r in rows]).astype(np.float64)
        for mode in stats:
            mean, std = stats[mode][key]
            np.testing.assert_allclose(mean.numpy(), x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(std.numpy(), x.std(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
