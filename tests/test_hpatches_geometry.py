"""localfeat.geometry: warps, corner error and the RANSAC wrapper, against hand-computed cases."""
import math

import numpy as np
import pytest

from localfeat import geometry


def test_warp_points_by_hand():
    H = np.array([[0, -1, 10], [1, 0, 0], [0, 0, 1]], np.float64)  # rotate 90 degrees, shift x by 10
    out = geometry.warp_points([[1, 2], [0, 0]], H)
    np.testing.assert_allclose(out, [[8, 1], [10, 0]])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        geometry.warp_points([1, 2, 3], H)


def test_inside_image_uses_pixel_centres():
    inside = geometry.inside_image([[0, 0], [9, 4], [9.01, 0], [-0.01, 2], [np.nan, 1]], (10, 5))
    assert inside.tolist() == [True, True, False, False, False]


def test_corner_error_by_hand():
    shifted = np.array([[1, 0, 3], [0, 1, 4], [0, 0, 1]], np.float64)
    assert geometry.corner_error(np.eye(3), shifted, (640, 480)) == pytest.approx(5.0)
    # Scale 2 about the origin: corners (0,0),(9,0),(0,4),(9,4) move by 0, 9, 4, sqrt(97).
    scale = np.diag([2.0, 2.0, 1.0])
    expected = (0 + 9 + 4 + math.sqrt(97)) / 4
    assert geometry.corner_error(np.eye(3), scale, (10, 5)) == pytest.approx(expected)
    assert geometry.corner_error(np.eye(3), None, (10, 5)) == math.inf


def test_estimate_homography_recovers_exact_model_and_rejects_outliers():
    rng = np.random.default_rng(0)
    H = geometry.homography_about_centre((200, 100), angle_deg=12, scale=1.3, perspective=(1e-4, -2e-4))
    src = rng.uniform(0, 200, size=(60, 2))
    dst = geometry.warp_points(src, H)
    dst[:10] += 40.0  # outliers
    H_est, inliers = geometry.estimate_homography(src, dst, geometry.RansacParams(threshold=1.0))
    assert inliers.tolist() == [False] * 10 + [True] * 50
    assert geometry.corner_error(H, H_est, (200, 100)) < 1e-3
    none, mask = geometry.estimate_homography(src[:3], dst[:3])
    assert none is None and mask.tolist() == [False] * 3


def test_unknown_ransac_method_names_the_choices():
    with pytest.raises(ValueError, match="opencv"):
        geometry.estimate_homography(np.zeros((5, 2)), np.zeros((5, 2)), geometry.RansacParams(method="magic"))


def test_homography_about_centre_keeps_the_centre():
    H = geometry.homography_about_centre((101, 51), angle_deg=30, scale=0.7)
    np.testing.assert_allclose(geometry.warp_points([[50, 25]], H), [[50, 25]], atol=1e-9)
