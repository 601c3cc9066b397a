"""probekit generate on a tiny MM-DiT with heads trained on its features."""

import numpy as np
import pytest
from click.testing import CliRunner

from probekit.cli import cli
from probekit.datasets import load_dataset
from probekit.errors import ProbekitError
from probekit.pipelines import generate as gen
from helpers import make_tiny_shapeworld_mmdit


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    folder = make_tiny_shapeworld_mmdit(root / "model", num_layers=2, seed=3)
    runner = CliRunner()
    for split, n in (("train", 8), ("test", 4)):
        res = runner.invoke(cli, ["extract", "-e", "dit", "--weights", str(folder), "--split", split, "--limit",
                                  str(n), "--timesteps", "300,700", "--layers", "0,1", "--device", "cpu",
                                  "--out", str(root / f"{split}.h5"), "-q"])
        assert res.exit_code == 0, res.output
    heads = {}
    for task, extra in (("seg", ["--timestep", "300", "--layer", "1"]), ("depth", ["--fusion", "global"]),
                        ("saliency", ["--fusion", "spatial"])):
        heads[task] = root / f"head-{task}"
        res = runner.invoke(cli, ["probe", "-f", str(root / "train.h5"), "-E", str(root / "test.h5"), "--task", task,
                                  "--epochs", "1", "--lrs", "1e-2", "--out", str(heads[task]), "-q", *extra])
        assert res.exit_code == 0, res.output
    return root, folder, heads


def test_generated_dataset_loads_through_the_registry_with_sane_labels(setup, tmp_path):
    root, folder, heads = setup
    out = tmp_path / "synthetic"
    res = CliRunner().invoke(cli, ["generate", "--weights", str(folder), "-H", str(heads["seg"]), "-H",
                                   str(heads["depth"]), "-H", str(heads["saliency"]), "--n", "5", "--steps", "4",
                                   "--batch-size", "2", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "images/s" in res.output
    ds = load_dataset(str(out), "train")
    assert len(ds) == 5
    s = ds[4]
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert s.seg.shape == (64, 64) and s.seg.max() < 7
    assert s.depth.dtype == np.float32 and 0 <= s.depth.min() and s.depth.max() <= 50.0
    assert set(np.unique(s.saliency)) <= {0, 1} and s.caption
    snapped = ds.manifest["snapped_timesteps"]
    assert set(snapped) == {"300", "700"} and all(0 <= v["step"] < 4 for v in snapped.values())
    # The generated folder works as a dataset for extraction, like any other.
    res = CliRunner().invoke(cli, ["extract", "-e", "dit", "--weights", str(folder), "--dataset", str(out),
                                   "--timesteps", "300", "--layers", "1", "--device", "cpu", "--out",
                                   str(tmp_path / "g.h5"), "-q"])
    assert res.exit_code == 0, res.output


def test_interrupted_generation_resumes_without_duplicates(setup, tmp_path, monkeypatch):
    root, folder, heads = setup
    straight = gen.generate_dataset(folder, [heads["seg"]], tmp_path / "a", n=5, steps=3, batch_size=2,
                                    progress=False)
    assert straight["generated"] == 5
    real_write, calls = gen._write_sample, []

    def crash_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[1])
        real_write(*args, **kwargs)

    monkeypatch.setattr(gen, "_write_sample", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_dataset(folder, [heads["seg"]], tmp_path / "b", n=5, steps=3, batch_size=2, progress=False)
    monkeypatch.setattr(gen, "_write_sample", real_write)
    resumed = gen.generate_dataset(folder, [heads["seg"]], tmp_path / "b", n=5, steps=3, batch_size=2,
                                   progress=False)
    assert resumed["skipped"] == 3 and resumed["generated"] == 2
    a, b = load_dataset(str(tmp_path / "a"), "train"), load_dataset(str(tmp_path / "b"), "train")
    assert len(b) == 5 and sorted(p.name for p in (tmp_path / "b" / "images").iterdir()) == [
        f"{i:06d}.png" for i in range(5)]
    for i in range(5):
        assert np.abs(a[i].image.astype(int) - b[i].image.astype(int)).max() <= 1
    with pytest.raises(ProbekitError, match="other settings"):
        gen.generate_dataset(folder, [heads["seg"]], tmp_path / "b", n=5, steps=4, batch_size=2, progress=False)
