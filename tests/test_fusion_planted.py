"""Fusion weights mean something: planted-signal feature stacks whose answer is known, probed with the
default training settings over three seeds.

(a) One (timestep, layer) map carries the labels, the others are noise: global fusion puts > 0.9 of its weight
    on that map and scores as well as that map alone, within the seed-to-seed spread; spatial fusion does too.
(b) Two maps carry complementary halves of the image: spatial fusion weights each map where it is informative
    and beats every single map; global fusion beats them too.
"""

import pytest
from safetensors.torch import load_file

from probekit.probes.trainer import train_probe
from helpers import half_and_half, informative, noise, write_synthetic as _write

SEEDS = [0, 1, 2]
KEYS = ["t=100/layer=0", "t=500/layer=0", "t=900/layer=0", "t=100/layer=1"]


def one_informative(onehot, rng):
    return {k: (informative if k == "t=500/layer=0" else noise)(onehot, rng) for k in KEYS}


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    return {name: {split: _write(root / f"{name}-{split}.h5", split, n, fn, seed)
                   for split, n, seed in (("train", 160, 0), ("val", 32, 1), ("test", 48, 2))}
            for name, fn in (("one", one_informative), ("halves", half_and_half))}


def _probe(files, tmp_path, name, **kw):
    """Default settings (learning-rate grid, epochs, batch size, fusion rate), three seeds."""
    return train_probe(files["train"], files["test"], val_features=files["val"], out=tmp_path / name,
                       progress=False, seeds=SEEDS, device="cpu", **kw)


def _within_spread(fused, single):
    """Fused is not worse than single by more than the larger of their seed-to-seed spreads."""
    spread = max(fused["main_score_std"], single["main_score_std"], 1e-3)
    return fused["main_score"] >= single["main_score"] - spread


@pytest.mark.slow
def test_one_informative_map_gets_the_weight_and_fusion_matches_it(stacks, tmp_path):
    files = stacks["one"]
    single = _probe(files, tmp_path, "single", key="t=500/layer=0")
    noisy = _probe(files, tmp_path, "noisy", key="t=100/layer=0")
    glob = _probe(files, tmp_path, "global", fusion="global")
    fw = glob["probe"]["fusion_weights"]
    assert fw["seeds"] == 3 and len(fw["per_seed"]) == 3
    for weights in fw["per_seed"]:  # every seed, not only on average
        assert weights["t=500/layer=0"] > 0.9, weights
    assert single["main_score"] > 0.9 and noisy["main_score"] < 0.6
    assert _within_spread(glob, single), (glob["main_score"], glob["main_score_std"], single["main_score"])
    spatial = _probe(files, tmp_path, "spatial", fusion="spatial")
    assert spatial["probe"]["fusion_weights"]["per_key"]["t=500/layer=0"] > 0.9
    assert _within_spread(spatial, single), (spatial["main_score"], single["main_score"])


@pytest.mark.slow
def test_complementary_maps_fuse_to_beat_each_alone_and_spatial_weights_point_at_the_right_half(stacks, tmp_path):
    files = stacks["halves"]
    singles = [_probe(files, tmp_path, f"single{k}", key=k) for k in ("t=100/layer=0", "t=900/layer=0")]
    best_single = max(s["main_score"] for s in singles)
    spatial = _probe(files, tmp_path, "spatial", fusion="spatial")
    spread = max([spatial["main_score_std"]] + [s["main_score_std"] for s in singles])
    assert spatial["main_score"] > best_single + 2 * spread + 0.05, (spatial["main_score"], best_single, spread)
    weights = load_file(tmp_path / "spatial" / "spatial_weights.safetensors")["weights"]  # (img, key, h, w)
    a_left, a_right = weights[:, 0, :, :4].mean().item(), weights[:, 0, :, 4:].mean().item()
    assert a_left > 0.8 and a_right < 0.2, (a_left, a_right)  # map a where it knows, map b elsewhere
    glob = _probe(files, tmp_path, "global", fusion="global")
    assert glob["main_score"] > best_single, (glob["main_score"], best_single)
