"""Every mistake a user can make at the command line gets a sentence, not a traceback, and leaves nothing behind
(a table of cases); non-finite values are refused at every stage (writer, extraction, training, evaluation,
record)."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from probekit.cli import cli
from probekit.errors import ProbekitError
from probekit.extractors.shards import parts_dir
from probekit.store import FeatureReader

EXTRACT = ["extract", "-e", "tiny-mmdit-random", "-t", "100,600", "-l", "0,2", "-q", "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    runner = CliRunner()
    for split, n in (("train", 24), ("test", 8)):
        res = runner.invoke(cli, EXTRACT + ["-s", split, "--limit", str(n), "-o", str(root / f"{split}.h5")])
        assert res.exit_code == 0, res.output
    # An unfinished extraction: its parts folder, no index.
    res = runner.invoke(cli, EXTRACT + ["-s", "val", "--limit", "8", "--shard-size", "4", "--part", "0/2",
                                        "-o", str(root / "unfinished.h5")])
    assert res.exit_code == 0, res.output
    (root / "a-file").write_text("not a folder")
    # A run folder whose record is damaged, beside a good one.
    res = runner.invoke(cli, ["probe", "-f", str(root / "train.h5"), "-E", str(root / "test.h5"), "--timestep",
                              "100", "--layer", "0", "--epochs", "1", "--lrs", "1e-2", "--results-root",
                              str(root / "results"), "-q", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    bad = root / "results" / "broken" / "result.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"schema_version": 2, "task": "seg",')
    # An interrupted run whose plan file was damaged.
    (root / "damaged.h5.parts").mkdir()
    (root / "damaged.h5.parts" / "run.json").write_text("{not json")
    # Records whose main score is not a number, or not finite (each alone in its folder).
    good = json.loads((next((root / "results").rglob("linear-single-*/result.json"))).read_text())
    for folder, score in (("text-score", '"high"'), ("nan-score", "NaN")):
        (root / folder / "run").mkdir(parents=True)
        text = json.dumps({**good, "main_score": "SCORE"}).replace('"main_score": "SCORE"', f'"main_score": {score}')
        (root / folder / "run" / "result.json").write_text(text)
    # Weights files a timm encoder cannot read.
    (root / "weights.txt").write_text("not weights\n")
    # A model folder with a truncated transformer checkpoint.
    weights = root / "truncated-model"
    shutil.copytree(_tiny_folder(), weights)
    ckpt = weights / "transformer" / "diffusion_pytorch_model.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    return root


def _tiny_folder():
    from probekit.api import build_extractor

    return build_extractor("tiny-mmdit-random", device="cpu").root


def _probe(root, *extra):
    return ["probe", "-f", str(root / "train.h5"), "-E", str(root / "test.h5"), "--timestep", "100", "--layer", "0",
            "-q", "--device", "cpu", *extra]


NO_GPU = not torch.cuda.is_available()
CASES = [
    # (case, command (from the fixture's root), words the message must contain, paths that must not exist)
    ("extract --limit 0", lambda r: EXTRACT + ["--limit", "0", "-o", str(r / "x.h5")], ["--limit", "x>=1"],
     ["x.h5", "x.h5.parts"]),
    ("extract --batch-size 0", lambda r: EXTRACT + ["--batch-size", "0", "-o", str(r / "x.h5")], ["--batch-size"],
     ["x.h5", "x.h5.parts"]),
    ("extract --shard-size 0", lambda r: EXTRACT + ["--shard-size", "0", "-o", str(r / "x.h5")], ["--shard-size"],
     ["x.h5", "x.h5.parts"]),
    ("extract --resolution 0", lambda r: EXTRACT + ["--resolution", "0", "-o", str(r / "x.h5")], ["--resolution"],
     ["x.h5", "x.h5.parts"]),
    ("extract --resolution 30", lambda r: EXTRACT + ["--resolution", "30", "--limit", "2", "-o", str(r / "x.h5")],
     ["not divisible by the patch size", "--resolution"], ["x.h5", "x.h5.parts"]),
    ("extract --ensemble 0", lambda r: EXTRACT + ["--ensemble", "0", "-o", str(r / "x.h5")], ["--ensemble"],
     ["x.h5"]),
    ("extract into a file's folder", lambda r: EXTRACT + ["--limit", "2", "-o", str(r / "a-file" / "x.h5")],
     ["--out", "cannot write"], []),
    ("extract truncated weights", lambda r: EXTRACT + ["-w", str(r / "truncated-model"), "--limit", "2", "-o",
                                                         str(r / "x.h5")],
     ["truncated-model", "cannot be loaded", "truncated"], ["x.h5", "x.h5.parts"]),
    ("merge a damaged plan", lambda r: ["merge", str(r / "damaged.h5")], ["run.json is not valid JSON"],
     ["damaged.h5"]),
    ("probe --epochs 0", lambda r: _probe(r, "--epochs", "0"), ["--epochs", "x>=1"], ["results/x"]),
    ("probe --epochs -1", lambda r: _probe(r, "--epochs", "-1"), ["--epochs"], []),
    ("probe --batch-size 0", lambda r: _probe(r, "--batch-size", "0"), ["--batch-size"], []),
    ("probe --lrs ''", lambda r: _probe(r, "--lrs", ""), ["--lrs", "holds no numbers"], []),
    ("probe --lrs -1", lambda r: _probe(r, "--lrs", "-1"), ["--lrs", "not a positive finite number"], []),
    ("probe --lrs nan", lambda r: _probe(r, "--lrs", "nan"), ["--lrs", "not a positive finite number"], []),
    ("probe --lrs twice", lambda r: _probe(r, "--lrs", "1e-2,1e-2"), ["--lrs lists a rate twice"], []),
    ("probe --seeds a", lambda r: _probe(r, "--seeds", "a"), ["--seeds", "not an integer"], []),
    ("probe global with one map", lambda r: _probe(r, "--fusion", "global"),
     ["--timestep/--layer pick the one map", "global fusion"], ["results/tiny-mmdit-random/shapeworld/seg/linear-global"]),
    ("probe an unfinished extraction", lambda r: ["probe", "-f", str(r / "unfinished.h5"), "-E", str(r / "test.h5"),
                                                  "-q"], ["not finished", "rerun the same `probekit extract`"], []),
    ("probe a missing file", lambda r: ["probe", "-f", str(r / "nope.h5"), "-E", str(r / "test.h5"), "-q"],
     ["nope.h5 does not exist"], []),
    ("probe into a file's folder", lambda r: _probe(r, "--out", str(r / "a-file" / "run")),
     ["cannot write", "a-file"], []),
    ("report into a file's folder", lambda r: ["report", str(r / "results" / "tiny-mmdit-random"), "--out",
                                               str(r / "a-file" / "rep")], ["cannot create the report folder"], []),
    ("report a damaged record", lambda r: ["report", str(r / "results"), "--out", str(r / "rep")],
     ["broken/result.json is not valid JSON", "--skip-invalid"], ["rep/report.html"]),
    ("leaderboard a damaged record", lambda r: ["leaderboard", str(r / "results")],
     ["broken/result.json", "--skip-invalid"], []),
    ("sample to an unknown format", lambda r: ["sample", "-p", "a red circle", "--n", "1", "-o", str(r / "s.xyz")],
     [".xyz is not an image format"], ["s.xyz"]),
    ("sample from an encoder", lambda r: ["sample", "-b", "dinov2-vits14", "-p", "x", "-o", str(r / "s.png")],
     ["'dinov2-vits14' is not a text-to-image model"], ["s.png"]),
    ("sample --steps 0", lambda r: ["sample", "-p", "x", "--steps", "0", "-o", str(r / "s.png")], ["--steps"],
     ["s.png"]),
    ("sample --guidance nan", lambda r: ["sample", "-p", "x", "--guidance", "nan", "-o", str(r / "s.png")],
     ["--guidance", "not a finite number"], ["s.png"]),
    ("sample --n 0", lambda r: ["sample", "-p", "x", "--n", "0", "-o", str(r / "s.png")], ["--n"], ["s.png"]),
    ("demo --n-train 0", lambda r: ["demo", "--n-train", "0", "--out", str(r / "demo")], ["--n-train"], ["demo"]),
    ("train-backbone --steps 0", lambda r: ["train-backbone", "--steps", "0", "--out", str(r / "tb")], ["--steps"],
     ["tb"]),
]
# Messages that once misled: weights a timm encoder cannot read, records whose score is not a number, two
# processes writing one output, a disk that fills up mid-write, Ctrl-C. Setup and exit codes: SETUP, EXIT below.
MESSAGE_CASES = [
    ("timm weights file missing", lambda r: ["extract", "-e", "dinov2-vits14", "-w", str(r / "nope.safetensors"),
                                             "--limit", "2", "-q", "-o", str(r / "x.h5")],
     ["--weights", "nope.safetensors: no such file"], ["x.h5", "x.h5.parts"]),
    ("timm weights not safetensors", lambda r: ["extract", "-e", "dinov2-vits14", "-w", str(r / "weights.txt"),
                                                "--limit", "2", "-q", "-o", str(r / "x.h5")],
     ["weights.txt is not a readable .safetensors file"], ["x.h5", "x.h5.parts"]),
    ("leaderboard a non-numeric main_score", lambda r: ["leaderboard", str(r / "text-score")],
     ["text-score/run/result.json", "main_score is 'high', not a number", "--skip-invalid"], []),
    ("leaderboard a NaN main_score", lambda r: ["leaderboard", str(r / "nan-score")],
     ["nan-score/run/result.json", "main_score is nan, not a finite number", "--skip-invalid"], []),
    ("report a NaN main_score", lambda r: ["report", str(r / "nan-score"), "--out", str(r / "rep-nan")],
     ["main_score is nan", "--skip-invalid"], ["rep-nan/report.html"]),
    ("extract into an output another process writes",
     lambda r: EXTRACT + ["--limit", "2", "-o", str(r / "locked.h5")],
     ["another probekit process is writing", "locked.h5"], ["locked.h5", "locked.h5.parts/run.json"]),
    ("extract when the disk fills up",
     lambda r: EXTRACT + ["--limit", "6", "--shard-size", "2", "--batch-size", "2", "-o", str(r / "full.h5")],
     ["the disk is full at", "full.h5.parts", "free space and rerun: finished shards are kept"],
     ["full.h5", "full.h5.parts/.tmp-*", "full.h5.parts/.lock*"]),
    ("extract when HDF5 hits a full disk",
     lambda r: EXTRACT + ["--limit", "6", "--shard-size", "2", "--batch-size", "2", "-o", str(r / "full2.h5")],
     ["the disk is full at", "full2.h5.parts", "finished shards are kept"], ["full2.h5", "full2.h5.parts/.tmp-*"]),
    ("extract stopped by Ctrl-C",
     lambda r: EXTRACT + ["--limit", "6", "--shard-size", "2", "--batch-size", "2", "-o", str(r / "stopped.h5")],
     ["Aborted!", "rerun the same command to resume"], ["stopped.h5", "stopped.h5.parts/.tmp-*",
                                                         "stopped.h5.parts/.lock*"]),
]
CASES += MESSAGE_CASES


def _hold_lock(monkeypatch, root):
    """Another process writing locked.h5: its lock, held on an open file of our own (flock locks belong to an open
    file, so this process's extraction is refused as another's would be). Returns the release."""
    import fcntl

    parts = root / "locked.h5.parts"
    parts.mkdir(exist_ok=True)
    fd = os.open(parts / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return lambda: os.close(fd)


def _disk_fills_after(monkeypatch, root, calls: int = 2):
    """The free space the extraction's writer sees drops to nothing after ``calls`` checks (another process
    filled the disk): here after the first shard's batch and commit."""
    import types

    from probekit.extractors import writer

    seen = []

    def usage(path):
        seen.append(path)
        return types.SimpleNamespace(free=(1 << 40) if len(seen) <= calls else 1 << 10)
    monkeypatch.setattr(writer, "shutil", types.SimpleNamespace(disk_usage=usage))


def _hdf5_fails_with_enospc(monkeypatch, root):
    """The second batch's write fails as h5py reports a full disk (an OSError with errno 28)."""
    import errno

    from probekit.store import FeatureWriter

    real, calls = FeatureWriter.append, []

    def append(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28, error "
                                        "message = 'No space left on device')")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(FeatureWriter, "append", append)


def _ctrl_c_at_second_batch(monkeypatch, root):
    from probekit.extractors import runner

    real, calls = runner._to_host, []

    def to_host(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(runner, "_to_host", to_host)


# What some cases need set up first (a function of monkeypatch and the fixture's root; it may return a cleanup),
# and the exit code of those that do not exit 1 or 2.
SETUP = {"extract into an output another process writes": _hold_lock,
         "extract when the disk fills up": _disk_fills_after,
         "extract when HDF5 hits a full disk": _hdf5_fails_with_enospc,
         "extract stopped by Ctrl-C": _ctrl_c_at_second_batch}
EXIT = {"extract stopped by Ctrl-C": 130}


# -- suite files: checked whole before any work (types and ranges with their path in the file, names, the
# disk); `run --dry-run` exits 1 when a step would fail. Each case writes its suite under the fixture's root.
def _suite(r, name, change=None, text=None, dry=False):
    import yaml

    suite = {"suite": name, "version": 1, "out": str(r / f"suite-{name}"), "training": {"epochs": 1},
             "datasets": {"shapeworld": {"train": {"split": "train", "limit": 8}, "eval": {"split": "test", "limit": 4}}},
             "extractors": {"tiny": {"extractor": "tiny-mmdit-random", "timesteps": [100], "layers": [0],
                                     "device": "cpu"}},
             "probe_sets": {"default": [{"fusion": "single", "each_map": True, "tasks": ["seg"]}]}}
    if change:
        change(suite)
    path = r / f"suite-{name}.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(suite, sort_keys=False))
    return ["run", str(path), "-q"] + (["--dry-run"] if dry else [])


_TWICE = """suite: twice
datasets: {shapeworld: {train: train, eval: test}}
extractors:
  tiny: {extractor: tiny-mmdit-random, timesteps: [100]}
  tiny: {extractor: tiny-mmdit-random, timesteps: [500]}
probe_sets: {default: [{fusion: single, each_map: true, tasks: [seg]}]}
"""
SUITE_CASES = [
    ("suite epochs 'two'", lambda r: _suite(r, "epochs", lambda s: s["training"].update(epochs="two")),
     ["suite-epochs.yaml, line", "training.epochs: must be a valid integer, got 'two'"], ["suite-epochs"]),
    ("suite layers: 4", lambda r: _suite(r, "layers", lambda s: s["extractors"]["tiny"].update(layers=4)),
     ["extractors.tiny.layers: must be a valid list, got 4", "(e.g. layers: [6, 18, 30])"], ["suite-layers"]),
    ("suite timesteps '50,250'", lambda r: _suite(r, "ts", lambda s: s["extractors"]["tiny"].update(timesteps="50,250")),
     ["extractors.tiny.timesteps: must be a valid list, got '50,250'"], ["suite-ts"]),
    ("suite out: an existing file", lambda r: _suite(r, "outfile", lambda s: s.update(out=str(r / "a-file"))),
     ["out: ", "a-file is a file", "the suite cannot run"], []),
    ("suite --dry-run out: an existing file",
     lambda r: _suite(r, "outfile2", lambda s: s.update(out=str(r / "a-file")), dry=True), ["a-file is a file"], []),
    ("suite extractor label twice", lambda r: _suite(r, "twice", text=_TWICE),
     ["extractors gives key 'tiny' twice (lines 4 and 5)", "remove one"], []),
    ("suite seeds: 0", lambda r: _suite(r, "seeds", lambda s: s["probe_sets"]["default"][0].update(seeds=0)),
     ["probe_sets.default[0].seeds: must be at least 1"], ["suite-seeds"]),
    ("suite --dry-run unknown dataset",
     lambda r: _suite(r, "ds", lambda s: s.update(datasets={"shapewrld": {"train": "train", "eval": "test"}}), dry=True),
     ["datasets.shapewrld.train: unknown dataset 'shapewrld'", "Did you mean: shapeworld"], ["suite-ds"]),
    ("suite --dry-run negative limit",
     lambda r: _suite(r, "limit", lambda s: s["datasets"]["shapeworld"]["train"].update(limit=-1), dry=True),
     ["datasets.shapeworld.train.limit: must be greater than or equal to 1, got -1"], ["suite-limit"]),
    ("suite --dry-run missing weights",
     lambda r: _suite(r, "weights", lambda s: s["extractors"]["tiny"].update(weights=str(r / "no-model")), dry=True),
     ["extractors.tiny.weights: ", "no-model does not exist"], ["suite-weights"]),
    ("suite --dry-run timestep 1001",
     lambda r: _suite(r, "t1001", lambda s: s["extractors"]["tiny"].update(timesteps=[100, 1001]), dry=True),
     ["extractors.tiny.timesteps[1]: must be less than or equal to 1000, got 1001"], ["suite-t1001"]),
    ("suite --dry-run a probe that would fail",
     lambda r: _suite(r, "global", lambda s: s["probe_sets"]["default"].append({"fusion": "global", "tasks": ["seg"]}),
                      dry=True),
     ["[ failed] probe tiny shapeworld seg linear-global", "global fusion learns weights over several maps",
      "1 cell(s) would fail"], ["suite-global"]),
]
CASES += SUITE_CASES
# Asking for a GPU the machine lacks: a mistake only where there is none. On a machine with one these cases are
# skipped, and say so (pytest -ra lists the reason), instead of leaving the table unnoticed.
NEEDS_NO_GPU = pytest.mark.skipif(not NO_GPU, reason="a CUDA GPU is present here: asking for --device cuda is no "
                                                     "mistake, so its refusal cannot be checked on this machine")
GPU_CASES = [
    ("extract --device cuda", lambda r: EXTRACT + ["--limit", "2", "--device", "cuda", "-o", str(r / "x.h5")],
     ["--device cuda", "no CUDA GPU"], ["x.h5", "x.h5.parts"]),
    ("probe --device cuda", lambda r: _probe(r, "--device", "cuda"), ["--device cuda", "no CUDA GPU"], []),
]
TABLE = [pytest.param(*case, id=case[0]) for case in CASES] + \
        [pytest.param(*case, id=case[0], marks=NEEDS_NO_GPU) for case in GPU_CASES]


@pytest.mark.parametrize("case, command, words, absent", TABLE)
def test_a_user_mistake_gets_a_sentence_and_leaves_nothing_behind(files, monkeypatch, case, command, words, absent):
    cleanup = SETUP[case](monkeypatch, files) if case in SETUP else None
    try:
        res = CliRunner().invoke(cli, command(files))
    finally:
        if cleanup:
            cleanup()
    assert res.exit_code in ((EXIT[case],) if case in EXIT else (1, 2)), (case, res.exit_code, res.output)
    assert "Traceback" not in res.output and not isinstance(res.exception, (AssertionError, TypeError, KeyError))
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    for word in words:
        assert word in res.output, (case, word, res.output)
    for path in absent:  # a path, or a glob of paths
        assert not list(files.glob(path)), (case, path)


def test_skip_invalid_names_the_damaged_record_and_reports_the_others(files):
    res = CliRunner().invoke(cli, ["report", str(files / "results"), "--out", str(files / "rep2"), "--skip-invalid"])
    assert res.exit_code == 0, res.output
    assert "1 invalid record(s) skipped" in res.output and "broken" in res.output
    assert (files / "rep2" / "report.html").is_file()
    assert "Invalid records skipped" in (files / "rep2" / "report.html").read_text()


def test_skip_invalid_leaves_out_records_whose_main_score_is_not_a_finite_number(files):
    res = CliRunner().invoke(cli, ["leaderboard", str(files / "results" / "tiny-mmdit-random"),
                                   str(files / "text-score"), str(files / "nan-score"), "--skip-invalid"])
    assert res.exit_code == 0, res.output
    assert "2 invalid record(s) skipped" in res.stderr and "text-score" in res.stderr and "nan-score" in res.stderr
    assert res.output.count("| tiny-mmdit-random |") == 1  # the valid record's row, and only it


def test_a_finished_extraction_says_so_once_without_a_plan(files):
    res = CliRunner().invoke(cli, EXTRACT + ["-s", "train", "--limit", "24", "-o", str(files / "train.h5")])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if not line.startswith("note:")]
    assert lines == [f"{files / 'train.h5'} is already complete with these settings; nothing to do (--overwrite "
                     "to redo it)"]


def test_a_run_stopped_by_a_full_disk_resumes_from_its_finished_shard(files):
    """The same command, once there is space again: the kept shard is not redone, and no lock is left."""
    out = files / "full.h5"
    if not (files / "full.h5.parts" / "shard-000000000-000000002.h5").is_file():
        pytest.skip("needs the table's disk-full case to have run first (run the whole file)")
    res = CliRunner().invoke(cli, EXTRACT + ["--limit", "6", "--shard-size", "2", "--batch-size", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "3 shards of 2, 1 done" in res.output and out.is_file()
    assert not list(files.glob("full.h5.parts/.lock*"))


def test_layers_given_twice_as_negative_and_positive_are_one_map(tmp_path):
    res = CliRunner().invoke(cli, ["extract", "-e", "tiny-mmdit-random", "-t", "100", "-l", "3,-1", "--limit", "2",
                                   "-q", "--device", "cpu", "-o", str(tmp_path / "f.h5")])
    assert res.exit_code == 0, res.output
    with FeatureReader(tmp_path / "f.h5") as r:
        assert r.keys == ["t=100/layer=3"] and r.attr("layers") == [3]


# -- non-finite values, stage by stage --------------------------------------------------------------------
def _poison(path, key, row):
    """Write a NaN into one sample's map of a standalone feature file (as a damaged disk or a bug would)."""
    CliRunner().invoke(cli, ["merge", "--standalone", str(path)])
    with h5py.File(path, "r+") as f:
        ds = f[f"features/{key}"]
        arr = ds[row]
        arr[0, 0, 0] = np.nan
        ds[row] = arr


@pytest.fixture
def poisoned(files, tmp_path):
    train, test = tmp_path / "train.h5", tmp_path / "test.h5"
    for name in ("train", "test"):
        shutil.copy(files / f"{name}.h5", tmp_path / f"{name}.h5")
        shutil.copytree(files / f"{name}.h5.parts", tmp_path / f"{name}.h5.parts")
    return train, test


@pytest.mark.parametrize("mode", ["resident", "streamed"])
def test_nan_in_a_training_sample_is_refused_naming_it(poisoned, tmp_path, mode):
    from probekit.probes.trainer import train_probe

    train, test = poisoned
    _poison(train, "t=100/layer=0", 5)
    sample_id = FeatureReader(train).sample_ids[5]
    with pytest.raises(ProbekitError, match=f"'t=100/layer=0' of {sample_id} holds NaN or inf"):
        train_probe(train, test, key="t=100/layer=0", out=tmp_path / "run", epochs=1, lrs=[1e-2], device="cpu",
                    progress=False, resident_bytes=None if mode == "resident" else 0)
    assert not (tmp_path / "run").exists()


def test_nan_in_an_evaluation_sample_is_refused_naming_it(poisoned, tmp_path):
    train, test = poisoned
    _poison(test, "t=100/layer=0", 2)
    sample_id = FeatureReader(test).sample_ids[2]
    res = CliRunner().invoke(cli, ["probe", "-f", str(train), "-E", str(test), "--timestep", "100", "--layer", "0",
                                   "--epochs", "1", "--lrs", "1e-2", "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 1 and f"of {sample_id} holds NaN or inf" in res.output
    assert not (tmp_path / "run").exists()


def test_a_diverging_trial_is_set_aside_and_a_result_of_nans_is_never_written(poisoned, tmp_path):
    from probekit.probes.trainer import train_probe
    from probekit.results import ResultRecord

    train, test = poisoned
    rec = train_probe(train, test, key="t=100/layer=0", out=tmp_path / "run", epochs=2, lrs=[1e-2, 1e12],
                      device="cpu", progress=False)
    diverged = [t for t in rec["trials"] if t.get("diverged")]
    assert [t["lr"] for t in diverged] == [1e12] and rec["config"]["selected_lr"] == 1e-2
    with pytest.raises(ProbekitError, match="every learning rate .* diverged"):
        train_probe(train, test, key="t=100/layer=0", out=tmp_path / "run2", epochs=2, lrs=[1e12], device="cpu",
                    progress=False)
    assert not (tmp_path / "run2").exists()
    record = ResultRecord(**{k: v for k, v in json.loads((tmp_path / "run" / "result.json").read_text()).items()
                             if k in ResultRecord.__dataclass_fields__})
    record.main_score = float("nan")
    with pytest.raises(ProbekitError, match="refusing to write a result whose mIoU is nan"):
        record.write(tmp_path / "run3")


def test_non_finite_maps_stop_extraction_naming_the_sample_or_are_skipped_and_counted(tmp_path):
    from probekit.datasets import load_dataset
    from probekit.extractors.base import Extractor
    from probekit.extractors.runner import extract_dataset

    class Overflowing(Extractor):
        """Values of 1e5 in the sample of dataset index 3: float16 turns them into inf."""

        name = "overflowing"

        def feature_keys(self):
            return ["layer=0"]

        def extract(self, images, captions, indices):
            x = torch.ones(len(images), 4, 2, 2)
            for i, index in enumerate(indices):
                if index == 3:
                    x[i] = 1e5
            return {"layer=0": x}

        def config(self):
            return {"extractor": self.name}

    ds = load_dataset("shapeworld", "val")
    with pytest.raises(ProbekitError, match="sample shapeworld/val/000003: feature layer=0 holds NaN or inf.*"
                                            "bfloat16"):
        extract_dataset(Overflowing(), ds, tmp_path / "a.h5", limit=6, batch_size=2, shard_size=2, progress=False)
    assert len(list(parts_dir(tmp_path / "a.h5").glob("shard-*.h5"))) == 1  # the shard before it is kept
    lines = []
    extract_dataset(Overflowing(), ds, tmp_path / "a.h5", limit=6, batch_size=2, shard_size=2, progress=False,
                    on_error="skip", echo=lines.append)
    assert any("skipped 1 of 6 samples" in line for line in lines), lines
    with FeatureReader(tmp_path / "a.h5") as r:
        assert r.num_samples == 5 and "shapeworld/val/000003" not in r.sample_ids
        assert [s["id"] for s in r.attr("skipped")] == ["shapeworld/val/000003"]
    from probekit.extractors.storage import StorageOptions

    extract_dataset(Overflowing(), ds, tmp_path / "b.h5", limit=6, batch_size=2, progress=False,
                    storage=StorageOptions(dtype="bfloat16"))  # bfloat16 holds 1e5: nothing to refuse
    with FeatureReader(tmp_path / "b.h5") as r:
        assert r.num_samples == 6 and float(r.read("layer=0", [3]).max()) == pytest.approx(1e5, rel=1e-2)
