"""A suite as a plan of cells, run where its users run it: in this process, in N local workers, as Slurm jobs
through submitit. The plan and its states; a cell run alone in a fresh process equals the same cell in the suite;
every launcher writes the same records; a killed cell fails alone and a rerun redoes only what is not done."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import fault_inject
from probekit.cli import cli
from probekit.errors import ProbekitError
from probekit.pipelines.cells import ChooseCell, ReportCell
from probekit.pipelines.plan import plan
from probekit.pipelines.suite import parse_suite

ROOT = Path(__file__).resolve().parent.parent
# One tiny backbone, two maps: extract train and eval, every map for seg, the best of them for saliency (chosen
# by a cell of its own), a global fusion, the report: 7 cells.
SUITE = {
    "suite": "cells", "version": 1, "seed": 0,
    "training": {"epochs": 1, "lrs": [0.01, 0.03], "batch_size": 8},
    "datasets": {"shapeworld": {"train": {"split": "train", "limit": 24}, "eval": {"split": "test", "limit": 8}}},
    "extractors": {"tiny-mmdit-random": {"timesteps": [100], "layers": [0, 2], "device": "cpu", "batch_size": 8,
                                         "shard_size": 8}},
    "probe_sets": {"default": [{"fusion": "single", "each_map": True, "tasks": ["seg"]},
                               {"fusion": "single", "best_map_of": "seg", "tasks": ["saliency"]},
                               {"fusion": "global", "tasks": ["seg"]}]},
}
VOLATILE = ("created", "git", "sources", "wall_time_s", "seconds", "time_s", "started", "host", "pid")


def _write(path: Path, suite: dict) -> Path:
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _run(*args, env=None):
    return CliRunner().invoke(cli, ["run", *map(str, args), "-q"], env=env)


def _normalised(value, folders: tuple[Path, ...]):
    """A record with what differs between two identical runs taken out: times, the folder, the source hash."""
    if isinstance(value, dict):
        return {k: _normalised(v, folders) for k, v in value.items() if k not in VOLATILE and not k.endswith("_s")}
    if isinstance(value, list):
        return [_normalised(v, folders) for v in value]
    if isinstance(value, str):
        for folder in folders:
            value = value.replace(str(folder), "OUT")
    return value


def records(out: Path, copied_from: Path | None = None) -> dict[str, dict]:
    folders = (out,) + ((copied_from,) if copied_from else ())
    return {str(p.relative_to(out / "results")): _normalised(json.loads(p.read_text()), folders)
            for p in sorted((out / "results").rglob("result.json"))}


def assert_same_records(got: dict, want: dict, rel: float = 1e-5) -> None:
    """The records of another launcher equal the in-process run's, every field, with floats to ``rel``: a worker
    runs with its share of the CPU threads, and torch sums in another order on another thread count (the last
    bits of a fusion weight move; measured 2e-7 relative with two one-thread workers against two threads)."""
    assert sorted(got) == sorted(want)

    def same(a, b, where):
        if isinstance(a, float) and isinstance(b, float):
            assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-9), f"{where}: {a} != {b}"
        elif isinstance(a, dict) and isinstance(b, dict):
            assert sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
            for k in a:
                same(a[k], b[k], f"{where}/{k}")
        elif isinstance(a, list) and isinstance(b, list):
            assert len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
            for i, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{where}[{i}]")
        else:
            assert a == b, f"{where}: {a!r} != {b!r}"

    for name in want:
        same(got[name], want[name], name)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The suite run in this process (the default launcher): the records every other launcher must equal."""
    root = tmp_path_factory.mktemp("local")
    path = _write(root / "cells.yaml", SUITE)
    res = _run(path, "--out", root / "out")
    assert res.exit_code == 0, res.output
    return path, root / "out"


# -- the plan ----------------------------------------------------------------------------------------------
def test_the_plan_names_every_cell_with_its_dependencies():
    suite = parse_suite(json.loads(json.dumps({**SUITE, "extractors": {"tiny-mmdit-random": {
        **SUITE["extractors"]["tiny-mmdit-random"], "channels": 4}}})), "cells.yaml", out="/tmp/x")
    p = plan(suite)
    ids = list(p.cells)
    assert ids == ["extract/tiny-mmdit-random/shapeworld/train", "extract/tiny-mmdit-random/shapeworld/eval",
                   "probe/tiny-mmdit-random/shapeworld/seg/linear-single/each-map",
                   "choose/tiny-mmdit-random/shapeworld/seg",
                   "probe/tiny-mmdit-random/shapeworld/saliency/linear-single/best-map-of-seg",
                   "probe/tiny-mmdit-random/shapeworld/seg/linear-global/fused", "report"]
    cells = p.cells
    # a projected eval split reuses the train split's projection: it waits for it
    assert cells[ids[1]].needs == [ids[0]]
    assert isinstance(cells[ids[3]], ChooseCell) and cells[ids[3]].needs == [ids[2]]
    assert cells[ids[4]].needs == ids[:2] + [ids[3]]  # its map is read from the choose cell's output
    assert isinstance(cells[ids[-1]], ReportCell) and cells[ids[-1]].after == [ids[2], ids[4], ids[5]]
    assert cells[ids[0]].describe()["command"] == f"probekit run /tmp/x/plan/suite.yaml --cell {ids[0]}"
    # split extraction: parts and a merge that indexes them; the probes need the merge
    split = parse_suite(json.loads(json.dumps({**SUITE, "extractors": {"tiny-mmdit-random": {
        **SUITE["extractors"]["tiny-mmdit-random"], "parts": 2}}})), "cells.yaml", out="/tmp/x")
    p = plan(split)
    assert [c for c in p.cells if c.startswith(("extract/", "merge/"))][:3] == [
        "extract/tiny-mmdit-random/shapeworld/train/part-0-of-2", "extract/tiny-mmdit-random/shapeworld/train/part-1-of-2",
        "merge/tiny-mmdit-random/shapeworld/train"]
    assert "merge/tiny-mmdit-random/shapeworld/eval" in p.cells[ids[2]].needs
    with pytest.raises(ProbekitError, match="--overwrite cannot redo a split extraction"):
        plan(split, overwrite=True)
    with pytest.raises(ProbekitError, match="no cell 'probe/tiny-mmdit-random/shapeworld/seg/linear-globl/fused'; "
                                            "did you mean"):
        p.cell("probe/tiny-mmdit-random/shapeworld/seg/linear-globl/fused")


@pytest.mark.slow
def test_cell_states_done_then_stale_after_a_setting_changes_and_pending_after_removal(local_run, tmp_path):
    path, out = local_run
    suite = parse_suite(yaml.safe_load(path.read_text()), str(path), out=out)
    assert {cid: c.state()[0] for cid, c in plan(suite).cells.items()} == dict.fromkeys(plan(suite).cells, "done")
    assert plan(suite).to_run() == []
    # another number of epochs: the probes' results are of other settings; the features are not
    changed = json.loads(json.dumps(SUITE))
    changed["training"]["epochs"] = 2
    p = plan(parse_suite(changed, str(path), out=out))
    states = {cid: c.state() for cid, c in p.cells.items()}
    assert states["extract/tiny-mmdit-random/shapeworld/train"][0] == "done"
    assert states["probe/tiny-mmdit-random/shapeworld/seg/linear-global/fused"] == (
        "stale", "results of other settings (epochs): the run replaces them")
    assert states["choose/tiny-mmdit-random/shapeworld/seg"][0] == "done"  # until its each-map runs are redone
    assert set(p.to_run()) == set(p.cells) - {"extract/tiny-mmdit-random/shapeworld/train",
                                              "extract/tiny-mmdit-random/shapeworld/eval"}
    # another extraction setting: the feature file is stale, and everything after it runs
    changed = json.loads(json.dumps(SUITE))
    changed["extractors"]["tiny-mmdit-random"]["store_dtype"] = "float32"
    p = plan(parse_suite(changed, str(path), out=out))
    assert p.cells["extract/tiny-mmdit-random/shapeworld/eval"].state()[0] == "stale"
    assert p.to_run() == list(p.cells)
    # an each-map cell interrupted after some of its maps (records there, no stamp of its own): not done, and a
    # rerun completes it and chooses among every map, not only those probed before the interruption
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    each = "probe/tiny-mmdit-random/shapeworld/seg/linear-single/each-map"
    (cut / "cells" / Path(each) / "state.json").unlink()
    shutil.rmtree(cut / "results" / "tiny-mmdit-random" / "shapeworld" / "seg" / "linear-single-t100-l2")
    p = plan(parse_suite(yaml.safe_load(path.read_text()), str(path), out=cut))
    assert p.cells[each].state() == ("stale", "an interrupted run of it left some maps unprobed: the run "
                                              "completes them")
    res = _run(path, "--out", cut)
    assert res.exit_code == 0, res.output
    assert (cut / "results" / "tiny-mmdit-random" / "shapeworld" / "seg" / "linear-single-t100-l2").is_dir()
    choice = json.loads((cut / "cells" / "choose" / "tiny-mmdit-random" / "shapeworld" / "seg" / "choice.json")
                        .read_text())
    assert choice["among"] == 2
    # a copy without the eval features: that cell and what follows it are pending, the train split is not
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "features" / "tiny-mmdit-random" / "shapeworld" / "eval.h5").unlink()
    p = plan(parse_suite(yaml.safe_load(path.read_text()), str(path), out=copy))
    assert p.cells["extract/tiny-mmdit-random/shapeworld/eval"].state()[0] == "pending"
    assert "extract/tiny-mmdit-random/shapeworld/train" not in p.to_run() and "report" in p.to_run()


@pytest.mark.slow
def test_a_cell_run_alone_in_a_fresh_process_equals_the_same_cell_in_the_suite(local_run, tmp_path):
    path, out = local_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    best = "probe/tiny-mmdit-random/shapeworld/saliency/linear-single/best-map-of-seg"
    runs = json.loads((copy / "cells" / best / "state.json").read_text())["runs"]
    assert len(runs) == 1
    moved = Path(runs[0].replace(str(out), str(copy)))
    shutil.rmtree(moved)
    shutil.rmtree(copy / "cells" / best)
    proc = subprocess.run([sys.executable, "-m", "probekit", "run", str(path), "--out", str(copy), "--cell", best,
                           "-q"], capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "done in" in proc.stdout and (copy / "cells" / best / "log.txt").is_file()
    assert records(copy, copied_from=out) == records(out)
    # a cell whose inputs are not there is refused, naming the cell it needs
    shutil.rmtree(copy / "cells" / "choose")
    res = _run(path, "--out", copy, "--cell", best)
    assert res.exit_code == 1 and "needs choose/tiny-mmdit-random/shapeworld/seg, which is" in res.output


@pytest.mark.slow
def test_two_local_workers_write_the_records_one_does(local_run, tmp_path):
    path, out = local_run
    res = _run(path, "--out", tmp_path / "out", "--jobs", "2")
    assert res.exit_code == 0, res.output
    assert_same_records(records(tmp_path / "out"), records(out))
    assert "suite cells: 7 ran" in res.output


@pytest.mark.slow
def test_a_killed_cell_fails_alone_and_a_rerun_resubmits_only_what_is_not_done(tmp_path):
    suite = json.loads(json.dumps(SUITE))
    suite["datasets"]["shapeworld"]["eval"]["limit"] = 16  # two shards: the kill comes in the second batch
    path = _write(tmp_path / "cells.yaml", suite)
    out = tmp_path / "out"
    argv, env = fault_inject.command("writer-batch:2", "run", path, "--out", out, "--jobs", "2", "-q")
    proc = subprocess.run(argv, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    # both extractions' workers were killed; the driver reported them with their logs and blocked the rest
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.count("FAILED: extract") == 2 and "its worker process was killed by signal 9" in proc.stdout
    assert "log: " + str(out / "cells" / "extract" / "tiny-mmdit-random" / "shapeworld" / "train" / "log.txt") in proc.stdout
    assert "suite cells: 4 blocked, 2 failed, 1 ran" in proc.stdout
    assert not (out / "results").exists()
    # the rerun: both extractions resume from their committed shard, then every other cell runs once
    res = _run(path, "--out", out)
    assert res.exit_code == 0 and "suite cells: 7 ran" in res.output, res.output
    log = (out / "cells" / "extract" / "tiny-mmdit-random" / "shapeworld" / "train" / "log.txt").read_text()
    assert "resuming: 1 of 3 shards already done" in log
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("state.json")}
    again = _run(path, "--out", out)
    assert again.exit_code == 0 and "suite cells: 7 done" in again.output, again.output
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("state.json")} == mtimes


@pytest.mark.slow
def test_an_extraction_split_into_parts_and_merged_probes_as_the_whole_one(local_run, tmp_path):
    path, out = local_run
    suite = json.loads(json.dumps(SUITE))
    suite["extractors"]["tiny-mmdit-random"]["parts"] = 2
    res = _run(_write(tmp_path / "parts.yaml", suite), "--out", tmp_path / "out", "--jobs", "2")
    assert res.exit_code == 0 and "suite cells: 11 ran" in res.output, res.output  # 2 x 2 parts, 2 merges, 5
    scores = {k: {"main_score": r["main_score"], "per_seed": r["per_seed"]} for k, r in records(tmp_path / "out").items()}
    assert_same_records(scores, {k: {"main_score": r["main_score"], "per_seed": r["per_seed"]}
                                 for k, r in records(out).items()})


# -- Slurm through submitit -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_submitit_local_executor_runs_the_cells_as_jobs_with_the_same_records(local_run, tmp_path):
    pytest.importorskip("submitit", reason="the cluster extra is not installed: pip install 'probekit[cluster]'")
    from probekit.pipelines.execute import run_suite

    path, out = local_run
    suite = parse_suite(yaml.safe_load(path.read_text()), str(path), out=tmp_path / "out")
    state = run_suite(suite, launcher="slurm", slurm={"cluster": "local", "time": 10, "cells_per_job": 2},
                      progress=False, echo=lambda line: None)
    assert not state.failed, [(c.label, c.detail) for c in state.failed]
    assert_same_records(records(tmp_path / "out"), records(out))
    assert list((tmp_path / "out" / "cells" / "slurm").iterdir())  # submitit's own job folders


def _slurm_up() -> str | None:
    """None when a Slurm cluster answers here, else why not."""
    if shutil.which("sinfo") is None:
        return os.environ.get("PROBEKIT_SLURM_SKIP", "no Slurm here (sinfo not found); bash tools/slurm-local.sh "
                                                     "starts a one-node cluster (as root)")
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or not any(s in proc.stdout for s in ("idle", "mix", "alloc")):
        return os.environ.get("PROBEKIT_SLURM_SKIP", "the Slurm cluster does not answer (sinfo: "
                              f"{(proc.stdout + proc.stderr).strip()[:200]}); bash tools/slurm-local.sh starts one")
    return None


@pytest.mark.slow
def test_a_suite_through_slurm_writes_the_records_of_a_local_run(local_run, tmp_path):
    pytest.importorskip("submitit", reason="the cluster extra is not installed: pip install 'probekit[cluster]'")
    why = _slurm_up()
    if why:
        pytest.skip(why)
    path, out = local_run
    started = time.time()
    res = _run(path, "--out", tmp_path / "out", "--launcher", "slurm", "--time", "10", "--array-parallelism", "2",
               "--sbatch", "comment=probekit-test")
    assert res.exit_code == 0, res.output
    assert_same_records(records(tmp_path / "out"), records(out))
    jobs = [p for p in (tmp_path / "out" / "cells" / "slurm").iterdir() if p.is_dir()]
    assert jobs and all(p.stat().st_mtime >= started - 1 for p in jobs)
    script = next((tmp_path / "out" / "cells" / "slurm").rglob("*_submission.sh")).read_text()
    assert "#SBATCH --time=10" in script and "#SBATCH --comment=probekit-test" in script


# -- the progress display and the sbatch options -----------------------------------------------------------
class _Cell:
    def __init__(self, cid, kind, units, head=None):
        self.id, self.kind, self._units, self.head = cid, kind, units, head

    def units(self):
        return self._units


def test_the_eta_comes_from_measured_rates_per_kind_and_says_when_it_has_none():
    from probekit.pipelines.progress import Progress

    lines = []
    extract, probe, dpt = _Cell("e1", "extract", 100), _Cell("p1", "probe", 10, "linear"), _Cell("p2", "probe", 4, "dpt")
    bar = Progress("s", total=3, workers=1, enabled=False, echo=lines.append)
    bar.plan([extract, probe, dpt], measured=[(_Cell("old", "probe", 0, "linear"), 20.0, 10)])  # 2 s a linear trial
    left, unknown = bar.eta()
    assert left is None and unknown == ["extract", "probe:dpt"]  # nothing measured for these: no guess
    assert "ETA after the first extract, probe dpt cell" in bar.line()
    bar.start(extract)
    bar.finish(extract, ok=True, seconds=50.0, units=100)  # 0.5 s a sample
    bar.start(dpt)
    bar.finish(dpt, ok=True, seconds=40.0, units=4)  # 10 s a DPT trial: its own rate, not the linear one's
    assert bar.rates.rate(dpt) == 10.0 and bar.rates.rate(probe) == 2.0
    assert bar.eta() == (20.0, [])  # the linear probe's 10 trials at 2 s
    reused = _Cell("p3", "probe", 10, "linear")
    bar.finish(reused, ok=True, seconds=0.5, units=None)  # reused finished runs: trained nothing, no rate from it
    assert bar.rates.rate(probe) == 2.0
    assert bar.counts == {"done": 3, "running": 0, "pending": 0, "failed": 0}
    two = Progress("s", total=1, workers=2, enabled=False)
    two.plan([probe], measured=[(_Cell("old", "probe", 0, "linear"), 20.0, 10)])
    assert two.eta() == (10.0, [])  # two workers share what is left


def test_launcher_settings_become_sbatch_options():
    from probekit.pipelines.launchers import submitit_parameters

    params = submitit_parameters({"partition": "gpu", "time": 240, "gpus_per_job": 1, "cpus_per_job": 8,
                                  "mem_gb": 64, "array_parallelism": 16, "sbatch": {"account": "proj",
                                                                                    "--mail-type": "END"}}, "n")
    assert params == {"name": "n", "timeout_min": 240, "cpus_per_task": 8, "slurm_partition": "gpu",
                      "gpus_per_node": 1, "mem_gb": 64, "slurm_array_parallelism": 16,
                      "slurm_additional_parameters": {"account": "proj", "mail_type": "END"}}
    res = _run("demo", "--launcher", "slurm", "--sbatch", "account")
    assert res.exit_code == 2 and "'account' is not KEY=VALUE" in res.output
