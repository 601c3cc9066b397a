"""Zero-shot segmentation from concept maps, on planted maps whose answer is known.

The concepts are stored in another order than the classes, by a permutation that is not its own inverse, so a
class-to-concept lookup taken the wrong way round scores differently from the right one. What could break: that
lookup, the upsampling to label size, the score and what the record says about the run.
"""

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import jaccard_score

from helpers import CLASSES, REF, labels
from probekit.errors import FeatureFileError, ProbekitError
from probekit.probes.zeroshot import zero_shot_segmentation
from probekit.store import write_features

CONCEPTS = ["b", "background", "a"]  # class i is concept channel (1, 2, 0)[i]; the inverse lookup is (2, 0, 1)


def _file(path, maps_of_class=None, *, n=6, seed=0, concepts=CONCEPTS, mode="output", maps=None, notes=None,
          provenance=None):
    """A feature file of ``n`` synthetic label maps and concept maps (n, concepts, 8, 8): by default the channel of
    concept ``maps_of_class[c]`` is 1 exactly where class c is (on the 8x8 grid the labels are drawn on)."""
    seg, depth, sal = labels(np.random.default_rng(seed), n)
    if maps is None:
        grid = seg[:, ::2, ::2]
        maps = np.zeros((n, len(concepts), 8, 8), dtype=np.float32)
        for ci, cls in enumerate(CLASSES):
            maps[:, concepts.index(maps_of_class[cls])] += grid == ci
    ids = [f"synthetic/test/{i:06d}" for i in range(n)]
    if provenance is None:
        provenance = {"extractor": {"name": "synthetic", "concepts": list(concepts), "concept_layers": [0, 1]},
                      "notes": list(notes or [])}
    return write_features(path, {f"concepts={mode}": maps}, {"seg": seg, "depth": depth, "saliency": sal}, ids,
                          attrs={"extractor": "planted", "dataset": {**REF, "split": "test"}, "provenance": provenance,
                                 "timesteps": [200, 600]}, feature_dtype="float32"), seg


IDENTITY = {c: c for c in CLASSES}


def test_maps_that_light_up_each_class_score_perfectly_whatever_the_concept_order(tmp_path):
    path, _ = _file(tmp_path / "c.h5", IDENTITY)
    rec = zero_shot_segmentation(path, out=tmp_path / "zs")
    assert rec["main_score"] == 1.0 and rec["metrics"]["pixel_acc"] == 1.0
    assert rec["metrics"]["per_class_iou"] == {"background": 1.0, "a": 1.0, "b": 1.0}


def test_swapped_object_concepts_score_what_the_swap_predicts(tmp_path):
    # The concept "b" lights up the pixels of class a and "a" those of b: every object pixel is predicted as the
    # other object, so IoU is 1 for the background and 0 for a and b.
    path, seg = _file(tmp_path / "c.h5", {"background": "background", "a": "b", "b": "a"})
    rec = zero_shot_segmentation(path, out=tmp_path / "zs")
    assert rec["metrics"]["per_class_iou"] == {"background": 1.0, "a": 0.0, "b": 0.0}
    assert rec["main_score"] == pytest.approx(1 / 3, abs=1e-12)
    assert rec["metrics"]["pixel_acc"] == pytest.approx(float(np.mean(seg == 0)), abs=1e-12)
    assert rec["metrics"]["num_pixels"] == seg.size


def test_random_maps_score_as_sklearn_scores_their_upsampled_argmax(tmp_path):
    """Maps are upsampled bilinearly (half-pixel centres) to the label size, each class reads its concept's
    channel, and mIoU is that of the whole set: checked against scikit-learn on maps of noise, read in batches
    that do not divide the file."""
    rng = np.random.default_rng(3)
    maps = rng.random((7, 3, 8, 8), dtype=np.float32)
    path, seg = _file(tmp_path / "c.h5", n=7, maps=maps)
    up = F.interpolate(torch.from_numpy(maps), size=(16, 16), mode="bilinear", align_corners=False)
    pred = up[:, [CONCEPTS.index(c) for c in CLASSES]].argmax(1).numpy()
    expected = jaccard_score(seg.ravel(), pred.ravel(), average=None, labels=[0, 1, 2])
    rec = zero_shot_segmentation(path, out=tmp_path / "zs", batch_size=3)
    np.testing.assert_allclose(list(rec["metrics"]["per_class_iou"].values()), expected, rtol=0, atol=1e-12)
    assert rec["main_score"] == pytest.approx(expected.mean(), abs=1e-12)


def test_the_record_says_what_ran_and_where(tmp_path):
    path, _ = _file(tmp_path / "c.h5", IDENTITY, mode="cross", notes=["planted maps"])
    started = time.perf_counter()
    rec = zero_shot_segmentation(path, mode="cross", results_root=tmp_path / "results")
    took = time.perf_counter() - started
    # The wall time: seconds of this call, to the millisecond (a bound, not a speed requirement).
    assert isinstance(rec["wall_time_s"], float) and 0 <= rec["wall_time_s"] <= took + 1e-3
    assert rec["wall_time_s"] == round(rec["wall_time_s"], 3)
    run = tmp_path / "results" / "planted" / "synthetic" / "seg" / "concept-cross-zeroshot"
    assert rec["_path"] == str(run / "result.json")
    saved = json.loads((run / "result.json").read_text())
    for r in (rec, saved):
        assert r["task"] == "seg" and r["main_score_name"] == "mIoU" and r["higher_is_better"] is True
        assert r["extractor"] == "planted" and r["dataset"] == "synthetic" and r["seeds"] == []
        assert r["probe"] == {"name": "concept-cross-zeroshot", "fusion": "zero-shot", "head": "argmax-cross",
                              "feature_keys": ["concepts=cross"], "timestep": None, "layer": None,
                              "timesteps": [200, 600], "layers": [0, 1], "fusion_weights": None}
        assert r["config"] == {"mode": "cross", "concepts": CONCEPTS, "classes": CLASSES, "trained": False,
                               "eval_features": str(path)}
        assert r["features"]["eval"]["num_samples"] == 6 and r["features"]["eval"]["split"] == "test"
        assert r["features"]["eval"]["path"] == str(path.resolve())
        assert r["features"]["eval"]["provenance"]["extractor"]["concepts"] == CONCEPTS
        assert r["provenance"]["stage"] == "zeroshot" and r["notes"] == ["planted maps"]
        assert r["metrics_info"]["mIoU"]["higher_is_better"] is True
    # An existing run is kept with "skip", refused by default.
    assert zero_shot_segmentation(path, mode="cross", results_root=tmp_path / "results", overwrite="skip") is None
    with pytest.raises(ProbekitError, match="exists"):
        zero_shot_segmentation(path, mode="cross", results_root=tmp_path / "results")


def test_by_default_a_run_goes_under_results_in_the_working_folder(tmp_path, monkeypatch):
    provenance = {"extractor": {"concepts": CONCEPTS}}  # no notes, no concept layers recorded
    path, _ = _file(tmp_path / "c.h5", IDENTITY, provenance=provenance)
    monkeypatch.chdir(tmp_path)
    rec = zero_shot_segmentation(path)
    assert rec["_path"] == str(Path("results") / "planted" / "synthetic" / "seg" / "concept-output-zeroshot" /
                               "result.json")
    assert (tmp_path / rec["_path"]).is_file() and rec["notes"] == [] and rec["probe"]["layers"] is None


def test_what_zero_shot_cannot_score_is_refused_naming_it(tmp_path):
    path, _ = _file(tmp_path / "c.h5", IDENTITY)
    with pytest.raises(FeatureFileError, match="holds no concept maps 'concepts=cross'"):
        zero_shot_segmentation(path, mode="cross", out=tmp_path / "zs")
    short, _ = _file(tmp_path / "short.h5", n=2, concepts=["background", "a"], maps=np.ones((2, 2, 8, 8), "float32"))
    with pytest.raises(ProbekitError, match=r"lacks b \(concepts: background, a\)"):
        zero_shot_segmentation(short, out=tmp_path / "zs2")
    unnamed, _ = _file(tmp_path / "unnamed.h5", n=2, maps=np.ones((2, 3, 8, 8), "float32"), provenance={})
    with pytest.raises(ProbekitError, match=r"lacks background, a, b \(concepts: \)"):
        zero_shot_segmentation(unnamed, out=tmp_path / "zs2")
    bad, _ = _file(tmp_path / "nan.h5", n=4, maps=np.ones((4, 3, 8, 8), dtype=np.float32))
    with h5py.File(bad, "r+") as f:  # damaged after writing (the writer refuses NaN)
        f["features/concepts=output"][2, 1, 3, 3] = np.nan
    with pytest.raises(FeatureFileError, match="hold NaN or inf"):
        zero_shot_segmentation(bad, out=tmp_path / "zs3")
    assert not (tmp_path / "zs").exists() and not (tmp_path / "zs2").exists() and not (tmp_path / "zs3").exists()
