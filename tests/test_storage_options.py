"""Storing less, by choice: pooled and projected maps, storage dtypes, the plan, and the free-space check."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from probekit.cli import cli
from probekit.extractors.shards import parts_dir
from probekit.store import FeatureReader

EXTRACT = ["extract", "-e", "tiny-mmdit-random", "-t", "100,600", "-l", "0,2", "-q"]


def _run(args):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """Train and test files pooled to 8x8 tokens and PCA-projected to 16 channels, the test split reusing the
    training split's projection."""
    root = tmp_path_factory.mktemp("reduced")
    train, test = root / "train.h5", root / "test.h5"
    _run(EXTRACT + ["-s", "train", "--limit", "40", "--pool", "8", "--channels", "16", "--fit-samples", "16",
                    "-o", str(train)])
    _run(EXTRACT + ["-s", "test", "--limit", "16", "--pool", "8", "--channels", "16",
                    "--projection-from", str(train), "-o", str(test)])
    return root, train, test


def test_pooled_and_projected_maps_are_stored_with_their_projection(reduced):
    root, train, test = reduced
    with FeatureReader(train) as tr, FeatureReader(test) as te:
        assert tr.shape("t=100/layer=2") == (16, 8, 8)  # from (128, 16, 16)
        s = tr.storage
        assert s["pool"] == 8 and s["channels"] == 16 and s["projection"]["method"] == "pca"
        assert s["projection"]["fit_samples"] == "16" or s["projection"]["fit_samples"] == 16
        assert s["label"] == "pool8,pca16"
        assert te.storage["projection"]["sha256"] == s["projection"]["sha256"]
        # The test split names the file its projection came from and keeps how it was fitted.
        reused = te.storage["projection"]
        assert reused["from"] == str(train.resolve()) and "from" not in s["projection"]
        assert {k: reused[k] for k in ("method", "dim", "fit_samples", "tokens")} == \
            {k: s["projection"][k] for k in ("method", "dim", "fit_samples", "tokens")}
        for key in tr.keys:
            a, b = tr.projection(key), te.projection(key)
            assert a["components"].shape == (16, 128)
            np.testing.assert_array_equal(a["components"], b["components"])
            np.testing.assert_array_equal(a["mean"], b["mean"])
            # PCA components are orthonormal
            np.testing.assert_allclose(a["components"] @ a["components"].T, np.eye(16), atol=1e-4)


def test_the_stored_values_are_the_projection_of_the_pooled_maps(reduced, tmp_path):
    root, train, _ = reduced
    plain = tmp_path / "plain.h5"
    _run(EXTRACT + ["-s", "train", "--limit", "4", "-o", str(plain)])
    with FeatureReader(plain) as p, FeatureReader(train) as r:
        key = "t=600/layer=0"
        x = torch.from_numpy(p.read(key, [0, 3]))
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 8)
        proj = r.projection(key)
        expected = torch.einsum("dc,bchw->bdhw", torch.from_numpy(proj["components"]),
                                pooled - torch.from_numpy(proj["mean"]).view(1, -1, 1, 1))
        # float16 on both sides of the comparison: the plain file rounds before pooling
        np.testing.assert_allclose(r.read(key, [0, 3]), expected.numpy(), rtol=2e-2, atol=2e-2)


def test_reduced_files_round_trip_through_probe_and_report(reduced):
    root, train, test = reduced
    res = _run(["probe", "-f", str(train), "-E", str(test), "--fusion", "global", "--epochs", "2", "--lrs", "1e-2",
                "--results-root", str(root / "results"), "--device", "cpu", "-q"])
    assert "seg mIoU" in res.output
    run = root / "results" / "tiny-mmdit-random[pool8,pca16]" / "shapeworld" / "seg" / "linear-global"
    rec = json.loads((run / "result.json").read_text())
    assert rec["extractor"] == "tiny-mmdit-random[pool8,pca16]"
    assert rec["features"]["train"]["storage"]["channels"] == 16
    assert rec["probe"]["in_channels"] == {k: 16 for k in rec["probe"]["feature_keys"]}
    _run(["report", str(root / "results"), "--out", str(root / "report")])
    assert "| tiny-mmdit-random[pool8,pca16] | global | linear |" in (root / "report" / "leaderboard.md").read_text()


def test_splits_with_different_projections_are_refused_and_a_missing_projection_is_named(reduced, tmp_path):
    root, train, test = reduced
    own = tmp_path / "own.h5"  # a test split that fitted its own PCA instead of reusing the training split's
    _run(EXTRACT + ["-s", "test", "--limit", "16", "--pool", "8", "--channels", "16", "--fit-samples", "16",
                    "-o", str(own)])
    res = CliRunner().invoke(cli, ["probe", "-f", str(train), "-E", str(own), "--fusion", "global", "--epochs", "1",
                                   "--out", str(tmp_path / "r"), "-q"])
    assert res.exit_code != 0 and "were stored differently (projection" in res.output
    assert "--projection-from" in res.output and not (tmp_path / "r").exists()
    plain = tmp_path / "plain.h5"
    _run(EXTRACT + ["-s", "train", "--limit", "2", "-o", str(plain)])
    res = CliRunner().invoke(cli, EXTRACT + ["-s", "test", "--limit", "2", "--channels", "16", "--projection-from",
                                             str(plain), "-o", str(tmp_path / "x.h5")])
    assert res.exit_code != 0 and "holds no channel projection to reuse" in res.output
    res = CliRunner().invoke(cli, EXTRACT + ["-s", "test", "--limit", "2", "--channels", "8", "--projection-from",
                                             str(train), "-o", str(tmp_path / "y.h5")])
    assert res.exit_code != 0 and "maps 128 channels to 16" in res.output and "asks for 8" in res.output
    assert not parts_dir(tmp_path / "x.h5").exists() and not parts_dir(tmp_path / "y.h5").exists()


def test_random_projection_and_bfloat16_storage(tmp_path):
    out = tmp_path / "r.h5"
    _run(EXTRACT + ["--limit", "3", "--channels", "8", "--projection", "random", "--store-dtype", "bfloat16",
                    "-o", str(out)])
    with FeatureReader(out) as r:
        assert r.feature_dtype == "bfloat16" and r.shape("t=100/layer=0") == (8, 16, 16)
        comp = r.projection("t=100/layer=0")["components"]
        np.testing.assert_allclose(comp @ comp.T, np.eye(8), atol=1e-5)  # orthonormal rows
        assert np.isfinite(r.read("t=100/layer=0", [0, 2])).all()
        assert r.storage["label"] == "random8,bf16"


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "f.h5"
    res = _run(EXTRACT + ["--limit", "100", "--dry-run", "-o", str(out)])
    assert "plan: 100 images" in res.output and "t=600/layer=2" in res.output and "(128, 16, 16)" in res.output
    assert "free there" in res.output and "per image" in res.output
    assert not out.exists() and not parts_dir(out).exists()


def test_a_dry_run_over_a_file_of_other_settings_says_the_real_run_would_be_refused(tmp_path):
    out = tmp_path / "f.h5"
    _run(EXTRACT + ["--limit", "2", "-o", str(out)])
    assert "nothing would be done" in _run(EXTRACT + ["--limit", "2", "--dry-run", "-o", str(out)]).output
    res = CliRunner().invoke(cli, EXTRACT + ["--limit", "2", "--pool", "4", "--dry-run", "-o", str(out)])
    assert res.exit_code != 0 and "made with other settings" in res.output and str(out) in res.output
    assert "Traceback" not in res.output
    # an interrupted run of other settings is named too
    out.unlink()
    parts_dir(out).mkdir(exist_ok=True)
    (parts_dir(out) / "run.json").write_text("{}")
    res = CliRunner().invoke(cli, EXTRACT + ["--limit", "2", "--dry-run", "-o", str(out)])
    assert res.exit_code != 0 and "interrupted extraction with other settings" in res.output
    assert _run(EXTRACT + ["--limit", "2", "--dry-run", "--overwrite", "-o", str(out)])


def test_a_run_that_would_not_fit_the_disk_is_refused_before_the_first_forward(tmp_path, monkeypatch):
    import probekit.extractors.runner as runner

    monkeypatch.setattr(runner, "free_bytes", lambda path: 10 << 20)  # 10 MiB free
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(cli, EXTRACT + ["--limit", "200", "-o", str(out)])
    assert res.exit_code != 0
    assert "needs" in res.output and "only 10.0 MiB is free" in res.output and "Nothing was written" in res.output
    assert "--pool" in res.output or "--channels" in res.output  # names the options that would make it fit
    assert "--limit" in res.output
    assert not out.exists() and not parts_dir(out).exists()
    # What fits goes ahead.
    _run(EXTRACT + ["--limit", "4", "--pool", "4", "-o", str(out)])


def test_drop_massive_removes_the_channels_of_largest_mean_activation_and_val_reuses_them(tiny_models, tmp_path):
    """--drop-massive K: the K channels dropped per map are those of largest mean |x| over the first fit images'
    tokens (checked against a plain extraction), named in the file, and reused for another split."""
    import numpy as np

    from probekit.datasets.shapeworld import ShapeWorld
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
    from probekit.extractors.runner import extract_dataset
    from probekit.extractors.storage import StorageOptions
    from probekit.store import FeatureReader

    ds = ShapeWorld("train", image_size=32, size=6)
    ex = DiffusersDiTExtractor(tiny_models["sd3"], timesteps=[300], layers=[1], device="cpu")
    plain = extract_dataset(ex, ds, tmp_path / "plain.h5", progress=False,
                            storage=StorageOptions(dtype="float32"))
    dropped = extract_dataset(ex, ds, tmp_path / "drop.h5", progress=False,
                              storage=StorageOptions(dtype="float32", drop_massive=3, fit_samples=4))
    key = "t=300/layer=1"
    with FeatureReader(plain) as r:
        full = r.read(key, range(6))
    mean_abs = np.abs(full[:4]).mean(axis=(0, 2, 3))
    expected_drop = sorted(np.argsort(-mean_abs)[:3].tolist())
    keep = [c for c in range(full.shape[1]) if c not in expected_drop]
    with FeatureReader(dropped) as r:
        assert r.shape(key) == (full.shape[1] - 3, 16, 16)
        info = r.storage["projection"]
        assert info["method"] == "drop-massive" and info["k"] == 3
        assert sorted(d["channel"] for d in info["dropped"][key]) == expected_drop
        np.testing.assert_allclose(r.read(key, range(6)), full[:, keep], rtol=1e-5, atol=1e-5)
        assert r.storage["label"] == "drop3,fp32"
    test = ShapeWorld("test", image_size=32, size=2)
    val = extract_dataset(ex, test, tmp_path / "test.h5", progress=False,
                          storage=StorageOptions(dtype="float32", drop_massive=3, projection_from=str(dropped)))
    with FeatureReader(val) as r, FeatureReader(dropped) as t:
        assert r.storage["projection"]["sha256"] == t.storage["projection"]["sha256"]
