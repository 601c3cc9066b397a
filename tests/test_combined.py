"""Combined feature files: aligned by sample id, resampled to one grid, refused when they do not belong together."""

import numpy as np
import pytest
import torch.nn.functional as F
import torch
from click.testing import CliRunner

from probekit.cli import cli
from probekit.combined import CombinedReader
from probekit.errors import FeatureFileError
from probekit.store import write_features
from helpers import REF, informative
from helpers import labels as _labels


def _write(path, split, n, key, grid, extractor, seed, order=None, size=None):
    rng = np.random.default_rng(seed)
    seg, depth, sal = _labels(rng, n)
    onehot = np.eye(3, dtype=np.float32)[seg[:, ::2, ::2]].transpose(0, 3, 1, 2)
    feats = informative(onehot, rng)
    if grid != 8:
        feats = F.adaptive_avg_pool2d(torch.from_numpy(feats), grid).numpy()
    rows = list(range(n)) if order is None else order
    ids = [f"synthetic/{split}/{i:06d}" for i in rows]
    ref = {**REF, "split": split, **({"size": size} if size else {})}
    return write_features(path, {key: feats[rows]}, {"seg": seg[rows], "depth": depth[rows], "saliency": sal[rows]},
                          ids, indices=rows,
                          attrs={"extractor": extractor, "dataset": ref, "provenance": {"extractor": {"e": extractor}}})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("combined")
    out = {}
    for split, n, seed in (("train", 32, 0), ("test", 16, 2)):
        a = _write(root / f"a-{split}.h5", split, n, "t=100/layer=2", 8, "dit", seed)
        # Same samples, stored in another order, on a coarser grid, by another extractor.
        order = list(reversed(range(n)))
        b = _write(root / f"b-{split}.h5", split, n, "layer=5", 4, "dino", seed, order=order)
        out[split] = (a, b)
    return root, out


def test_samples_are_aligned_by_id_and_keys_name_their_source(pair):
    _, files = pair
    with CombinedReader(files["train"]) as r:
        assert r.keys == ["src=dit/t=100/layer=2", "src=dino/layer=5"]
        assert r.shape("src=dit/t=100/layer=2") == (3, 8, 8) and r.shape("src=dino/layer=5") == (3, 4, 4)
        batch = next(r.batches(r.keys, 5, labels=["seg"], shuffle=True, seed=1))
        # File b stores sample i at row n-1-i; the combined view must undo that.
        from probekit.store import FeatureReader

        with FeatureReader(files["train"][1]) as b:
            expected = b.read("layer=5", [31 - p for p in batch["positions"]])
        np.testing.assert_array_equal(batch["features"]["src=dino/layer=5"], expected)
        assert r.attr("extractor") == "dit+dino"


def test_concat_probe_on_combined_backbones_via_cli(pair):
    root, files = pair
    args = ["probe", "-f", str(files["train"][0]), "-f", str(files["train"][1]),
            "-E", str(files["test"][0]), "-E", str(files["test"][1]), "--fusion", "concat", "--epochs", "15",
            "--lrs", "3e-2", "--results-root", str(root / "results"), "-q"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    import json

    rec = json.loads((root / "results" / "dit+dino" / "synthetic" / "seg" / "linear-concat" / "result.json").read_text())
    assert rec["probe"]["feature_keys"] == ["src=dit/t=100/layer=2", "src=dino/layer=5"]
    assert rec["main_score"] > 0.8
    assert set(rec["features"]["train"]["provenance"]["extractor"]) == {"dit", "dino"}


def test_files_that_do_not_belong_together_are_refused(pair, tmp_path):
    _, files = pair
    with pytest.raises(FeatureFileError, match="differ in dataset split"):
        CombinedReader([files["train"][0], files["test"][1]])
    fewer = _write(tmp_path / "fewer.h5", "train", 30, "layer=5", 4, "dino", 0)
    with pytest.raises(FeatureFileError, match=r"different sample sets; e.g. synthetic/train/000030 only in the first"):
        CombinedReader([files["train"][0], fewer])
    other = _write(tmp_path / "other.h5", "train", 32, "layer=5", 4, "dino", 0, size=999)
    with CombinedReader([files["train"][0], other]):
        pass  # same samples and dataset: fine even if the split-size bookkeeping differs
