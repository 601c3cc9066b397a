import numpy as np
import pytest

from probekit.probes.ceiling import class_fractions, grid_ceiling

# 4x4, a 2x2 grid: one token holds three pixels of class 1 and one of class 0; the others are pure.
SEG = np.array([[1, 1, 0, 0],
                [1, 0, 0, 0],
                [0, 0, 2, 2],
                [0, 0, 2, 2]])


def test_class_fractions_count_each_tokens_pixels():
    frac = class_fractions(SEG, 2, 3)
    assert frac[:, 0, 0].tolist() == [0.25, 0.75, 0.0]
    assert frac[:, 1, 1].tolist() == [0.0, 0.0, 1.0] and frac[:, 0, 1].tolist() == [1.0, 0.0, 0.0]


def test_grid_ceiling_by_hand():
    got = grid_ceiling([SEG], 2, 3)
    # majority: the mixed token draws class 1 over one background pixel. IoU: 0 -> 8/9, 1 -> 3/4, 2 -> 1.
    assert got["majority"] == pytest.approx((8 / 9 + 0.75 + 1) / 3)
    # all background: IoU 0 -> 9/16, the two object classes 0.
    assert got["all_background"] == pytest.approx(9 / 16 / 3)


def test_labels_made_of_whole_tokens_reach_the_ceiling_of_one():
    blocky = np.kron(np.array([[0, 1], [2, 0]]), np.ones((4, 4), dtype=np.int64))
    assert grid_ceiling([blocky, blocky.T], 2, 3)["majority"] == pytest.approx(1.0)
    # Bilinear upsampling blends neighbouring tokens: at the corner of the class-1 token its two class-0
    # neighbours together (2 x 0.625 x 0.375) outweigh it (0.625^2), so "fractions" loses that corner pixel, and
    # the class-2 token its corner too. IoU: 0 -> 32/34, 1 -> 15/16, 2 -> 15/16.
    got = grid_ceiling([blocky], 2, 3)["fractions"]
    assert got == pytest.approx((32 / 34 + 15 / 16 + 15 / 16) / 3)
    stripes = np.kron(np.array([[0, 1], [0, 1]]), np.ones((4, 4), dtype=np.int64))  # one neighbour at most
    assert grid_ceiling([stripes, stripes.T], 2, 3)["fractions"] == pytest.approx(1.0)


def test_ignored_pixels_neither_vote_nor_count():
    seg = SEG.copy()
    seg[0, 0] = seg[0, 1] = 255  # the mixed token now holds one 1 and one 0: a tie, and fewer scored pixels
    frac = class_fractions(seg, 2, 3, ignore_index=255)
    assert frac[:, 0, 0].tolist() == [0.5, 0.5, 0.0]
    got = grid_ceiling([seg], 2, 3, ignore_index=255)
    assert got["all_background"] == pytest.approx(9 / 14 / 3)


def test_a_label_that_does_not_split_into_the_grid_is_refused():
    with pytest.raises(ValueError, match="5x4 label does not split into a 2x2"):
        grid_ceiling([np.zeros((5, 4), dtype=np.int64)], 2, 3)
