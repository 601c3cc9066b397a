import numpy as np
import pytest

from probekit.datasets import load_dataset, load_manifest
from probekit.datasets.shapeworld import ShapeWorld
from probekit.errors import ProbekitError

N = 60  # samples checked per property


@pytest.fixture(scope="module")
def train():
    return load_dataset("shapeworld", "train")


@pytest.fixture(scope="module")
def samples(train):
    return [train[i] for i in range(N)]


def test_same_seed_and_index_give_identical_samples(train):
    other = ShapeWorld("train")
    for i in (0, 7, 1999):
        a, b = train[i], other[i]
        assert a.id == b.id and a.caption == b.caption
        for name in ("image", "seg", "depth", "saliency"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_splits_and_seeds_differ(train):
    assert not np.array_equal(train[0].image, ShapeWorld("test")[0].image)
    assert not np.array_equal(train[0].image, ShapeWorld("train", seed=1)[0].image)


def test_split_sizes_follow_the_manifest():
    manifest, digest = load_manifest("shapeworld")
    for split, size in manifest["splits"].items():
        ds = ShapeWorld(split)
        assert len(ds) == size
        assert ds.reference()["manifest_sha256"] == digest
    assert (len(ShapeWorld("train")), len(ShapeWorld("val")), len(ShapeWorld("test"))) == (2000, 500, 500)
    with pytest.raises(IndexError):
        ShapeWorld("val")[500]
    with pytest.raises(ProbekitError, match="no split"):
        ShapeWorld("validation")


def test_arrays_have_the_documented_types(samples):
    s = samples[0]
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert s.seg.shape == (64, 64) and s.seg.dtype == np.uint8
    assert s.depth.shape == (64, 64) and s.depth.dtype == np.float32
    assert set(np.unique(s.saliency)) <= {0, 1}
    assert all(s.seg.max() < 7 for s in samples)


def test_one_to_four_objects_from_all_classes(samples, train):
    counts = [len(s.meta["objects"]) for s in samples]
    assert min(counts) >= 1 and max(counts) <= 4
    seen = {o["shape"] for s in samples for o in s.meta["objects"]}
    assert seen == set(train.classes[1:]) and len(seen) >= 5


def test_colour_is_drawn_independently_of_class(train):
    pairs = {(o["shape"], o["colour"]) for i in range(400) for o in train[i].meta["objects"]}
    for shape in train.classes[1:]:
        colours = {c for s, c in pairs if s == shape}
        assert len(colours) >= len(train.colours) - 1, f"{shape} only ever drawn in {colours}"


def test_occluders_are_nearer_and_depth_matches_the_visible_object(train):
    for i in range(N):
        s, full = train[i], train.full_masks(i)
        inst = s.meta["instance"]
        dist = np.array([o["distance_m"] for o in s.meta["objects"]])
        for k in range(len(full)):
            covered = full[k]
            shown = inst[covered]
            # Wherever object k's silhouette lies, what is shown is object k or something nearer.
            assert np.all(shown >= 0)
            assert np.all(dist[shown] <= dist[k] + 1e-9)
            on_k = inst == k
            np.testing.assert_allclose(s.depth[on_k], dist[k], rtol=1e-6)
            assert np.all(s.seg[on_k] == s.meta["objects"][k]["class"])


def test_nearer_objects_stand_lower_and_larger(train):
    for i in range(N):
        objs = train[i].meta["objects"]
        full = train.full_masks(i)
        for k, o in enumerate(objs):
            rows = np.nonzero(full[k].any(1))[0]
            if rows.size:  # the silhouette lies inside its box, which rests on the ground row
                assert rows.max() + 0.5 <= o["base_row_px"] + 1 and rows.min() + 0.5 >= o["base_row_px"] - o["size_px"] - 1
        for a in objs:
            for b in objs:
                if a["distance_m"] < b["distance_m"]:
                    assert a["base_row_px"] > b["base_row_px"]
                    assert a["size_px"] / a["size_m"] > b["size_px"] / b["size_m"]


def test_background_depth_grows_towards_the_horizon(samples):
    for s in samples:
        ground = s.seg == 0
        column = s.depth[:, 0][ground[:, 0]]
        assert np.all(np.diff(column) <= 1e-4), "ground depth must fall row by row away from the horizon"
        assert s.depth.max() <= 50.0 and s.depth.min() > 0


def test_saliency_is_the_nearest_large_visible_object(samples):
    for s in samples:
        assert np.all(s.seg[s.saliency == 1] > 0), "saliency must lie inside the foreground"
        visible = [(k, o) for k, o in enumerate(s.meta["objects"]) if o["visible_px"] > 0]
        assert (s.saliency.sum() > 0) == bool(visible)
        k = s.meta["salient_object"]
        largest = max(o["visible_px"] for _, o in visible)
        large = [o["distance_m"] for _, o in visible if o["visible_px"] >= 0.5 * largest]
        assert s.meta["objects"][k]["distance_m"] == min(large)
        np.testing.assert_array_equal(s.saliency == 1, s.meta["instance"] == k)


def test_caption_names_every_visible_class(samples, train):
    for s in samples:
        for cls in np.unique(s.seg):
            if cls:
                assert train.classes[cls] in s.caption, (s.id, s.caption)
        nearest = min((o for o in s.meta["objects"] if o["visible_px"]), key=lambda o: o["distance_m"])
        assert s.caption.split(" in front of ")[0].endswith(nearest["shape"])


def test_scene_overrides_bring_objects_nearer_and_fewer():
    scene = {"objects_per_image": [1, 2], "object_distance_m": [2.5, 4.0]}
    near = ShapeWorld("pretrain", size=40, scene=scene)
    default = ShapeWorld("pretrain", size=40)
    counts, distances = [], []
    for i in range(40):
        objects = near[i].meta["objects"]
        counts.append(len(objects))
        distances += [o["distance_m"] for o in objects]
    assert set(counts) == {1, 2}
    assert 2.5 <= min(distances) and max(distances) <= 4.0
    mean_size = np.mean([o["size_px"] for i in range(40) for o in near[i].meta["objects"]])
    default_size = np.mean([o["size_px"] for i in range(40) for o in default[i].meta["objects"]])
    assert mean_size > 1.5 * default_size
    # the override is part of what a feature file records; without one the record is unchanged
    assert near.reference()["params"]["scene"] == scene
    assert "scene" not in default.reference()["params"]
    assert near.reference()["params_hash"] != default.reference()["params_hash"]


@pytest.mark.parametrize("scene, words", [
    ({"object_colour": [1, 2]}, "no setting object_colour"),
    ({"object_distance_m": [6, 3]}, "0 < low <= high"),
    ({"object_distance_m": [3]}, "two numbers"),
    ({"objects_per_image": [1, 2.5]}, "whole numbers"),
])
def test_bad_scene_overrides_are_refused_by_name(scene, words):
    with pytest.raises(ProbekitError, match=words):
        ShapeWorld("pretrain", scene=scene)
