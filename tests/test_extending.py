"""Adding a fusion mode or a task is one class plus one registry line: a toy fusion and a toy task, registered
here only, go through probe, record, leaderboard and report without any other file knowing their names."""

import json

import pytest
import torch

from helpers import informative, noise, write_synthetic
from probekit.probes.fusion import Fusion
from probekit.probes.tasks import SegmentationTask
from probekit.registries import FUSIONS, TASKS


class MeanFusion(Fusion):
    """The mean of the standardised maps: learns nothing."""

    mode = "mean"
    min_maps = 2

    def __init__(self, keys, channels, dim=None):
        super().__init__(keys, channels, dim)
        self.out_channels = self.dim

    def forward(self, feats):
        return self.projected(feats).mean(1)


class ObjectsTask(SegmentationTask):
    """Segmentation under another name, title and place, with pixel accuracy as its main metric."""

    name = "objects"
    title = "objects (toy)"
    order = 5
    main_metric = "pixel_acc"
    secondary_metrics = ("mIoU",)


@pytest.fixture
def toys(monkeypatch):
    for registry, name, cls in ((FUSIONS, "mean", MeanFusion), (TASKS, "objects", ObjectsTask)):
        monkeypatch.setitem(registry._entries, name, type(registry.get("single" if registry is FUSIONS else "seg"))(
            name=name, target=f"{__name__}:{cls.__name__}", summary="a toy"))


def _maps(onehot, rng):
    return {"t=100/layer=0": informative(onehot, rng), "t=900/layer=0": noise(onehot, rng)}


def test_a_toy_fusion_and_task_run_through_probe_record_leaderboard_and_report(toys, tmp_path):
    from probekit.probes.trainer import train_probe
    from probekit.reports.report import write_report
    from probekit.reports.tables import leaderboard, leaderboard_frame
    from probekit.reports.records import load_records

    files = {split: write_synthetic(tmp_path / f"{split}.h5", split, n, _maps, seed)
             for split, n, seed in (("train", 32, 0), ("val", 12, 1), ("test", 16, 2))}
    root = tmp_path / "results"
    records = []
    for task, fusion in (("objects", "mean"), ("seg", "mean"), ("objects", "single")):
        keys = {"key": "t=100/layer=0"} if fusion == "single" else {}
        records.append(train_probe(files["train"], files["test"], val_features=files["val"], results_root=root,
                                   task=task, fusion=fusion, epochs=3, lrs=[3e-2], progress=False, **keys))
    toy = records[0]
    assert toy["task"] == "objects" and toy["probe"]["fusion"] == "mean" and toy["probe"]["name"] == "linear-mean"
    assert toy["main_score_name"] == "pixel_acc" and toy["higher_is_better"] is True
    assert toy["probe"]["fusion_weights"] is None and toy["probe"]["timestep"] is None
    assert records[2]["probe"]["name"].startswith("linear-single-") and records[2]["probe"]["timestep"] == 100
    saved = json.loads(open(toy["_path"]).read())
    assert saved["metrics_info"]["pixel_acc"] == {"higher_is_better": True, "unit": "fraction"}

    board = leaderboard_frame(load_records([root]), secondary=True)
    assert {"objects pixel_acc ↑", "objects rank", "objects mIoU ↑", "seg mIoU ↑", "seg rank"} <= set(board.columns)
    assert "mean" in board["fusion"].tolist()
    cols = list(board.columns)
    assert cols.index("seg mIoU ↑") < cols.index("objects pixel_acc ↑")  # the toy's order (5) after seg (0)
    md, _ = leaderboard([root])
    assert "| mean |" in md and "objects pixel_acc ↑" in md

    out = write_report([root], tmp_path / "report")
    page = next(p for p in (tmp_path / "report").rglob("*.html")).read_text()
    assert out is not None and "objects" in page and "mean" in page
