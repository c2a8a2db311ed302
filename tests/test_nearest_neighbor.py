"""Blockwise nearest-neighbour matching equals brute force on the full similarity matrix."""
import numpy as np
import pytest

import localfeat
from localfeat.matchers.nearest_neighbor import match_nearest_neighbours
from localfeat.types import Features


def brute_force(d0, d1, mutual, ratio, max_distance):
    """Reference: full matrix in float64, numpy argmax (lowest index on ties)."""
    if len(d0) == 0 or len(d1) == 0:
        return np.zeros((0, 2), np.int64)
    sim = d0.astype(np.float64) @ d1.astype(np.float64).T
    dist = np.sqrt(np.clip(2 - 2 * sim, 0, None))

    def one_way(s, d):
        nn = np.argmax(s, axis=1)
        keep = np.ones(len(s), bool)
        srt = np.sort(d, axis=1)
        if ratio is not None and d.shape[1] > 1:
            keep &= srt[:, 0] < ratio * srt[:, 1]
        if max_distance is not None:
            keep &= srt[:, 0] <= max_distance
        return nn, keep

    nn01, k01 = one_way(sim, dist)
    keep = k01.copy()
    if mutual:
        nn10, k10 = one_way(sim.T, dist.T)
        keep &= k10[nn01] & (nn10[nn01] == np.arange(len(d0)))
    i = np.flatnonzero(keep)
    return np.stack([i, nn01[i]], 1)


def random_desc(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n0,n1", [(0, 5), (5, 0), (0, 0), (1, 1), (1, 7), (7, 1), (50, 80), (333, 257)])
@pytest.mark.parametrize("mutual,ratio,max_distance", [
    (True, None, None), (False, None, None), (True, 0.9, None), (False, 0.8, 1.2), (True, None, 1.1)])
def test_blockwise_equals_brute_force(n0, n1, mutual, ratio, max_distance):
    d0, d1 = random_desc(n0, 16, n0 + 1), random_desc(n1, 16, n1 + 1000)
    expected = brute_force(d0, d1, mutual, ratio, max_distance)
    for block_rows in (3, 64, None):
        idx, scores = match_nearest_neighbours(d0, d1, mutual, ratio, max_distance, block_rows=block_rows)
        assert idx.dtype == np.int64 and idx.shape == expected.shape
        assert np.array_equal(idx, expected), f"block_rows={block_rows}"
        if len(idx):
            assert np.allclose(scores, np.sum(d0[idx[:, 0]] * d1[idx[:, 1]], 1), atol=1e-6)


def test_ties_take_the_lowest_index_in_both_directions():
    # Rows 0 and 1 of d1 are identical: row 0 of d0 must pick column 0, and column 0's best row
    # is row 0 (row 2 of d0 duplicates row 0).
    d0 = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    d1 = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    for block_rows in (1, 2, 3):
        idx, _ = match_nearest_neighbours(d0, d1, mutual=True, block_rows=block_rows)
        assert idx.tolist() == [[0, 0], [1, 2]]
        idx, _ = match_nearest_neighbours(d0, d1, mutual=False, block_rows=block_rows)
        assert idx.tolist() == [[0, 0], [1, 2], [2, 0]]


def test_ratio_with_duplicate_neighbours_rejects():
    d0 = np.array([[1, 0]], np.float32)
    d1 = np.array([[1, 0], [1, 0]], np.float32)
    idx, _ = match_nearest_neighbours(d0, d1, mutual=False, ratio=0.99)
    assert len(idx) == 0  # best and second-best equally close: ambiguous


def test_matcher_object_and_errors():
    d = random_desc(20, 8, 3)
    f = Features(np.zeros((20, 2)), np.ones(20), d, (10, 10))
    m = localfeat.load_matcher("nearest_neighbor").match(f, f)
    assert m.indices.tolist() == [[i, i] for i in range(20)] and np.allclose(m.scores, 1, atol=1e-6)
    g = Features(np.zeros((20, 2)), np.ones(20), random_desc(20, 4, 1), (10, 10))
    with pytest.raises(ValueError, match="descriptor dimensions differ"):
        localfeat.load_matcher("nearest_neighbor").match(f, g)
