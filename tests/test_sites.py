"""Capture sites through the CLI: several sites of one forward stored under their own keys, then probed one site
at a time or fused across sites and timesteps, with the sites recorded."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from probekit.cli import cli
from probekit.store import FeatureReader

KEYS = ["t=100/layer=1", "t=100/site=norm1/layer=1", "t=100/site=mlp/layer=1",
        "t=600/layer=1", "t=600/site=norm1/layer=1", "t=600/site=mlp/layer=1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    out = {}
    for split, n in (("train", 12), ("test", 6)):
        out[split] = root / f"{split}.h5"
        res = CliRunner().invoke(cli, ["extract", "-e", "tiny-mmdit-random", "--split", split, "-t", "100,600", "-l",
                                       "1", "--sites", "output,norm1,mlp", "--limit", str(n), "--device", "cpu",
                                       "--out", str(out[split]), "-q"])
        assert res.exit_code == 0, res.output
    return root, out


def test_sites_are_stored_under_their_own_keys_and_recorded(files):
    _, out = files
    with FeatureReader(out["train"]) as r:
        assert r.keys == KEYS
        assert r.provenance["extractor"]["sites"] == ["output", "norm1", "mlp"]
        out_map, norm_map = r.read("t=100/layer=1", [0]), r.read("t=100/site=norm1/layer=1", [0])
        assert out_map.shape == norm_map.shape and not np.allclose(out_map, norm_map)


def test_probe_one_site_or_fuse_across_sites(files):
    root, out = files
    runner = CliRunner()
    base = ["probe", "-f", str(out["train"]), "-E", str(out["test"]), "--epochs", "1", "--lrs", "0.01", "-q",
            "--device", "cpu"]
    res = runner.invoke(cli, [*base, "--timestep", "100", "--layer", "1", "--site", "norm1", "-o", str(root / "one")])
    assert res.exit_code == 0, res.output
    record = json.loads((root / "one" / "result.json").read_text())
    assert record["probe"]["feature_keys"] == ["t=100/site=norm1/layer=1"]
    res = runner.invoke(cli, [*base, "--fusion", "global", "--site", "mlp", "-o", str(root / "mlp")])
    assert res.exit_code == 0, res.output
    record = json.loads((root / "mlp" / "result.json").read_text())
    assert record["probe"]["feature_keys"] == ["t=100/site=mlp/layer=1", "t=600/site=mlp/layer=1"]
    res = runner.invoke(cli, [*base, "--fusion", "global", "-o", str(root / "all")])
    assert res.exit_code == 0, res.output
    fw = json.loads((root / "all" / "result.json").read_text())["probe"]["fusion_weights"]
    assert fw["layers"] == ["1", "1/norm1", "1/mlp"] and fw["timesteps"] == [100, 600]
    assert all(v is not None for row in fw["matrix"] for v in row)
    assert sum(fw["per_key"].values()) == pytest.approx(1.0)
    res = runner.invoke(cli, [*base, "--fusion", "global", "--site", "attn", "-o", str(root / "none")])
    assert res.exit_code != 0 and "no maps of capture site 'attn'" in res.output


def test_a_site_a_block_does_not_have_is_refused_naming_why(tmp_path):
    from helpers import make_tiny

    from probekit.errors import ProbekitError
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    folder = make_tiny("pixart", tmp_path / "pixart")
    with pytest.raises(ProbekitError, match="no capture site 'norm1' .*modulate the normalised input"):
        DiffusersDiTExtractor(folder, layers=[0], sites=["norm1"], device="cpu")
    res = CliRunner().invoke(cli, ["extract", "-e", "tiny-mmdit-random", "--sites", "residual", "--out",
                                   str(tmp_path / "x.h5")])
    assert res.exit_code == 2 and "choose from output, norm1, attn, mlp" in res.output
