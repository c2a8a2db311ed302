"""Every metric of localfeat.eval.metrics against a case computed by hand."""
import math

import numpy as np
import pytest

from localfeat.eval import metrics


def test_matching_accuracy_is_inclusive_and_per_threshold():
    d = [0.5, 1.0, 1.5, 3.0, 20.0]
    acc = metrics.matching_accuracy(d, thresholds=(1, 2, 3, 15, 25))
    np.testing.assert_allclose(acc, [2 / 5, 3 / 5, 4 / 5, 4 / 5, 1.0])
    assert metrics.correct_counts(d, thresholds=(1, 3)).tolist() == [2, 4]


def test_matching_accuracy_without_matches_is_zero():
    assert metrics.matching_accuracy([]).tolist() == [0.0] * 15


def test_reprojection_distances_by_hand():
    H = np.array([[2.0, 0, 1], [0, 2.0, 0], [0, 0, 1]])  # x' = 2x + 1, y' = 2y
    k0 = np.array([[0, 0], [1, 1], [3, 2]], np.float32)
    k1 = np.array([[1, 0], [3, 5], [7, 4]], np.float32)
    d = metrics.reprojection_distances(k0, k1, [[0, 0], [1, 1], [2, 0]], H)
    # (1,0)-(1,0) = 0; (3,2)-(3,5) = 3; (7,4)-(1,0) = sqrt(36 + 16)
    np.testing.assert_allclose(d, [0.0, 3.0, math.sqrt(52)])
    assert d.dtype == np.float64


def test_reprojection_distances_projective_division():
    H = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.5, 0, 1]])  # x' = x / (0.5 x + 1)
    d = metrics.reprojection_distances([[2.0, 2.0]], [[1.0, 1.0]], [[0, 0]], H)
    np.testing.assert_allclose(d, [0.0])


def test_mutual_nearest_neighbours_by_hand_with_ties_to_lowest_index():
    a = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    b = np.array([[0, 1], [1, 0], [1, 0]], np.float32)  # b1 and b2 are identical: a0 -> b1 (lowest)
    m = metrics.mutual_nn_matches(a, b)
    # a0 -> b1, b1 -> a0: kept. a1 -> b0, b0 -> a1 (1 > 0.8): kept. a2 -> b0 (0.8 > 0.6) but b0 -> a1: dropped.
    assert m.tolist() == [[0, 1], [1, 0]]


def test_pair_weighted_aggregation_is_not_the_mean_of_groups():
    values = np.array([[1.0], [1.0], [0.0]])
    out = metrics.aggregate_over_pairs(values, ["i", "i", "v"])
    assert out["overall"].tolist() == [pytest.approx(2 / 3)]  # (1 + 1 + 0) / 3, not (1 + 0) / 2
    assert out["illumination"].tolist() == [1.0]
    assert out["viewpoint"].tolist() == [0.0]
    assert metrics.aggregate_over_pairs(values[:2], ["v", "v"])["illumination"] is None


def test_sequence_type():
    assert metrics.sequence_type("i_ajuntament") == "i"
    assert metrics.sequence_type("v_boat") == "v"
    with pytest.raises(ValueError, match="i_"):
        metrics.sequence_type("boat")


def test_homography_accuracy_counts_failures_as_wrong():
    acc = metrics.homography_accuracy([0.5, 2.0, math.inf], thresholds=(1, 3, 5))
    np.testing.assert_allclose(acc, [1 / 3, 2 / 3, 2 / 3])


def test_error_auc_by_hand():
    # Points (0,0), (0,0.5), (2,1). t=1: area of recall 0.5 over [0,1] = 0.5 -> 0.5.
    # t=3: (0.5 + 1) / 2 * 2 + 1 * 1 = 2.5 -> 2.5 / 3.
    auc = metrics.error_auc([2.0, 0.0], thresholds=(1, 3))
    np.testing.assert_allclose(auc, [0.5, 2.5 / 3])
    np.testing.assert_allclose(metrics.error_auc([0.0, 0.0], thresholds=(1, 5)), [1.0, 1.0])
    np.testing.assert_allclose(metrics.error_auc([math.inf, math.inf], thresholds=(1,)), [0.0])


# A 10 x 10 image pair related by a translation of one pixel to the right.
H_SHIFT = np.array([[1.0, 0, 1], [0, 1, 0], [0, 0, 1]])
K0 = np.array([[0, 0], [5, 5], [9, 9]], np.float32)      # (9,9) -> (10,9): outside image B
K1 = np.array([[1, 0], [6, 5.5], [3, 3]], np.float32)    # all map back inside image A


def test_repeatability_by_hand():
    # Counted: A 2 points, B 3 points. A: (1,0) has B's (1,0) at 0; (6,5) has (6,5.5) at 0.5 -> 2.
    # B: (1,0) and (6,5.5) repeated, (3,3) is 3.6 px from both warped A points -> 2. (2 + 2) / 5.
    assert metrics.repeatability(K0, K1, H_SHIFT, (10, 10), (10, 10), threshold=1.0) == pytest.approx(0.8)
    assert metrics.repeatability(K0, K1, H_SHIFT, (10, 10), (10, 10), threshold=0.4) == pytest.approx(2 / 5)
    assert metrics.repeatability(K0[:0], K1[:0], H_SHIFT, (10, 10), (10, 10)) == 0.0


def test_matching_score_by_hand():
    # (0,0) correct (0 px), (1,1) correct (0.5 px), (2,2) has its image-A point outside the common view.
    score = metrics.matching_score(K0, K1, [[0, 0], [1, 1], [2, 2]], H_SHIFT, (10, 10), (10, 10), threshold=1.0)
    assert score == pytest.approx((2 / 2 + 2 / 3) / 2)
    assert metrics.matching_score(K0, K1, np.zeros((0, 2)), H_SHIFT, (10, 10), (10, 10)) == 0.0


def test_mma_from_published_sums():
    np.testing.assert_allclose(metrics.mma_from_published_sums({1: 27.0, 2: 54.0}, 540), [0.05, 0.1])
