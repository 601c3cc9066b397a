"""Prediction-level fusion: one linear read-out per map, each trained on its own loss too, mixed by the weights.

What could break: which level a head gets, a read-out seeing another map, the mix not being the weighted sum of
the read-outs, the own-loss gradient not being the mean of the maps' own losses, the run name and record
keeping the two levels apart, and an older record (before the level existed) counting as a run of today's default.
"""

import pytest
import torch
import torch.nn.functional as F

from helpers import informative, noise, write_synthetic
from probekit.errors import ProbekitError
from probekit.probes.config import ProbeConfig, probe_stem
from probekit.probes.heads import LinearHead, PerMapLinear
from probekit.probes.model import Probe, own_loss_stride
from probekit.probes.tasks import DepthTask, SegmentationTask
from probekit.probes.trainer import train_probe

KEYS = ["t=100/layer=0", "t=500/layer=0", "t=900/layer=0"]


def test_level_follows_the_head_and_is_refused_where_it_cannot_be_built():
    assert ProbeConfig(fusion="global").fusion_level == "predictions"
    assert ProbeConfig(fusion="spatial", head="linear").fusion_level == "predictions"
    assert ProbeConfig(fusion="global", head="conv").fusion_level == "features"
    assert ProbeConfig(fusion="global", fusion_level="features").fusion_level == "features"
    assert ProbeConfig(fusion="single").fusion_level == "features"
    with pytest.raises(ProbekitError, match="--fusion-level predictions needs"):
        ProbeConfig(fusion="global", head="deeplab", fusion_level="predictions")
    with pytest.raises(ProbekitError, match="--fusion-level must be one of"):
        ProbeConfig(fusion="global", fusion_level="logits")
    # Runs of both levels live side by side; the head's default level keeps the plain name.
    assert probe_stem("linear", "global") == "linear-global"
    assert probe_stem("linear", "global", "features") == "linear-global-features"
    assert probe_stem("conv", "spatial") == "conv-spatial"


def test_each_read_out_sees_its_own_map_only():
    torch.manual_seed(0)
    head = PerMapLinear(3, 4, 5).eval()
    x = torch.randn(2, 3, 4, 6, 6)
    out = head(x)
    assert out.shape == (2, 3, 5, 6, 6)
    y = x.clone()
    y[:, 2] += 10 * torch.randn_like(y[:, 2])
    moved = head(y)
    torch.testing.assert_close(moved[:, :2], out[:, :2])
    assert not torch.allclose(moved[:, 2], out[:, 2])
    # Read-out k is LinearHead's BatchNorm (affine, fixed statistics) + 1x1 conv on map k alone.
    with torch.no_grad():
        head.scale.uniform_(0.5, 2.0)
        head.shift.normal_()
    out = head(x)
    single = LinearHead([4], 5).eval()
    with torch.no_grad():
        single.norm.weight.copy_(head.scale[1])
        single.norm.bias.copy_(head.shift[1])
        single.norm.running_mean.zero_()
        single.norm.running_var.fill_(1 - single.norm.eps)  # BatchNorm's eps undone: fixed unit statistics
        single.proj.weight.copy_(head.weight[1, :, :, None, None])
        single.proj.bias.copy_(head.bias[1])
    torch.testing.assert_close(single([x[:, 1]]), out[:, 1])


def _probe(fusion="global", task=None, head_transform=None):
    channels = {k: 4 for k in KEYS}
    out = task.out_channels if task is not None else 3
    model = Probe(fusion, LinearHead, KEYS, channels, out, head_transform=head_transform, fusion_level="predictions")
    model.fusion.set_statistics({k: (torch.zeros(4), torch.ones(4)) for k in KEYS})
    return model


def test_the_mix_is_the_weighted_sum_of_the_read_outs_and_a_one_hot_weight_is_that_map_alone():
    torch.manual_seed(1)
    model = _probe().eval()
    feats = {k: torch.randn(2, 4, 5, 5) for k in KEYS}
    per_map = model.head(torch.stack([feats[k] for k in KEYS], 1))
    with torch.no_grad():
        model.fusion.groups[0].logits.copy_(torch.tensor([0.3, -1.0, 0.5]))
    w = torch.softmax(torch.tensor([0.3, -1.0, 0.5]), 0)
    torch.testing.assert_close(model(feats, (5, 5)), torch.einsum("bkchw,k->bchw", per_map, w))
    with torch.no_grad():
        model.fusion.groups[0].logits.copy_(torch.tensor([-1e4, 1e4, -1e4]))
    torch.testing.assert_close(model(feats, (10, 10)), F.interpolate(per_map[:, 1], size=(10, 10), mode="bilinear",
                                                                     align_corners=False))


@pytest.mark.parametrize("fusion", ["global", "spatial"])
@pytest.mark.parametrize("kind", ["seg", "depth"])
def test_own_loss_gradient_is_that_of_the_mean_of_every_maps_own_loss(fusion, kind):
    torch.manual_seed(2)
    if kind == "seg":
        task = SegmentationTask({"classes": ["a", "b", "c"], "ignore_index": 255})
        target = torch.randint(0, 3, (2, 10, 10))
        target[0, 0, :4] = 255
    else:
        task = DepthTask({"depth_range": [0.5, 20.0]}, bins=8)
        target = torch.rand(2, 10, 10) * 15 + 1
    model = _probe(fusion, task, getattr(task, "head_transform", None)).train()
    feats = {k: torch.randn(2, 4, 5, 5) for k in KEYS}
    model(feats, (20, 20))  # labels at 4x the feature grid: the own losses read every 2nd label pixel
    assert own_loss_stride((20, 20), (5, 5)) == (2, 2) and own_loss_stride((8, 64), (16, 16)) == (1, 2)
    target = F.interpolate(target[:, None].float(), size=(20, 20), mode="nearest")[:, 0].to(target.dtype)
    got = model.own_loss_gradient(task.loss, target, (20, 20))
    per_map = model.per_map
    expected = torch.autograd.grad(
        sum(task.loss(F.interpolate(per_map[:, i], size=(10, 10), mode="bilinear", align_corners=False),
                      target[:, ::2, ::2]) for i in range(len(KEYS))) / len(KEYS), per_map)[0]
    torch.testing.assert_close(got, expected)
    model.own_loss_weight = 3.0  # --own-loss-weight scales the read-outs' own losses, nothing else
    torch.testing.assert_close(model.own_loss_gradient(task.loss, target, (20, 20)), 3.0 * expected)
    model.eval()
    with torch.no_grad():
        model(feats, (10, 10))
    assert model.per_map is None and model.own_loss_gradient(task.loss, target, (10, 10)) is None


def _stacks(root):
    def maps(onehot, rng):
        return {k: (informative if k == KEYS[1] else noise)(onehot, rng) for k in KEYS}
    return {split: write_synthetic(root / f"{split}.h5", split, n, maps, seed)
            for split, n, seed in (("train", 48, 0), ("val", 16, 1), ("test", 24, 2))}


def test_both_levels_train_record_themselves_and_an_older_record_is_the_feature_level(tmp_path):
    files = _stacks(tmp_path)
    common = dict(val_features=files["val"], fusion="global", epochs=15, lrs=[3e-2], progress=False,
                  results_root=tmp_path / "results", overwrite="reuse")
    late = train_probe(files["train"], files["test"], **common)
    early = train_probe(files["train"], files["test"], fusion_level="features", **common)
    assert late["config"]["fusion_level"] == "predictions" and early["config"]["fusion_level"] == "features"
    assert late["probe"]["name"] == "linear-global" and early["probe"]["name"] == "linear-global-features"
    assert late["probe"]["fusion_weights"]["level"] == "predictions"
    assert "read-out" in late["probe"]["fusion_weights"]["reading"]
    assert late["probe"]["fusion_weights"]["per_key"][KEYS[1]] > 0.5
    assert late["main_score"] > 0.85
    # A record written before the level existed holds feature-level fusion: it answers a features request
    # and not a predictions one.
    from probekit.probes.trainer import covers
    from probekit.probes.data import ProbeData

    old = {**early, "config": {k: v for k, v in early["config"].items() if k != "fusion_level"}}
    for level, expected in (("features", True), ("predictions", False)):
        cfg = ProbeConfig.build(fusion="global", epochs=15, lrs=[3e-2], fusion_level=level)
        with ProbeData(cfg, [files["train"]], [files["test"]], val_features=[files["val"]]) as data:
            assert covers(old, data.cfg, data) is expected
    # Own-loss weights: a record of one weight (``own_loss_weight``, and before that none: weight 1) answers a
    # request for that weight alone, not the default grid; the grid is chosen per seed and recorded.
    assert late["config"]["own_loss_weights"] == [1.0, 3.0]
    assert all(s["selected_own_loss_weight"] in (1.0, 3.0) for s in late["per_seed"])
    one = {**late, "config": {**{k: v for k, v in late["config"].items() if k != "own_loss_weights"},
                              "own_loss_weight": 1.0}}
    oldest = {**late, "config": {k: v for k, v in late["config"].items() if k != "own_loss_weights"}}
    for record in (one, oldest):
        for weights, expected in (([1.0], True), ([3.0], False), (None, False)):
            cfg = ProbeConfig.build(fusion="global", epochs=15, lrs=[3e-2], own_loss_weights=weights)
            with ProbeData(cfg, [files["train"]], [files["test"]], val_features=[files["val"]]) as data:
                assert covers(record, data.cfg, data) is expected, (record["config"].get("own_loss_weight"), weights)
    assert ProbeConfig.build(fusion="global", own_loss_weight=3).own_loss_weights == [3.0]  # the shorthand
    assert ProbeConfig.build(fusion="single").own_loss_weights is None  # no read-outs: nothing to weigh
    assert ProbeConfig.build(fusion="global", fusion_level="features").own_loss_weights is None
    for bad, match in (([-1.0], "finite numbers >= 0"), ([1.0, 1.0], "twice"), ([], "empty")):
        with pytest.raises(ProbekitError, match=match):
            ProbeConfig.build(fusion="global", own_loss_weights=bad)


def test_own_loss_weights_are_chosen_on_validation_at_the_rate_the_first_weight_chose(tmp_path, monkeypatch):
    import probekit.probes.trainer as trainer

    files = _stacks(tmp_path)
    trained = []  # (own-loss weight of the model, its rate) for every model trained: a spy on train_trials
    original = trainer.train_trials
    monkeypatch.setattr(trainer, "train_trials", lambda models, lrs, *a, **kw: trained.extend(
        (m.own_loss_weight, lr) for m, lr in zip(models, lrs)) or original(models, lrs, *a, **kw))
    rec = train_probe(files["train"], files["test"], val_features=files["val"], fusion="spatial", epochs=4,
                      lrs=[1e-2, 3e-2], own_loss_weights=[1, 3, 0], seeds=[0, 1], progress=False, out=tmp_path / "run")
    assert rec["config"]["own_loss_weights"] == [1.0, 3.0, 0.0]
    pick = max if rec["higher_is_better"] else min
    for seed, chosen in zip((0, 1), rec["per_seed"]):
        trials = [t for t in rec["trials"] if t["seed"] == seed]
        first = [t for t in trials if t["own_loss_weight"] == 1.0]
        assert [t["lr"] for t in first] == [1e-2, 3e-2]  # the first weight sweeps every rate
        rate = pick(first, key=lambda t: t["val_score"])["lr"]
        assert [(t["own_loss_weight"], t["lr"]) for t in trials[2:]] == [(3.0, rate), (0.0, rate)]  # one trial each
        best = pick(trials, key=lambda t: t["val_score"])
        assert (chosen["selected_lr"], chosen["selected_own_loss_weight"], chosen["val_score"]) == \
            (best["lr"], best["own_loss_weight"], best["val_score"])
    # Each trial's weight is the weight its model trained with (not only the recorded one).
    assert trained == [(t["own_loss_weight"], t["lr"]) for t in rec["trials"]]
    heavy = any(s["selected_own_loss_weight"] == 3.0 for s in rec["per_seed"])
    assert heavy == any("highest own-loss weight" in n for n in rec["notes"])
    # Single maps have no read-outs to weigh: one grid of rates, no weights recorded.
    single = train_probe(files["train"], files["test"], val_features=files["val"], key=KEYS[1], epochs=2,
                         lrs=[1e-2], own_loss_weights=[1, 3], progress=False, out=tmp_path / "single")
    assert single["config"]["own_loss_weights"] is None and len(single["trials"]) == 1
    assert "own_loss_weight" not in single["trials"][0] and "selected_own_loss_weight" not in single["per_seed"][0]
