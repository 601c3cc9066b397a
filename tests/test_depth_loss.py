"""The depth training loss: SigLoss alone or plus the relative RMSE, its values against hand-computed ones, how
it is set, recorded, and how records made before the choice count."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from helpers import informative, write_synthetic
from probekit.cli import cli
from probekit.errors import ProbekitError
from probekit.probes.config import ProbeConfig
from probekit.probes.tasks import DepthTask
from probekit.probes.trainer import recorded_setting, settings_differ, train_probe

REF = {"depth_range": [0.5, 20.0]}


def _output(pred):  # a (B, 1, H, W) depth map, as head_transform gives
    return torch.tensor(pred, dtype=torch.float64).view(1, 1, 1, -1)


def test_the_loss_is_silog_plus_rmse_over_the_mean_depth_by_hand():
    pred, gt = [2.0, 4.0, 8.0, 1.0], [2.0, 5.0, 10.0, 20.0]  # the last pixel sits at the far limit: not scored
    d = [math.log(2 / 2), math.log(4 / 5), math.log(8 / 10)]
    mean_d, mean_d2 = sum(d) / 3, sum(x * x for x in d) / 3
    silog = math.sqrt(mean_d2 - 0.85 * mean_d**2 + 1e-8)
    rmse = math.sqrt((0 + 1 + 4) / 3 + 1e-8)
    target = torch.tensor(gt, dtype=torch.float64).view(1, 1, -1)
    alone = DepthTask(REF, depth_loss="silog").loss(_output(pred), target).item()
    both = DepthTask(REF).loss(_output(pred), target).item()
    assert alone == pytest.approx(silog, rel=1e-9)
    assert both == pytest.approx(silog + rmse / (17 / 3), rel=1e-9)
    # SigLoss forgives 85% of a global scale error (in squares); the RMSE term none of it.
    scaled = _output([2 * x for x in gt[:3]] + [1.0])
    silog_scaled = DepthTask(REF, depth_loss="silog").loss(scaled, target).item()
    assert silog_scaled == pytest.approx(math.sqrt(0.15) * math.log(2), rel=1e-6)
    rms_gt = math.sqrt((4 + 25 + 100) / 3)  # doubling every depth: an error of the depth itself
    assert DepthTask(REF).loss(scaled, target).item() == pytest.approx(silog_scaled + rms_gt / (17 / 3), rel=1e-6)
    with pytest.raises(ValueError, match="depth_loss"):
        DepthTask(REF, depth_loss="l1")


def test_the_setting_exists_for_depth_only_and_a_bad_one_names_the_option():
    assert ProbeConfig.build(task="depth").depth_loss == "silog+rmse"
    assert ProbeConfig.build(task="depth", depth_loss="silog").depth_loss == "silog"
    assert ProbeConfig.build(task="seg").depth_loss is None  # nothing recorded that means nothing
    with pytest.raises(ProbekitError, match="--depth-loss"):
        ProbeConfig.build(task="depth", depth_loss="l1")


def test_records_made_before_the_choice_count_as_silog_for_depth_and_as_nothing_elsewhere():
    assert recorded_setting({"task": "depth"}, "depth_loss") == "silog"
    assert recorded_setting({"task": "seg"}, "depth_loss") is None
    old_depth = {"task": "depth"}
    assert "depth_loss" in settings_differ(old_depth, ProbeConfig.build(task="depth"))
    assert "depth_loss" not in settings_differ(old_depth, ProbeConfig.build(task="depth", depth_loss="silog"))
    assert "depth_loss" not in settings_differ({"task": "seg"}, ProbeConfig.build(task="seg"))


def test_a_run_trains_on_the_chosen_loss_and_records_it(tmp_path, monkeypatch):
    files = {split: write_synthetic(tmp_path / f"{split}.h5", split, n, lambda onehot, rng: {
        "t=100/layer=0": informative(onehot, rng)}, seed) for split, n, seed in (("train", 32, 0), ("val", 12, 1),
                                                                                ("test", 16, 2))}
    common = dict(val_features=files["val"], task="depth", epochs=3, lrs=[3e-2], progress=False)
    used = []  # the loss every training step computed: a spy on DepthTask.loss
    original = DepthTask.loss
    monkeypatch.setattr(DepthTask, "loss", lambda self, out, target: used.append(self.depth_loss) or
                        original(self, out, target))
    runs = {}
    for loss in ("silog", "silog+rmse"):
        used.clear()
        runs[loss] = train_probe(files["train"], files["test"], depth_loss=loss, out=tmp_path / loss, **common)
        assert used and set(used) == {loss}, (loss, set(used))  # 32 rows, batch 32, 3 epochs: 3 steps
        assert len(used) == 3
    assert runs["silog"]["config"]["depth_loss"] == "silog"
    assert runs["silog+rmse"]["config"]["depth_loss"] == "silog+rmse"
    assert runs["silog+rmse"]["config"]["task_config"]["loss"].endswith("+ RMSE / mean depth")
    assert runs["silog"]["metrics"]["RMSE"] != runs["silog+rmse"]["metrics"]["RMSE"]
    # The CLI passes it through.
    result = CliRunner().invoke(cli, ["probe", "-f", str(files["train"]), "-V", str(files["val"]), "-E",
                                       str(files["test"]), "--task", "depth", "--epochs", "2", "--lrs", "0.03",
                                       "--depth-loss", "silog", "--out", str(tmp_path / "cli"), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "result.json").read_text())["config"]["depth_loss"] == "silog"
