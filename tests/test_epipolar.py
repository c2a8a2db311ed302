"""`geometry.epipolar_distances`: a hand-computed case, exact projections, bad input."""
import numpy as np
import pytest

from localfeat.geometry import epipolar_distances, project

K = np.array([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]])


def _pose(R, t):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def test_sideways_translation_gives_horizontal_lines():
    """Camera 1 moved along x: the epipolar line of (u, v) is the row y = v in the other image, so a point
    2 px below it is 2 px off in both images."""
    T = _pose(np.eye(3), [1.0, 0, 0])
    d = epipolar_distances([[10.0, 20.0], [30.0, 5.0]], [[70.0, 22.0], [-4.0, 5.0]], K, K, T)
    np.testing.assert_allclose(d, [2.0, 0.0], atol=1e-12)


def test_projections_of_3d_points_are_on_their_lines_and_an_offset_is_measured():
    rng = np.random.default_rng(0)
    angle = np.deg2rad(20)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    T1 = _pose(R, [-0.8, 0.1, 0.2])
    K1 = np.array([[120.0, 0, 60], [0, 118, 45], [0, 0, 1]])
    X = rng.uniform([-2, -2, 4], [2, 2, 8], (50, 3))
    p0, _ = project(X, K, np.eye(4))
    p1, _ = project(X, K1, T1)
    assert epipolar_distances(p0, p1, K, K1, T1).max() < 1e-9
    # moving a point of image 1 along the normal of its line by 3 px gives 3 px in image 1
    tx = np.array([[0, -T1[2, 3], T1[1, 3]], [T1[2, 3], 0, -T1[0, 3]], [-T1[1, 3], T1[0, 3], 0]])
    F = np.linalg.inv(K1).T @ tx @ R @ np.linalg.inv(K)
    line = F @ np.append(p0[0], 1.0)
    normal = line[:2] / np.linalg.norm(line[:2])
    d = epipolar_distances(p0[:1], p1[:1] + 3 * normal, K, K1, T1)
    assert d[0] == pytest.approx(3.0, abs=0.2) and d[0] >= 3.0 - 1e-9   # the larger of the two images' errors


def test_bad_input():
    with pytest.raises(ValueError, match="no translation"):
        epipolar_distances([[0.0, 0.0]], [[1.0, 1.0]], K, K, np.eye(4))
    with pytest.raises(ValueError, match="same length"):
        epipolar_distances([[0.0, 0.0]], [[1.0, 1.0], [2.0, 2.0]], K, K, _pose(np.eye(3), [1, 0, 0]))
    with pytest.raises(ValueError, match="points1"):
        epipolar_distances([[0.0, 0.0]], [1.0, 1.0], K, K, _pose(np.eye(3), [1, 0, 0]))
