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
    w = FeatureWriter(path, sample_ids=[f"ds/train/{i:06d}" for i in range(n)], indices=list(range(n)),
                      attrs={"extractor": "toy", "provenance": {"seed": 3, "nested": {"a": [1, 2]}},
                             "dataset": {"dataset": "toy", "split": "train"}}, **kw)
    stop = n if complete else n // 2
    for start in range(0, stop, 3):
        pos = list(range(start, min(start + 3, stop)))
        w.write_batch(pos, {k: v[pos] for k, v in feats.items()}, {"seg": seg[pos], "depth": depth[pos]},
                      [f"caption {p}" for p in pos])
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
    with pytest.raises(FeatureFileError, match="incomplete: 5 of 10 samples"):
        FeatureReader(path)
    with FeatureReader(path, allow_incomplete=True) as r:
        assert r.num_samples == 10


def test_finalize_refuses_missing_samples(tmp_path):
    w = FeatureWriter(tmp_path / "x.h5", sample_ids=["a", "b"], indices=[0, 1], attrs={})
    w.write_batch([0], {"layer=0": np.zeros((1, 2, 2, 2))}, {}, ["c"])
    with pytest.raises(FeatureFileError, match="1 of 2 samples were never written"):
        w.finalize()
    w.close()


def test_existing_file_is_not_overwritten_by_default(tmp_path):
    path = tmp_path / "f.h5"
    _write(path)
    with pytest.raises(FeatureFileError, match="already exists"):
        FeatureWriter(path, sample_ids=["a"], indices=[0], attrs={})
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
