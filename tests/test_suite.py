"""`probekit run SUITE`: two tiny backbones x two tasks end to end; a rerun does no work; an interrupted suite
resumes; a failing step is reported while the others go on; bad suite files get named errors."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from click.testing import CliRunner

import fault_inject
from probekit.cli import cli
from probekit.errors import ProbekitError
from probekit.pipelines.suite import load_suite, parse_suite

SUITE = {
    "suite": "tiny", "version": 1, "seed": 0,
    "training": {"epochs": 2, "lrs": [0.01, 0.03], "batch_size": 8},
    "datasets": {"shapeworld": {"train": {"split": "train", "limit": 24}, "eval": {"split": "test", "limit": 8}}},
    "extractors": {
        "tiny-mmdit-random": {"timesteps": [100, 600], "layers": [0, 2], "device": "cpu", "batch_size": 8},
        "pixels": {"device": "cpu"},
    },
    "combine": [{"name": "both", "of": ["tiny-mmdit-random", "pixels"], "probes": "fused"}],
    "probe_sets": {
        "default": [{"fusion": "single", "each_map": True, "tasks": ["seg"]},
                    {"fusion": "single", "best_map_of": "seg", "tasks": ["saliency"]},
                    {"fusion": "global", "tasks": ["seg", "saliency"], "seeds": 2}],
        "fused": [{"fusion": "concat", "tasks": ["seg"]}],
    },
}


def _write(path, suite):
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _run(*args):
    res = CliRunner().invoke(cli, ["run", *map(str, args), "-q"])
    return res


@pytest.mark.slow
def test_a_suite_of_two_backbones_runs_end_to_end_and_a_rerun_does_no_work(tmp_path):
    suite = _write(tmp_path / "tiny.yaml", SUITE)
    out = tmp_path / "out"
    res = _run(suite, "--out", out)
    assert res.exit_code == 1 and "2 step(s) failed" in res.output, res.output  # see below: the rest is done
    records = [json.loads(p.read_text()) for p in (out / "results").rglob("result.json")]
    by = {(r["extractor"], r["task"], r["probe"]["name"]) for r in records}
    # tiny: 4 single maps (seg), best map (saliency), global (seg, saliency); pixels: 1 map, its best, but a
    # global fusion of one map is refused: reported, the others go on; the combined files: concat (seg)
    assert ("tiny-mmdit-random", "seg", "linear-global") in by and ("pixels", "seg", "linear-single-l0") in by
    assert ("tiny-mmdit-random+pixels", "seg", "linear-concat") in by
    assert sum(1 for r in records if r["extractor"] == "tiny-mmdit-random" and r["probe"]["fusion"] == "single"
               and r["task"] == "seg") == 4
    glob = next(r for r in records if r["extractor"] == "tiny-mmdit-random" and r["probe"]["name"] == "linear-global"
                and r["task"] == "seg")
    assert glob["seeds"] == [0, 1] and glob["config"]["epochs"] == 2 and glob["config"]["lrs"] == [0.01, 0.03]
    # pixels has one map: its two global fusions are refused with a sentence; the other steps went on
    assert "global fusion learns weights over several maps" in res.output and "suite tiny: 2 failed, 15 ran" in res.output
    assert (out / "report" / "report.html").is_file() and "| tiny-mmdit-random |" in res.output
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("result.json")}
    again = _run(suite, "--out", out)
    # nothing extracted or trained again: the two refused fusions are tried again, and the report after them
    assert "suite tiny: 14 done, 2 failed, 1 ran" in again.output, again.output
    assert {p: p.stat().st_mtime_ns for p in (out / "results").rglob("result.json")} == mtimes
    dry = _run(suite, "--out", out, "--dry-run")
    # only the two refused fusions are not done, and the plan says they would fail (another label's global run
    # is not pixels'): the dry run exits 1
    failed = [line.strip() for line in dry.output.splitlines() if "[ failed]" in line or "[pending]" in line]
    assert dry.exit_code == 1 and failed == [
        f"[ failed] probe pixels shapeworld {task} linear-global x2 seeds  (global fusion learns weights over several "
        "maps, and pixels offers one (layer=0); probe it with fusion: single)" for task in ("seg", "saliency")], dry.output
    assert "to write: 0 B of features" in dry.output and "2 cell(s) would fail" in dry.output
    # Results made with other settings are not "done": the run would replace them, and the plan says so.
    other = _write(tmp_path / "other.yaml", {**SUITE, "training": {**SUITE["training"], "own_loss_weights": [1.0]}})
    dry = _run(other, "--out", out, "--dry-run")
    stale = [line.strip() for line in dry.output.splitlines() if "[  stale]" in line]
    assert stale == [f"[  stale] probe tiny-mmdit-random shapeworld {task} linear-global x2 seeds  (results of other "
                     "settings (own_loss_weights): the run replaces them)" for task in ("seg", "saliency")], dry.output
    # single maps have no read-outs: their runs are done, and so are the map choices made from them
    assert "[pending]" not in dry.output and dry.output.count("[   done]") == 17 - 2 - 2, dry.output


@pytest.mark.slow
def test_a_suite_killed_during_extraction_resumes(tmp_path):
    suite = dict(SUITE, extractors={"tiny-mmdit-random": {**SUITE["extractors"]["tiny-mmdit-random"], "shard_size": 8}},
                 combine=[])
    path = _write(tmp_path / "tiny.yaml", suite)
    out = tmp_path / "out"
    argv, env = fault_inject.command("writer-batch:2", "run", path, "--out", out, "-q")
    proc = subprocess.run(argv, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed in the middle of the first extraction
    parts = out / "features" / "tiny-mmdit-random" / "shapeworld" / "train.h5.parts"
    assert parts.is_dir() and not (out / "results").exists()
    dry = _run(path, "--out", out, "--dry-run")
    assert "1 of 3 shards done" in dry.output
    res = _run(path, "--out", out)
    assert res.exit_code == 0, res.output
    assert len(list((out / "results").rglob("result.json"))) == 4 + 1 + 2


def test_the_shipped_suites_parse_and_the_demo_is_one_of_them():
    demo = load_suite("demo")
    assert set(demo.extractors) == {"shapeworld-mmdit", "shapeworld-mmdit-random"}
    mmdiff = load_suite("mmdiff")
    assert set(mmdiff.datasets) == {"ade20k", "voc2012", "duts", "nyuv2"}
    assert mmdiff.combine[0]["of"] == ["flux-dev", "dinov3-vitb16"]


@pytest.mark.parametrize("change, words", [
    (lambda s: s["extractors"]["pixels"].update(timestep=[5]), "unknown key 'timestep' in extractors.pixels; did "
                                                               "you mean 'timesteps'?"),
    (lambda s: s.update(extractor={}), "unknown key 'extractor' in the suite; did you mean 'extractors'?"),
    (lambda s: s["extractors"].update({"dino": {"extractor": "dinov3-vitb"}}), "unknown extractor 'dinov3-vitb'"),
    (lambda s: s["probe_sets"]["default"].append({"fusion": "globl", "tasks": ["seg"]}), "unknown fusion 'globl'"),
    (lambda s: s["probe_sets"]["default"].append({"fusion": "global"}), "needs 'tasks'"),
    (lambda s: s["probe_sets"]["default"].append({"fusion": "single", "tasks": ["seg"]}),
     "needs exactly one of each_map"),
    (lambda s: s["extractors"]["pixels"].update(probes="defualt"), "probe set 'defualt', which is not defined; did "
                                                                   "you mean 'default'?"),
    (lambda s: s["combine"].append({"name": "x", "of": ["pixels", "dino"]}), "names extractor 'dino'"),
    (lambda s: s["datasets"]["shapeworld"].pop("eval"), "datasets.shapeworld needs 'eval'"),
])
def test_a_bad_suite_gets_a_named_error(tmp_path, change, words):
    suite = json.loads(json.dumps(SUITE))
    change(suite)
    with pytest.raises(ProbekitError) as exc:
        parse_suite(suite, "tiny.yaml")
    assert words in str(exc.value) and "tiny.yaml" in str(exc.value)
    res = _run(_write(tmp_path / "bad.yaml", suite))
    assert res.exit_code == 1 and words in res.output and "Traceback" not in res.output


def test_an_unknown_suite_name_suggests_the_shipped_ones():
    res = _run("dmo")
    assert res.exit_code == 1 and "did you mean 'demo'" in res.output


@pytest.mark.slow
def test_labels_name_the_results_and_a_dry_run_plans_projected_splits_before_train_exists(tmp_path):
    # Two labels over one registered extractor (two weight folders of `dit`, say) must not share runs; a projected
    # extractor's val split reuses the training split's projection, which a first dry run cannot read yet.
    one = {"extractor": "tiny-mmdit-random", "timesteps": [100], "layers": [0], "device": "cpu", "batch_size": 8}
    suite = {
        "suite": "labels", "version": 1, "seed": 0, "training": {"epochs": 1, "lrs": [0.01], "batch_size": 8},
        "datasets": {"shapeworld": {"train": {"split": "train", "limit": 16}, "val": {"split": "val", "limit": 8},
                                    "eval": {"split": "test", "limit": 8}}},
        "extractors": {"a": one, "b": {**one, "layers": [2], "channels": 4}},
        "probe_sets": {"default": [{"fusion": "single", "keys": [], "each_map": True, "tasks": ["seg"]}]},
    }
    suite["probe_sets"]["default"][0].pop("keys")
    path = _write(tmp_path / "labels.yaml", suite)
    out = tmp_path / "out"
    dry = _run(path, "--out", out, "--dry-run")
    assert dry.exit_code == 0 and "[ failed]" not in dry.output, dry.output
    assert "does not exist yet" in dry.output  # b's val and eval: the projection comes from b's train file
    res = _run(path, "--out", out)
    assert res.exit_code == 0, res.output
    names = {json.loads(p.read_text())["extractor"] for p in (out / "results").rglob("result.json")}
    assert names == {"a", "b[pca4]"}


def test_a_null_validation_split_means_none():
    suite = json.loads(json.dumps(SUITE))
    suite["datasets"]["shapeworld"]["val"] = None
    parsed = parse_suite(suite, "tiny.yaml")
    assert "val" not in parsed.datasets["shapeworld"]


def test_the_best_map_is_chosen_on_the_seeds_every_map_was_probed_with():
    from probekit.pipelines.cells import best_keys as _best_keys

    def rec(key, vals):
        return {"higher_is_better": True, "probe": {"feature_keys": [key]}, "seeds": list(range(len(vals))),
                "per_seed": [{"seed": i, "val_score": v} for i, v in enumerate(vals)],
                "config": {"val_score": vals[0]}}

    # b was the best map on seed 0 and its run was then extended to three seeds (mean 0.45): a rerun of the
    # suite must still choose b, not a (0.50) because b's mean over more seeds is lower.
    recs = [rec("a", [0.50]), rec("b", [0.52, 0.41, 0.42])]
    assert _best_keys(recs, [0]) == ["b"]
    assert _best_keys([rec("a", [0.50])], [3]) is None


def test_the_documented_schema_example_is_a_valid_suite():
    import re
    from pathlib import Path

    from probekit.pipelines.suite_schema import Launcher

    text = (Path(__file__).resolve().parents[1] / "docs" / "suites.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    full = [b for b in blocks if "datasets" in b]
    assert len(full) == 1 and parse_suite(full[0], "docs/suites.md").launcher == {"name": "local", "jobs": 2}
    assert all(Launcher.model_validate(b["launcher"]) for b in blocks if "datasets" not in b)


def test_a_suite_file_with_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("suite: twice\ntraining:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ProbekitError, match=r"twice.yaml: training gives key 'epochs' twice \(lines 3 and 4\)"):
        load_suite(path)
    # YAML 1.1 reads 1e-3 as a string: a rate written so is the number it plainly is
    path.write_text(yaml.safe_dump({**SUITE, "training": {}}, sort_keys=False).replace("training: {}",
                                                                                      "training: {lrs: [1e-3, 3e-2]}"))
    assert load_suite(path).training == {"lrs": [0.001, 0.03]}
    path.write_text(yaml.safe_dump({**SUITE, "training": {"epochs": "two", "lrs": [0.01, -1]}}, sort_keys=False))
    with pytest.raises(ProbekitError) as exc:  # every problem at once, each with its line
        load_suite(path)
    assert "2 problems" in str(exc.value) and "line 5: training.epochs: must be a valid integer, got 'two'" in str(
        exc.value) and "training.lrs[1]: must be greater than 0, got -1" in str(exc.value)
