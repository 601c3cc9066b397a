"""Fusion modes, heads and tasks on small synthetic feature files whose answer is known."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from helpers import half_and_half, informative, noise, write_synthetic as _write
from probekit.probes.fusion import GroupedFusion
from probekit.probes.trainer import train_probe
from probekit.registries import FUSIONS, HEADS
from probekit.store import FeatureReader, write_features


def two_timesteps(onehot, rng):
    # t=100 carries the labels, t=900 is pure noise, at two layers.
    return {"t=100/layer=0": informative(onehot, rng), "t=900/layer=0": noise(onehot, rng),
            "t=100/layer=1": informative(onehot, rng), "t=900/layer=1": noise(onehot, rng)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    out = {}
    for name, fn in (("steps", two_timesteps), ("halves", half_and_half)):
        out[name] = {split: _write(root / f"{name}-{split}.h5", split, n, fn, seed)
                     for split, n, seed in (("train", 48, 0), ("val", 16, 1), ("test", 24, 2))}
    return out


def _run(files, tmp_path, eval_features=None, **kw):
    return train_probe(files["train"], eval_features or files["test"], val_features=files["val"], out=tmp_path / "run",
                       overwrite="overwrite", progress=False, **{"epochs": 30, "lrs": [3e-2], **kw})


def test_linear_probe_reads_informative_features(files, tmp_path):
    rec = _run(files["steps"], tmp_path, key="t=100/layer=0")
    assert rec["main_score"] > 0.9
    noisy = _run(files["steps"], tmp_path, key="t=900/layer=0")
    assert noisy["main_score"] < 0.6


def test_global_fusion_learns_to_weight_the_informative_timestep(files, tmp_path):
    rec = _run(files["steps"], tmp_path, fusion="global", epochs=25)
    fw = rec["probe"]["fusion_weights"]
    assert fw["kind"] == "global" and fw["timesteps"] == [100, 900] and fw["layers"] == ["0", "1"]
    assert sum(fw["per_key"].values()) == pytest.approx(1.0)
    t100 = fw["per_key"]["t=100/layer=0"] + fw["per_key"]["t=100/layer=1"]
    assert t100 > 0.6, fw
    assert rec["main_score"] > 0.85


def test_spatial_fusion_weights_vary_across_the_image(files, tmp_path):
    rec = _run(files["halves"], tmp_path, fusion="spatial", epochs=30, lrs=[3e-3])
    weights = load_file(tmp_path / "run" / "spatial_weights.safetensors")["weights"]  # (img, key, h, w)
    assert weights.shape == (8, 2, 8, 8)
    torch.testing.assert_close(weights.sum(1), torch.ones(8, 8, 8))
    key_a_left, key_a_right = weights[:, 0, :, :4].mean(), weights[:, 0, :, 4:].mean()
    assert key_a_left > 0.6 and key_a_right < 0.4, (key_a_left, key_a_right)
    assert rec["probe"]["fusion_weights"]["kind"] == "spatial-mean"
    # A single global mix cannot do this as well.
    glob = _run(files["halves"], tmp_path, fusion="global", epochs=30, lrs=[3e-3])
    assert rec["main_score"] > glob["main_score"]


@pytest.mark.parametrize("head", HEADS.names())
@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_every_head_and_fusion_trains_and_records(files, tmp_path, head, fusion):
    kw = {"key": "t=100/layer=0"} if fusion == "single" else {}
    rec = _run(files["steps"], tmp_path, head=head, fusion=fusion, epochs=2, lrs=[1e-3, 1e-2], **kw)
    assert rec["probe"]["fusion"] == fusion and rec["probe"]["head"] == head
    lrs = [t["lr"] for t in rec["trials"]]
    if rec["config"]["own_loss_weights"]:  # the read-outs' second own-loss weight: one trial at the rate chosen
        assert lrs[:2] == [1e-3, 1e-2] and lrs[2:] == [lrs[0] if rec["trials"][0]["val_score"] >=
                                                       rec["trials"][1]["val_score"] else lrs[1]]
    else:
        assert lrs == [1e-3, 1e-2]
    best = max(t["val_score"] for t in rec["trials"])
    assert rec["config"]["val_score"] == best
    assert rec["config"]["selected_lr"] == next(t["lr"] for t in rec["trials"] if t["val_score"] == best)
    assert (tmp_path / "run" / "head.safetensors").is_file()
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["probe"]["feature_keys"] == rec["probe"]["feature_keys"]


def test_dpt_fuses_each_layer_separately(files):
    channels = {k: 3 for k in ("t=100/layer=0", "t=900/layer=0", "t=100/layer=1", "t=900/layer=1")}
    fusion = GroupedFusion("global", list(channels), channels, by_layer=True)
    assert [g.keys for g in fusion.groups] == [["t=100/layer=0", "t=900/layer=0"], ["t=100/layer=1", "t=900/layer=1"]]
    w = fusion.key_weights()
    assert w["t=100/layer=0"] + w["t=900/layer=0"] == pytest.approx(1.0)


def test_depth_probe_with_bins_and_regression(files, tmp_path):
    rec = _run(files["steps"], tmp_path, task="depth", fusion="concat", epochs=20, lrs=[3e-2])
    assert rec["main_score_name"] == "RMSE" and rec["higher_is_better"] is False
    m = rec["metrics"]
    assert m["delta1"] > 0.8 and m["RMSE"] < 1.5 and "AbsRel_aligned" in m
    reg = _run(files["steps"], tmp_path, task="depth", fusion="concat", epochs=20, depth_output="regression")
    assert reg["config"]["task_config"]["depth_output"] == "regression"
    # The sigmoid maps onto the depth range (hand-checked in tests/test_tasks.py); trained, it must beat the best
    # constant map of the range's middle, whose RMSE on these labels (3, 4 or 8 m) is over 2.5 m.
    assert reg["metrics"]["RMSE"] < 1.5 and reg["metrics"]["delta1"] > 0.7


def test_lower_is_better_selection_for_depth(files, tmp_path):
    rec = _run(files["steps"], tmp_path, task="depth", key="t=100/layer=0", epochs=3, lrs=[1e-4, 1e-2])
    best = min(t["val_score"] for t in rec["trials"])
    assert rec["config"]["val_score"] == best


def _rows_read(monkeypatch):
    """{split name: [positions in its file]} of every batch served while probes train and are scored (a spy on
    ProbeData.batches; training batches are the shuffled ones)."""
    from probekit.probes.data import ProbeData

    seen: dict[str, list[int]] = {}
    original = ProbeData.batches

    def batches(self, split, **kw):
        for positions, feats, target in original(self, split, **kw):
            name = "train" if split is self.train and kw.get("shuffle") else split.name
            seen.setdefault(name, []).extend(int(p) for p in positions)
            yield positions, feats, target

    monkeypatch.setattr(ProbeData, "batches", batches)
    return seen


def test_validation_defaults_to_a_seeded_slice_of_train_disjoint_from_the_rows_that_train(files, tmp_path, monkeypatch):
    train_ids = FeatureReader(files["steps"]["train"]).sample_ids
    slices = {}
    for seed in (0, 1):
        seen = _rows_read(monkeypatch)
        rec = train_probe(files["steps"]["train"], files["steps"]["test"], key="t=100/layer=0", epochs=2, lrs=[1e-2],
                          seeds=[seed], out=tmp_path / f"r{seed}", progress=False)
        assert rec["config"]["validation"] == {"from": "train", "fraction": 0.15, "rows": 7}
        trained, validated = set(seen["train"]), set(seen["val"])
        assert len(validated) == 7 and len(seen["val"]) == 7  # round(0.15 * 48), each row scored once
        assert not trained & validated, "validation rows leaked into training"
        assert trained | validated == set(range(48))  # every other row trains
        assert sorted(seen["train"]) == sorted(list(trained) * 2)  # two epochs, each row once per epoch
        slices[seed] = sorted(train_ids[r] for r in validated)
    assert slices[0] != slices[1], "the validation slice ignores the seed"
    assert slices[0] != train_ids[:7] and slices[0] != train_ids[-7:]  # drawn, not the file's first or last rows
    seen = _rows_read(monkeypatch)
    train_probe(files["steps"]["train"], files["steps"]["test"], key="t=100/layer=0", epochs=1, lrs=[1e-2], seeds=[0],
                out=tmp_path / "again", progress=False)
    assert sorted(train_ids[r] for r in set(seen["val"])) == slices[0]  # the same seed, the same slice


def test_train_limit_trains_on_the_first_rows_only(files, tmp_path, monkeypatch):
    seen = _rows_read(monkeypatch)
    rec = _run(files["steps"], tmp_path, key="t=100/layer=0", epochs=2, train_limit=10)
    assert rec["config"]["train_limit"] == 10
    train_ids = FeatureReader(files["steps"]["train"]).sample_ids
    assert sorted(train_ids[r] for r in seen["train"]) == sorted(train_ids[:10] * 2)  # those ten, once per epoch
    assert len(seen["val"]) == 16  # the validation file's rows are not cut
    with pytest.raises(Exception, match="exceeds the 48 training rows"):
        _run(files["steps"], tmp_path, key="t=100/layer=0", epochs=1, train_limit=100)


def test_depth_evaluation_crop_scores_the_pixels_inside_it_only(files, tmp_path):
    """Two evaluation files alike inside the crop box and wildly different outside it: cropped, their scores are
    equal to the last bit (the same trained probe, the same pixels); uncropped, they differ."""
    crop = [0.5, 1.0, 0.0, 0.5]  # the bottom-left quarter of the 16x16 labels
    with FeatureReader(files["steps"]["test"]) as r:
        keys, ids = r.keys, r.sample_ids
        maps = {k: r.read(k, range(r.num_samples)) for k in keys}
        labels = {name: r.read_labels(name, range(r.num_samples)) for name in ("seg", "depth", "saliency")}
        attrs = {"extractor": "synthetic", "dataset": r.dataset, "provenance": r.provenance}
    outside = labels["depth"].copy()
    outside[:, :8, :] = 9.5  # the top half and the right half are outside the box
    outside[:, :, 8:] = 9.5
    moved = write_features(tmp_path / "moved.h5", maps, {**labels, "depth": outside}, ids, attrs=attrs)
    common = dict(task="depth", key="t=100/layer=0", epochs=3, lrs=[3e-2])
    runs = {(name, c is not None): _run(files["steps"], tmp_path, eval_features=path, eval_crop=c, **common)
            for name, path in (("test", files["steps"]["test"]), ("moved", moved)) for c in (crop, None)}
    assert runs["test", True]["config"]["task_config"]["crop"] == crop
    assert runs["test", True]["metrics"] == runs["moved", True]["metrics"]
    assert runs["test", False]["metrics"]["RMSE"] != runs["moved", False]["metrics"]["RMSE"]


def test_two_identical_runs_give_the_same_record_bit_for_bit(files, tmp_path):
    """Same files, same settings, two seeds: the records (less wall times, creation time and paths) and the saved
    heads are identical on the CPU."""
    runs = [train_probe(files["steps"]["train"], files["steps"]["test"], val_features=files["steps"]["val"],
                        fusion="global", epochs=3, lrs=[1e-2, 3e-2], seeds=[0, 1], out=tmp_path / f"run{i}",
                        progress=False, device="cpu") for i in range(2)]

    def stable(rec):
        rec = json.loads(json.dumps(rec))
        for volatile in ("_path", "wall_time_s"):
            rec.pop(volatile)
        rec["provenance"].pop("created")
        for trial in rec["trials"]:
            trial.pop("wall_time_s")
        return rec

    assert stable(runs[0]) == stable(runs[1])
    for name in ("head.safetensors", "examples.safetensors"):  # (the header's metadata order may vary: not bytes)
        with safe_open(tmp_path / "run0" / name, "pt") as a, safe_open(tmp_path / "run1" / name, "pt") as b:
            assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys()), name
            for key in a.keys():
                assert torch.equal(a.get_tensor(key), b.get_tensor(key)), (name, key)


def test_activations_beyond_float16_survive_the_half_size_resident_copy(tmp_path):
    # A float32 file (real DiT activations exceed float16's 65,504) whose features fit memory only at half size:
    # the resident copy must not turn them into inf (it is bfloat16, not float16).
    from probekit.probes.config import ProbeConfig
    from probekit.probes.data import ProbeData

    def big(onehot, rng):
        return {"t=100/layer=0": informative(onehot, rng) * 1e5}

    train = _write(tmp_path / "train.h5", "train", 48, big, 0, feature_dtype="float32")
    test = _write(tmp_path / "test.h5", "test", 16, big, 1, feature_dtype="float32")
    cfg = ProbeConfig(task="seg", keys=["t=100/layer=0"], device="cpu", epochs=20, lrs=[3e-2])
    with ProbeData(cfg, train, test) as probe_data:
        budget = (probe_data.bytes_needed(2) + probe_data.bytes_needed(4)) // 2
    cfg.resident_bytes = budget
    with ProbeData(cfg, train, test) as probe_data:
        assert probe_data.mode == "resident"
        _, feats, _ = next(probe_data.batches(probe_data.train))
        assert torch.isfinite(feats["t=100/layer=0"]).all() and feats["t=100/layer=0"].abs().max() > 65504
    rec = train_probe(train, test, key="t=100/layer=0", out=tmp_path / "run", epochs=20, lrs=[3e-2],
                      device="cpu", progress=False, resident_bytes=budget)
    assert rec["main_score"] > 0.9
