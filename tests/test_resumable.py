"""Extraction survives SIGKILL, resumes to the same file, refuses mismatched reruns, and shards across ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import fault_inject
from probekit.cli import cli
from probekit.errors import FeatureFileError
from probekit.extractors.shards import parts_dir
from probekit.store import FeatureReader

ARGS = ["extract", "-e", "tiny-mmdit-random", "-t", "100,600", "-l", "0,1", "-q"]
VOLATILE = {"created", "extract_wall_time_s"}  # the only things allowed to differ between equal runs


def _attrs(path) -> dict:
    with h5py.File(path, "r") as f:
        attrs = {}
        for k, v in f.attrs.items():
            if k in VOLATILE:
                continue
            if isinstance(v, str) and v.startswith("{"):
                v = json.loads(v)
                v.pop("created", None)
            attrs[k] = v.item() if isinstance(v, np.generic) else v
        return attrs


def _datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_file(a, b, same_run_settings=True):
    """Every dataset and attribute equal; ``same_run_settings=False`` allows provenance.run (workers) to differ."""
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        np.testing.assert_array_equal(da[name], db[name], err_msg=name)
    aa, ab = _attrs(a), _attrs(b)
    if not same_run_settings:
        aa["provenance"].pop("run"), ab["provenance"].pop("run")
    assert aa == ab


def _run(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_sigkill_in_the_writer_thread_resumes_to_the_uninterrupted_file(tmp_path):
    common = ARGS + ["--limit", "24", "--shard-size", "4", "--batch-size", "2"]
    _run(common + ["-o", str(tmp_path / "reference.h5")])
    out = tmp_path / "killed.h5"
    # The writer thread kills the process right after writing its 7th batch: shards 0-2 are committed, the
    # first batch of shard 3 is half a temporary file, and the model has run ahead of the writer.
    argv, env = fault_inject.command("writer-batch:7", *common, "-o", out)
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    parts = parts_dir(out)
    assert sorted(p.name for p in parts.glob("shard-*.h5")) == [
        f"shard-{a:09d}-{a + 4:09d}.h5" for a in (0, 4, 8)]
    assert (parts / ".tmp-shard-000000012-000000016.h5").exists() and not out.exists()
    with pytest.raises(FeatureFileError, match="interrupted.*rerun the same"):
        FeatureReader(out)  # an unfinished extraction cannot be probed by accident
    result = _run(common + ["-o", str(out)])
    assert "resuming: 3 of 6 shards" in result.output
    assert not (parts / ".tmp-shard-000000012-000000016.h5").exists()
    assert_same_file(tmp_path / "reference.h5", out)


def test_the_finished_file_is_an_index_over_its_shards_that_needs_them_and_can_be_made_standalone(tmp_path):
    out = tmp_path / "f.h5"
    _run(ARGS + ["--limit", "6", "--shard-size", "4", "-o", str(out)])
    reference = _datasets(out)
    with h5py.File(out) as f:
        assert f["features/t=100/layer=0"].is_virtual and f["labels/seg"].is_virtual
    assert out.stat().st_size < 100_000  # metadata: the data stays in the shards, written once
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    out.rename(moved / "f.h5")
    parts_dir(out).rename(parts_dir(moved / "f.h5"))
    with FeatureReader(moved / "f.h5") as r:  # the pair moves together
        np.testing.assert_array_equal(r.read_raw("t=100/layer=0", [5, 0, 4]),
                                      reference["features/t=100/layer=0"][[5, 0, 4]])
    (parts_dir(moved / "f.h5") / "shard-000000004-000000006.h5").rename(tmp_path / "aside.h5")
    with pytest.raises(FeatureFileError, match="1 of them are missing.*shard-000000004-000000006.h5"):
        FeatureReader(moved / "f.h5")
    (tmp_path / "aside.h5").rename(parts_dir(moved / "f.h5") / "shard-000000004-000000006.h5")
    _run(["merge", "--standalone", str(moved / "f.h5")])
    assert not parts_dir(moved / "f.h5").exists()
    with h5py.File(moved / "f.h5") as f:
        assert not f["features/t=100/layer=0"].is_virtual
    got = _datasets(moved / "f.h5")
    for name, value in reference.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_half_written_shard_is_discarded_and_redone(tmp_path):
    out = tmp_path / "f.h5"
    common = ARGS + ["--limit", "6", "--shard-size", "2"]
    _run(common + ["-o", str(out)])
    reference = _datasets(out)
    # Recreate the state of a run killed while writing shard 2 after shards 0 and 1 were committed.
    out.unlink()
    shutil.rmtree(parts_dir(out))
    _run(common + ["--part", "0/3", "-o", str(out)])
    _run(common + ["--part", "1/3", "-o", str(out)])
    (parts_dir(out) / ".tmp-shard-000000004-000000006.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    result = _run(common + ["-o", str(out)])
    assert "resuming: 2 of 3 shards" in result.output
    got = _datasets(out)
    for name, value in reference.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_rerun_with_other_arguments_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "f.h5"
    _run(ARGS + ["--limit", "4", "-o", str(out)])
    same = _run(ARGS + ["--limit", "4", "-o", str(out)])
    assert "already complete" in same.output
    other = CliRunner().invoke(cli, ARGS + ["--limit", "4", "--seed", "1", "-o", str(out)])
    assert other.exit_code != 0 and "--overwrite" in other.output
    _run(ARGS + ["--limit", "4", "--seed", "1", "--overwrite", "-o", str(out)])
    with FeatureReader(out) as r:
        assert r.attr("seed") == 1


def test_interrupted_run_with_other_arguments_names_what_differs(tmp_path):
    out = tmp_path / "f.h5"
    _run(ARGS + ["--limit", "4", "--shard-size", "2", "--part", "0/2", "-o", str(out)])
    other = CliRunner().invoke(cli, ARGS + ["--limit", "4", "--shard-size", "2", "-t", "100", "-o", str(out)])
    assert other.exit_code != 0
    assert "interrupted extraction with other settings" in other.output and "extractor" in other.output


def test_parts_then_merge_equal_one_run(tmp_path):
    common = ARGS + ["--limit", "7", "--shard-size", "2"]
    _run(common + ["-o", str(tmp_path / "one.h5")])
    out = tmp_path / "parts.h5"
    _run(common + ["--part", "1/2", "-o", str(out)])
    early = CliRunner().invoke(cli, ["merge", str(out)])
    assert early.exit_code != 0 and "not done yet" in early.output
    _run(common + ["--part", "0/2", "-o", str(out)])
    _run(["merge", str(out)])
    assert_same_file(tmp_path / "one.h5", out, same_run_settings=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_equal_one_process(tmp_path):
    common = ARGS + ["--limit", "9", "--shard-size", "2", "--batch-size", "2", "--device", "cpu"]
    _run(common + ["-o", str(tmp_path / "one.h5")])
    out = tmp_path / "two.h5"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "probekit", *common, "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_same_file(tmp_path / "one.h5", out, same_run_settings=False)
    with FeatureReader(out) as r:
        assert r.provenance["run"]["world_size"] == 2


def test_a_planned_extraction_writes_nothing_until_run_and_runs_to_the_same_file(tmp_path):
    """plan_extraction decides (shapes, shards, what is done) and writes nothing; run_extraction of that plan
    writes the file extract_dataset writes; planned again, the finished output is seen as finished."""
    from probekit.api import build_extractor
    from probekit.datasets import load_dataset
    from probekit.extractors.runner import extract_dataset, plan_extraction, run_extraction

    ex = build_extractor("tiny-mmdit-random", timesteps=[100], layers=[0], seed=0, device="cpu")
    ds = load_dataset("shapeworld", "val")
    job = plan_extraction(ex, ds, tmp_path / "a.h5", limit=6, batch_size=2, shard_size=4)
    assert list(tmp_path.iterdir()) == []
    assert (job.plan.num_samples, job.plan.shard_size, job.plan.num_shards, job.plan.shards_done) == (6, 4, 2, 0)
    assert not job.finished
    said = []
    assert run_extraction(job, progress=False, echo=said.append) == tmp_path / "a.h5"
    extract_dataset(ex, ds, tmp_path / "b.h5", limit=6, batch_size=2, shard_size=4, progress=False)
    assert_same_file(tmp_path / "a.h5", tmp_path / "b.h5")
    again = plan_extraction(ex, ds, tmp_path / "a.h5", limit=6, batch_size=2, shard_size=4)
    assert again.finished and again.plan.shards_done == 2
    said.clear()
    assert run_extraction(again, echo=said.append) == tmp_path / "a.h5"
    assert said == [f"{tmp_path / 'a.h5'} is already complete with these settings; nothing to do (--overwrite to "
                    "redo it)"]
