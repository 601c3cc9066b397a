"""Benchmark datasets on disk: miniature copies in each dataset's real layout -> check -> extract -> probe.

The layouts (tests/disk_fixtures.py) are written from the datasets' own distributions, independently of the
manifests, so a manifest that disagrees with the real layout fails here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from probekit.cli import cli
from probekit.datasets import load_dataset
from probekit.datasets.check import check_dataset
from probekit.errors import ProbekitError
from probekit.store import FeatureReader

from disk_fixtures import H, W, build, label_file

DATASETS = {  # name: (splits, task)
    "ade20k": (("train", "val"), "seg"), "voc2012": (("train", "val"), "seg"),
    "cityscapes": (("train", "val"), "seg"), "nyuv2": (("train", "test"), "depth"),
    "duts": (("train", "test"), "saliency"), "ecssd": (("test",), "saliency"),
    "dut-omron": (("test",), "saliency"), "hku-is": (("test",), "saliency"),
}


def _only_count_problems(report):
    for split in report.splits:
        assert set(split.problems) <= {"count"}, (split.split, dict(split.problems))
        assert split.found == split.checked == 3


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_complete_miniature_copy_checks_clean_except_for_its_size(name, tmp_path):
    root = build(name, tmp_path / name)
    report = check_dataset(name, root, progress=False)
    _only_count_problems(report)
    assert report.splits[0].problems["count"] == [f"expected {report.splits[0].expected} samples, found 3"]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_check_extract_probe(name, tmp_path):
    """The whole path on each dataset: data check -> extract -> probe (tiny backbone, 32 px)."""
    root = build(name, tmp_path / name, n=4)
    splits, task = DATASETS[name]
    runner = CliRunner()
    checked = runner.invoke(cli, ["data", "check", name, "--root", str(root), "-q"])
    assert checked.exit_code == 1 and "expected" in checked.output  # only the miniature size is wrong
    size = "32"
    feats = {}
    for split in splits:
        out = tmp_path / f"{split}.h5"
        r = runner.invoke(cli, ["extract", "-e", "tiny-mmdit-random", "-d", name, "-s", split, "--data-root",
                                str(root), "--image-size", size, "-t", "300", "-l", "0", "-o", str(out), "-q"])
        assert r.exit_code == 0, r.output
        feats[split] = out
    with FeatureReader(feats[splits[-1]]) as reader:
        assert reader.num_samples == 4 and reader.label_names == [task]
        assert reader.sample_ids[0].startswith(f"{name}/{splits[-1]}/")
        labels = reader.read_labels(task, range(4))
        assert labels.shape[1:] == (32, 32)
        if task == "seg":
            classes = reader.dataset["classes"]
            assert set(np.unique(labels)) <= set(range(len(classes))) | {255}
        if task == "saliency":
            assert set(np.unique(labels)) <= {0, 1}
    train, evaluation = feats[splits[0]], feats[splits[-1]]
    if train == evaluation:  # one-split saliency sets: train on DUTS, evaluate here (cross-dataset, as in SOD)
        duts = build("duts", tmp_path / "duts", n=4)
        train = tmp_path / "duts-train.h5"
        r = runner.invoke(cli, ["extract", "-e", "tiny-mmdit-random", "-d", "duts", "-s", "train", "--data-root",
                                str(duts), "--image-size", size, "-t", "300", "-l", "0", "-o", str(train), "-q"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["probe", "-f", str(train), "-E", str(evaluation), "--task", task, "--epochs", "1",
                            "--lrs", "1e-2", "--cross-dataset", "--out", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["dataset"] == (name if len(splits) == 2 else "duts") and np.isfinite(record["main_score"])
    if name == "nyuv2":  # the dataset's evaluation crop (Eigen) applies without being asked for
        assert record["config"]["task_config"]["crop"] == [0.09375, 0.98125, 0.0640625, 0.9390625]


def test_labels_are_decoded_by_each_datasets_convention(tmp_path):
    ade = load_dataset("ade20k", "val", root=build("ade20k", tmp_path / "ade"), image_size=[H, W])
    raw = np.array(Image.open(tmp_path / "ade/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"))
    np.testing.assert_array_equal(ade[0].seg, np.where(raw == 0, 255, raw.astype(int) - 1))  # reduce zero label
    city = load_dataset("cityscapes", "val", root=build("cityscapes", tmp_path / "city"), image_size=[H, W])
    raw = np.array(Image.open(tmp_path / "city/gtFine/val/frankfurt/frankfurt_000000_000000_gtFine_labelIds.png"))
    expected = {0: 255, 1: 255, 7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13, 33: 18}
    np.testing.assert_array_equal(city[0].seg, np.vectorize(expected.get)(raw))
    voc = load_dataset("voc2012", "val", root=build("voc2012", tmp_path / "voc"), image_size=[H, W])
    raw = np.array(Image.open(tmp_path / "voc/VOCdevkit/VOC2012/SegmentationClass/2007_val000.png"))
    np.testing.assert_array_equal(voc[0].seg, raw)  # palette indices, not colours
    nyu = load_dataset("nyuv2", "test", root=build("nyuv2", tmp_path / "nyu"), image_size=[48, 64])
    raw = np.array(Image.open(tmp_path / "nyu/official_splits/test/bathroom_0001/sync_depth_00000.png"))
    np.testing.assert_allclose(nyu[0].depth, raw * 0.001, rtol=1e-6)
    assert nyu.reference()["eval_crop"] == [0.09375, 0.98125, 0.0640625, 0.9390625]
    sal = load_dataset("ecssd", "test", root=build("ecssd", tmp_path / "ecssd"), image_size=[H, W])
    raw = np.array(Image.open(tmp_path / "ecssd/ground_truth_mask/0001.png"))
    np.testing.assert_array_equal(sal[0].saliency, (raw > 128).astype(np.uint8))


def test_probe_size_is_short_side_then_centre_crop(tmp_path):
    ds = load_dataset("ecssd", "test", root=build("ecssd", tmp_path / "e"), image_size=20)
    s = ds[0]
    assert s.image.shape == (20, 20, 3) and s.saliency.shape == (20, 20)
    full = np.array(Image.open(tmp_path / "e/images/0001.jpg").convert("RGB").resize((27, 20), Image.BILINEAR))
    np.testing.assert_array_equal(s.image, full[:, 3:23])


def test_check_reports_exactly_what_is_wrong(tmp_path):
    root = build("ade20k", tmp_path / "ade")
    ann = root / "ADEChallengeData2016/annotations/validation"
    (ann / "ADE_val_00000001.png").unlink()  # missing label
    label_file(ann / "ADE_val_00000002.png", [0, 1], h=H + 2)  # wrong size
    label_file(ann / "ADE_val_00000003.png", [0, 200])  # value beyond 150
    (root / "ADEChallengeData2016/images/validation/ADE_val_00000003.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    label_file(ann / "ADE_val_00000009.png", [0])  # a label with no image
    report = check_dataset("ade20k", root, ["val"], progress=False)
    problems = report.splits[0].problems
    assert "ADE_val_00000001.png is missing" in problems["missing label"][0]
    assert problems["label size"] == ["ADEChallengeData2016/annotations/validation/ADE_val_00000002.png: 40x32, "
                                      "its image ADEChallengeData2016/images/validation/ADE_val_00000002.jpg is "
                                      "40x30"]
    assert "ADE_val_00000003.jpg cannot be read" in problems["unreadable image"][0]
    assert problems["label without image"] == ["ADEChallengeData2016/annotations/validation/ADE_val_00000009.png"]
    text = "\n".join(report.lines())
    assert "val: 3 of 2000 samples" in text and "the copy has problems" in text


def test_label_values_out_of_range_are_reported(tmp_path):
    root = build("voc2012", tmp_path / "voc")
    label_file(root / "VOCdevkit/VOC2012/SegmentationClass/2007_val001.png", [0, 30], palette=True)
    problems = check_dataset("voc2012", root, ["val"], progress=False).splits[0].problems
    assert problems["label values"] == ["VOCdevkit/VOC2012/SegmentationClass/2007_val001.png: values [30] outside "
                                        "[0, 20] (+[255])"]


def test_paths_escaping_the_root_are_refused(tmp_path):
    root = build("voc2012", tmp_path / "voc")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    listing = root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    listing.write_text("../../../../secret\n")
    with pytest.raises(ProbekitError, match="escapes the data root"):
        load_dataset("voc2012", "val", root=root)[0]
    # a symlink that leaves the root is refused the same way
    root2 = build("ecssd", tmp_path / "ecssd")
    (root2 / "images/0001.jpg").unlink()
    (root2 / "images/0001.jpg").symlink_to(tmp_path / "secret.jpg")
    ds = load_dataset("ecssd", "test", root=root2)
    with pytest.raises(ProbekitError, match="escapes the data root"):
        ds[0]
    problems = check_dataset("ecssd", root2, progress=False).splits[0].problems
    assert "images/0001.jpg' escapes the data root" in problems["path outside the root"][0]


def test_data_root_from_environment_and_missing_root_message(tmp_path, monkeypatch):
    build("ecssd", tmp_path / "data" / "ecssd")
    monkeypatch.setenv("PROBEKIT_DATA", str(tmp_path / "data"))
    assert len(load_dataset("ecssd", "test")) == 3
    monkeypatch.delenv("PROBEKIT_DATA")
    with pytest.raises(ProbekitError, match="--data-root DIR"):
        load_dataset("ecssd", "test")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_manifest_states_layout_counts_classes_protocol_license_and_citation(name):
    from probekit.datasets import load_manifest

    m, _ = load_manifest(name)
    assert m["name"] == name and m["schema_version"] == 1
    for field in ("title", "task", "default_dir", "homepage", "license", "citation", "layout", "protocol"):
        assert m.get(field), field
    assert m["protocol"]["field"] and m["protocol"]["probe"]["size"]
    assert all(isinstance(spec["count"], int) and spec["count"] > 0 for spec in m["splits"].values())
    if m["task"] == "depth":
        lo, hi = m["depth_range"]
        assert 0 < lo < hi and len(m["eval_crop"]) == 4
    else:
        assert len(m["classes"]) == len(m["palette"]) >= 2
        if m["task"] == "seg":
            assert m["ignore_index"] == 255
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in m["palette"])
