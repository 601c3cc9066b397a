import h5py
import numpy as np
import pytest

from probekit.errors import FeatureFileError
from probekit.store import FORMAT, FeatureReader, FeatureWriter, feature_key, parse_key

KEYS = [feature_key(t, layer) for t in (100, 500) for layer in (0, 2)]


def _write(path, n=10, complete=True, **kw):
    rng = np.random.default_rng(0)
    feats = {k: rng.normal(size=(n, 8, 4, 4)).astype(np.float32) for k in KEYS}
    seg = rng.integers(0, 5, size=(n, 16, 16)).astype(np.uint8)
    depth = rng.uniform(1, 50, size=(n, 16, 16)).astype(np.float32)
    w = FeatureWriter(path, capacity=n, attrs={"extractor": "toy", "provenance": {"seed": 3, "nested": {"a": [1, 2]}},
                                               "dataset": {"dataset": "toy", "split": "train"}}, **kw)
    stop = n if complete else n // 2
    for start in range(0, stop, 3):
        pos = list(range(start, min(start + 3, stop)))
        w.append({k: v[pos] for k, v in feats.items()}, {"seg": seg[pos], "depth": depth[pos]},
                 [f"ds/train/{p:06d}" for p in pos], pos, [f"caption {p}" for p in pos])
    if complete:
        w.finalize()
    w.close()
    return feats, seg, depth


def test_roundtrip_keeps_features_labels_ids_and_provenance(tmp_path):
    path = tmp_path / "f.h5"
    feats, seg, depth = _write(path)
    with FeatureReader(path) as r:
        assert r.keys == KEYS and r.num_samples == 10 and r.label_names == ["seg", "depth"]
        assert r.sample_ids[3] == "ds/train/000003" and r.captions()[4] == "caption 4"
        assert r.provenance == {"seed": 3, "nested": {"a": [1, 2]}}
        assert r.dataset["split"] == "train"
        got = r.read(KEYS[1], [7, 2, 5])
        np.testing.assert_array_equal(got, feats[KEYS[1]][[7, 2, 5]].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(r.read_labels("seg", [9]), seg[[9]])
        np.testing.assert_array_equal(r.read_labels("depth", [0, 1]), depth[[0, 1]])


def test_features_are_float16_one_uncompressed_chunk_per_sample(tmp_path):
    path = tmp_path / "f.h5"
    _write(path)
    with h5py.File(path) as f:
        ds = f["features/t=100/layer=2"]
        assert ds.dtype == np.float16 and ds.chunks == (1, 8, 4, 4) and ds.compression is None
        assert f.attrs["format"] == FORMAT and bool(f.attrs["complete"])


def test_batches_cover_every_sample_once_and_shuffle_reproducibly(tmp_path):
    path = tmp_path / "f.h5"
    _write(path)
    with FeatureReader(path) as r:
        plain = np.concatenate([b["positions"] for b in r.batches(KEYS[:1], 4)])
        assert plain.tolist() == list(range(10))
        a = np.concatenate([b["positions"] for b in r.batches(KEYS[:1], 4, shuffle=True, seed=1, epoch=0)])
        b = np.concatenate([b["positions"] for b in r.batches(KEYS[:1], 4, shuffle=True, seed=1, epoch=0)])
        c = np.concatenate([b["positions"] for b in r.batches(KEYS[:1], 4, shuffle=True, seed=1, epoch=1)])
        assert a.tolist() == b.tolist() and sorted(a.tolist()) == list(range(10)) and a.tolist() != c.tolist()
        batch = next(r.batches(KEYS, 4, labels=["seg"], shuffle=True, seed=1))
        np.testing.assert_array_equal(batch["features"][KEYS[0]], r.read(KEYS[0], batch["positions"]))


def test_incomplete_file_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "partial.h5"
    _write(path, complete=False)
    with pytest.raises(FeatureFileError, match="incomplete: 5 samples were written but the file was never finished"):
        FeatureReader(path)
    with FeatureReader(path, allow_incomplete=True) as r:
        assert r.num_samples == 5 and r.sample_ids[-1] == "ds/train/000004"


def test_finalize_trims_rows_never_written_and_appending_beyond_capacity_is_refused(tmp_path):
    w = FeatureWriter(tmp_path / "x.h5", capacity=3, attrs={})
    w.append({"layer=0": np.ones((2, 2, 2, 2))}, {}, ["a", "b"], [0, 1], ["", ""])
    with pytest.raises(FeatureFileError, match="exceed the planned 3"):
        w.append({"layer=0": np.ones((2, 2, 2, 2))}, {}, ["c", "d"], [2, 3], ["", ""])
    w.finalize()
    w.close()
    with FeatureReader(tmp_path / "x.h5") as r:
        assert r.num_samples == 2 and r.sample_ids == ["a", "b"] and r.shape("layer=0") == (2, 2, 2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_every_storage_dtype_round_trips_and_non_finite_rows_are_refused_with_their_ids(tmp_path, dtype):
    values = np.array([[1.5, -2.25], [3.0e5 if dtype != "float16" else 60000.0, 0.0078125]], np.float32)
    values = values.reshape(2, 2, 1, 1)
    path = tmp_path / f"{dtype}.h5"
    with FeatureWriter(path, capacity=3, attrs={}, feature_dtype=dtype) as w:
        w.append({"layer=0": values}, {}, ["a", "b"], [0, 1], ["", ""])
        bad = np.array([[[[np.inf]], [[0.0]]]], np.float32)
        with pytest.raises(FeatureFileError, match="'layer=0' of c holds NaN or inf"):
            w.append({"layer=0": bad}, {}, ["c"], [2], [""])
        w.finalize()
    with FeatureReader(path) as r:
        assert r.feature_dtype == dtype and r.num_samples == 2
        got = r.read("layer=0", [1, 0])
        expected = values[[1, 0]]
        if dtype == "float16":
            expected = expected.astype(np.float16).astype(np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-2 if dtype == "bfloat16" else 1e-3)
    if dtype == "float16":  # float16 cannot hold 70,000: storing it is refused, not turned into inf silently
        with FeatureWriter(tmp_path / "over.h5", capacity=1, attrs={}) as w, \
                pytest.raises(FeatureFileError, match="NaN or inf"):
            w.append({"layer=0": np.full((1, 1, 1, 1), 7e4, np.float32)}, {}, ["big"], [0], [""])


def test_existing_file_is_not_overwritten_by_default(tmp_path):
    path = tmp_path / "f.h5"
    _write(path)
    with pytest.raises(FeatureFileError, match="already exists"):
        FeatureWriter(path, capacity=1, attrs={})
    _write(path, n=4, overwrite=True)
    assert FeatureReader(path).num_samples == 4


def test_foreign_truncated_and_missing_files_get_clear_errors(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(FeatureFileError, match="not a probekit feature file"):
        FeatureReader(foreign)
    good = tmp_path / "good.h5"
    _write(good)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(FeatureFileError, match="truncated.h5 cannot be read as HDF5"):
        FeatureReader(truncated)
    with pytest.raises(FeatureFileError, match="does not exist"):
        FeatureReader(tmp_path / "nope.h5")
    with FeatureReader(good) as r, pytest.raises(FeatureFileError, match="no feature 't=7/layer=0'"):
        r.read("t=7/layer=0", [0])


def test_key_helpers():
    assert feature_key(250, 3) == "t=250/layer=3" and feature_key(None, 5) == "layer=5"
    assert parse_key("t=250/layer=3") == {"t": "250", "layer": "3"}
