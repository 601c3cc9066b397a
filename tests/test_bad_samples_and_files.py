"""Bad input, case by case: each gets an error naming the file or sample and what is wrong, and work already
done survives. (Foreign/truncated-header feature files: test_feature_store; files that do not belong together:
test_combined and test_cli; unknown extractor/dataset/head: test_cli and test_registry; paths escaping the
data root: test_datasets_disk; pickled timm weights: test_extractors_timm.)"""

from __future__ import annotations

import h5py
import pytest
from click.testing import CliRunner

from disk_fixtures import build, label_file
from probekit.cli import cli
from probekit.errors import FeatureFileError
from probekit.extractors.shards import parts_dir
from probekit.store import FeatureReader

EXTRACT = ["extract", "-e", "tiny-mmdit-random", "-d", "ecssd", "-s", "test", "--image-size", "32", "-t", "300",
           "-l", "0", "-q", "--shard-size", "1"]


@pytest.fixture
def ecssd(tmp_path):
    """Six ECSSD samples: #2 a corrupt JPEG, #4 a missing mask, #5 a mask of the wrong size."""
    root = build("ecssd", tmp_path / "ecssd", n=6)
    (root / "images/0002.jpg").write_bytes((root / "images/0002.jpg").read_bytes()[:100])
    (root / "ground_truth_mask/0004.png").unlink()
    label_file(root / "ground_truth_mask/0005.png", [0, 255], h=12, w=12)
    return root


def test_a_bad_sample_stops_the_run_naming_it_and_keeps_finished_shards(ecssd, tmp_path):
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(cli, EXTRACT + ["--data-root", str(ecssd), "-o", str(out)])
    assert res.exit_code != 0
    assert "sample ecssd/test/0002" in res.output and "0002.jpg cannot be read" in res.output
    assert "1 of 6 shards are done and kept" in res.output and "--on-error skip" in res.output
    assert not out.exists() and len(list(parts_dir(out).glob("shard-*.h5"))) == 1


def test_a_bad_sample_in_the_middle_of_a_shard_leaves_no_file_open(ecssd, tmp_path):
    # Shards of two: sample 0001 is written into a shard that 0002 never completes. That half shard is left
    # for the resume, and its file is closed (a long-running suite must not hold it open).
    out = tmp_path / "f.h5"
    args = EXTRACT[:-1] + ["2"]  # --shard-size 2
    res = CliRunner().invoke(cli, args + ["--data-root", str(ecssd), "-o", str(out)])
    assert res.exit_code != 0 and "0 of 3 shards are done and kept" in res.output, res.output
    still_open = [i.name.decode() for i in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)]
    assert not [name for name in still_open if str(tmp_path) in name], still_open


def test_on_error_skip_records_skipped_ids_and_reasons_and_keeps_earlier_work(ecssd, tmp_path):
    out = tmp_path / "f.h5"
    CliRunner().invoke(cli, EXTRACT + ["--data-root", str(ecssd), "-o", str(out)])  # stops at 0002
    res = CliRunner().invoke(cli, EXTRACT + ["--data-root", str(ecssd), "-o", str(out), "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    assert "resuming: 1 of 6 shards" in res.output  # the first run's shard was kept, not redone
    with FeatureReader(out) as r:
        assert r.sample_ids == ["ecssd/test/0001", "ecssd/test/0003", "ecssd/test/0006"]
        skipped = {s["id"]: s["error"] for s in r.attr("skipped")}
    assert sorted(skipped) == ["ecssd/test/0002", "ecssd/test/0004", "ecssd/test/0005"]
    assert "cannot be read" in skipped["ecssd/test/0002"]
    assert "0004.png is missing" in skipped["ecssd/test/0004"]
    assert "is 12x12 but its image" in skipped["ecssd/test/0005"]


def test_pickled_diffusers_weights_are_refused_naming_the_file(tmp_path):
    from diffusers import SD3Transformer2DModel

    from helpers import FLOW, _save

    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=3, out_channels=3, num_layers=1,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                  caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=8)
    folder = tmp_path / "pickled"
    model.save_pretrained(folder / "transformer", safe_serialization=False)
    _save(model, tmp_path / "unused", FLOW)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text((tmp_path / "unused/scheduler/scheduler_config.json")
                                                                .read_text())
    res = CliRunner().invoke(cli, ["extract", "-e", "tiny-mmdit-random", "-w", str(folder), "--limit", "1",
                                   "-o", str(tmp_path / "x.h5")])
    assert res.exit_code != 0
    assert "diffusion_pytorch_model.bin: weights stored as a pickle" in res.output
    assert not (tmp_path / "x.h5").exists()


def test_feature_file_truncated_anywhere_is_refused_naming_it(tmp_path):
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(cli, ["extract", "-e", "tiny-mmdit-random", "--limit", "6", "-t", "300", "-l", "0",
                                   "-q", "-o", str(out)])
    assert res.exit_code == 0, res.output
    shard = parts_dir(out) / "shard-000000000-000000006.h5"
    shard.rename(tmp_path / "whole-shard.h5")
    shard.write_bytes((tmp_path / "whole-shard.h5").read_bytes()[:3000])  # the index's data, truncated
    with FeatureReader(out) as r, pytest.raises(FeatureFileError, match="shard-000000000-000000006.h5.*cannot be read"):
        r.read("t=300/layer=0", [0])
    (tmp_path / "whole-shard.h5").replace(shard)
    assert CliRunner().invoke(cli, ["merge", "--standalone", str(out)]).exit_code == 0  # one file, to cut up
    with h5py.File(out, "r") as f:
        last_chunk = f["features/t=300/layer=0"].id.get_chunk_info(5).byte_offset
    data = out.read_bytes()
    for n, cut_at in enumerate([100, len(data) // 2, last_chunk + 10, len(data) - 1]):
        cut = tmp_path / f"cut{n}.h5"
        cut.write_bytes(data[:cut_at])
        with pytest.raises(FeatureFileError, match=f"cut{n}.h5 cannot be read as HDF5 .truncated"):
            FeatureReader(cut)
        res = CliRunner().invoke(cli, ["probe", "-f", str(cut), "-E", str(out), "--epochs", "1"])
        assert res.exit_code != 0 and f"cut{n}.h5 cannot be read" in res.output


def test_unknown_task_gets_a_suggestion(tmp_path):
    out = tmp_path / "f.h5"
    CliRunner().invoke(cli, ["extract", "-e", "tiny-mmdit-random", "--limit", "2", "-q", "-o", str(out)])
    res = CliRunner().invoke(cli, ["probe", "-f", str(out), "-E", str(out), "--task", "segm"])
    assert res.exit_code != 0 and "unknown task 'segm'" in res.output and "Did you mean: seg" in res.output
