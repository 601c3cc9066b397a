"""The CLI through click's CliRunner: extract -> probe -> report on a few ShapeWorld images."""

import json

import click
import pytest
from click.testing import CliRunner

from probekit.cli import cli, parse_int_list
from probekit.store import FeatureReader


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    runner = CliRunner()
    paths = {}
    for split, n in (("train", 12), ("test", 6)):
        paths[split] = root / f"{split}.h5"
        res = runner.invoke(cli, ["extract", "--extractor", "tiny-mmdit-random", "--dataset", "shapeworld",
                                  "--split", split, "--timesteps", "100,600", "--layers", "0,2", "--limit", str(n),
                                  "--batch-size", "4", "--device", "cpu", "--out", str(paths[split]), "-q"])
        assert res.exit_code == 0, res.output
        assert "RANDOMLY INITIALISED" in res.output
    return root, paths


def test_extract_writes_the_requested_grid(features):
    _, paths = features
    with FeatureReader(paths["train"]) as r:
        assert r.num_samples == 12
        assert r.keys == ["t=100/layer=0", "t=100/layer=2", "t=600/layer=0", "t=600/layer=2"]
        assert r.sample_ids[0] == "shapeworld/train/000000"
        assert r.provenance["run"]["limit"] == 12


def test_probe_then_report(features):
    root, paths = features
    runner = CliRunner()
    for t in (100, 600):
        res = runner.invoke(cli, ["probe", "--features", str(paths["train"]), "--eval-features", str(paths["test"]),
                                  "--task", "seg", "--timestep", str(t), "--layer", "2", "--head", "linear",
                                  "--epochs", "2", "--results-root", str(root / "results"), "-q"])
        assert res.exit_code == 0, res.output
        assert "seg mIoU" in res.output
    run = root / "results" / "tiny-mmdit-random" / "shapeworld" / "seg" / "linear-single-t100-l2"
    record = json.loads((run / "result.json").read_text())
    assert record["schema_version"] == 2 and record["main_score_name"] == "mIoU" and record["higher_is_better"]
    assert record["metrics_info"]["mIoU"] == {"higher_is_better": True, "unit": "fraction"}
    assert 0 <= record["main_score"] <= 1 and set(record["metrics"]["per_class_iou"]) >= {"background", "circle"}
    assert record["config"]["seed"] == 0 and record["seeds"] == [0] and record["config"]["epochs"] == 2
    assert record["features"]["train"]["provenance"]["extractor"]["timesteps"] == [100, 600]
    assert record["probe"]["feature_keys"] == ["t=100/layer=2"] and record["wall_time_s"] > 0
    assert (run / "head.safetensors").is_file()

    # A second run onto the same directory is refused, skipped or replaced on request.
    args = ["probe", "-f", str(paths["train"]), "-E", str(paths["test"]), "--timestep", "100", "--layer", "2",
            "--epochs", "1", "--out", str(run), "-q"]
    res = runner.invoke(cli, args)
    assert res.exit_code != 0 and "already exists" in res.output
    assert "skipped" in runner.invoke(cli, args + ["--skip-existing"]).output
    assert runner.invoke(cli, args + ["--overwrite"]).exit_code == 0
    assert json.loads((run / "result.json").read_text())["config"]["epochs"] == 1

    res = runner.invoke(cli, ["report", str(root / "results"), "--out", str(root / "report")])
    assert res.exit_code == 0, res.output
    md = (root / "report" / "results.md").read_text()
    assert md.count("| tiny-mmdit-random |") == 2 and "| 600 |" in md
    csv = (root / "report" / "results.csv").read_text().splitlines()
    assert len(csv) == 3 and csv[0].startswith("extractor,dataset,task")


def test_probe_refuses_same_samples_for_train_and_eval(features):
    _, paths = features
    res = CliRunner().invoke(cli, ["probe", "-f", str(paths["train"]), "-E", str(paths["train"]),
                                   "--timestep", "100", "--layer", "0", "--out", "unused", "-q"])
    assert res.exit_code != 0 and "share 12 samples" in res.output


def test_probe_names_missing_feature_and_unknown_head(features):
    _, paths = features
    runner = CliRunner()
    res = runner.invoke(cli, ["probe", "-f", str(paths["train"]), "-E", str(paths["test"]), "--timestep", "999",
                              "--layer", "0", "-q"])
    assert res.exit_code != 0 and "no feature 't=999/layer=0'" in res.output and "t=100/layer=0" in res.output
    res = runner.invoke(cli, ["probe", "-f", str(paths["train"]), "-E", str(paths["test"]), "--timestep", "100",
                              "--layer", "0", "--head", "linaer", "-q"])
    assert res.exit_code != 0 and "Did you mean: linear" in res.output


def test_unknown_extractor_and_dataset_are_named(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["extract", "-e", "tiny-mmdit", "--out", str(tmp_path / "x.h5")])
    assert res.exit_code != 0 and "unknown extractor 'tiny-mmdit'" in res.output
    assert "Did you mean: tiny-mmdit-random" in res.output
    res = runner.invoke(cli, ["extract", "-e", "tiny-mmdit-random", "-d", "shapewrld", "--out", str(tmp_path / "x.h5"),
                              "--device", "cpu"])
    assert res.exit_code != 0 and "Did you mean: shapeworld" in res.output
    assert not (tmp_path / "x.h5").exists()


def test_ls_lists_every_registry():
    out = CliRunner().invoke(cli, ["ls"]).output
    for word in ("extractors:", "tiny-mmdit-random", "datasets:", "shapeworld", "tasks:", "seg", "heads:", "linear"):
        assert word in out


def test_int_lists():
    assert parse_int_list("100,300") == [100, 300]
    assert parse_int_list("0:1000:250") == [0, 250, 500, 750]
    assert parse_int_list("0:500:250, 900, 250") == [0, 250, 900]
    with pytest.raises(click.BadParameter, match="'a' is not an integer"):
        parse_int_list("a,b")


@pytest.mark.parametrize("scene, words", [("objects_per_image", "KEY=LOW,HIGH"),
                                          ("colour=1,2", "no setting colour")])
def test_train_backbone_refuses_a_bad_scene_before_training(tmp_path, scene, words):
    res = CliRunner().invoke(cli, ["train-backbone", "--out", str(tmp_path / "run"), "--steps", "1",
                                   "--scene", scene, "-q"])
    assert res.exit_code != 0 and words in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_train_backbone_refuses_a_width_the_heads_cannot_split_before_training(tmp_path):
    res = CliRunner().invoke(cli, ["train-backbone", "--out", str(tmp_path / "run"), "--steps", "1",
                                   "--width", "100", "-q"])
    assert res.exit_code != 0 and "multiple of the head size 32" in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_every_command_has_help_and_none_imports_torch_for_it():
    import subprocess
    import sys

    code = """
import sys
import click
from click.testing import CliRunner
from probekit.cli import cli

def walk(group, path):
    for name, cmd in group.commands.items():
        yield path + [name], cmd
        if isinstance(cmd, click.Group):
            yield from walk(cmd, path + [name])

names = []
for path, cmd in walk(cli, []):
    res = CliRunner().invoke(cli, path + ["--help"])
    assert res.exit_code == 0, (path, res.output)
    assert (cmd.help or "").strip() and "Usage:" in res.output, path
    names.append(" ".join(path))
assert "torch" not in sys.modules, "a --help imported torch"
print(len(names), sorted(names))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count = int(out.stdout.split()[0])
    assert count >= 13 and "'run'" in out.stdout and "'data check'" in out.stdout
