"""Relative-pose evaluation: hand-made geometry, AUC by hand, pair files, rotations, real pairs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared
from localfeat.eval.pose import (estimate_relative_pose, evaluate_pose, pose_auc, read_pose_pairs,
                                 relative_pose_error, rotate_image, rotation_error_deg, unrotate_keypoints)

SCANNET = "scannet_sample_superglue"


def _rotation(axis, degrees) -> np.ndarray:
    import cv2

    axis = np.asarray(axis, np.float64)
    return cv2.Rodrigues(axis / np.linalg.norm(axis) * np.radians(degrees))[0]


def _synthetic_pair(seed=0, n=200):
    rng = np.random.default_rng(seed)
    K0 = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    K1 = np.array([[620.0, 0, 300], [0, 610, 250], [0, 0, 1]])
    R = _rotation([0.2, 1.0, 0.1], 12.0)
    t = np.array([-0.8, 0.1, 0.2])
    X0 = np.c_[rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(4, 9, n)]  # in camera 0
    X1 = X0 @ R.T + t
    k0 = (X0 @ K0.T)[:, :2] / X0[:, 2:]
    k1 = (X1 @ K1.T)[:, :2] / X1[:, 2:]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return k0, k1, K0, K1, T


@pytest.mark.parametrize("estimator", ["opencv", "pycolmap"])
def test_known_pose_gives_zero_error(estimator):
    k0, k1, K0, K1, T = _synthetic_pair()
    R, t, inliers = estimate_relative_pose(k0, k1, K0, K1, ransac_thresh=1.0, estimator=estimator)
    err_t, err_R = relative_pose_error(T, R, t)
    assert inliers.all()
    assert err_R < 1e-3 and err_t < 1e-3  # degrees
    assert np.linalg.norm(t) == pytest.approx(1.0)


def test_outliers_are_rejected():
    k0, k1, K0, K1, T = _synthetic_pair(seed=1, n=300)
    rng = np.random.default_rng(2)
    bad = rng.choice(300, 90, replace=False)
    k1 = k1.copy()
    k1[bad] = rng.uniform([0, 0], [640, 480], (90, 2))
    R, t, inliers = estimate_relative_pose(k0, k1, K0, K1, ransac_thresh=1.0)
    assert max(relative_pose_error(T, R, t)) < 0.05
    assert inliers.sum() >= 205 and not inliers[bad].sum() > 5


def test_pose_error_by_hand():
    T = np.eye(4)
    T[:3, 3] = [1.0, 0.0, 0.0]
    assert relative_pose_error(T, np.eye(3), np.array([-2.0, 0, 0])) == (0.0, 0.0)  # sign of t is free
    err_t, err_R = relative_pose_error(T, _rotation([0, 0, 1], 90), np.array([np.cos(0.5236), np.sin(0.5236), 0]))
    assert err_t == pytest.approx(30.0, abs=1e-3) and err_R == pytest.approx(90.0)
    assert rotation_error_deg(np.eye(3), _rotation([1, 1, 0], 7.5)) == pytest.approx(7.5)
    assert relative_pose_error(T, None, None) == (float("inf"), float("inf"))
    assert estimate_relative_pose(np.zeros((4, 2)), np.zeros((4, 2)), np.eye(3), np.eye(3)) is None


def test_pose_auc_by_hand():
    # errors 0, 5, 10, fail: recall steps of 1/4; areas 1.25/5, 4.375/10, 12.5/20 (see SuperGlue's pose_auc).
    np.testing.assert_allclose(pose_auc([10.0, 0.0, float("inf"), 5.0]), [0.25, 0.4375, 0.625])
    np.testing.assert_allclose(pose_auc([0.0, 0.0]), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(pose_auc([float("inf")]), [0.0, 0.0, 0.0])


def test_read_pair_files(tmp_path):
    pairs = read_pose_pairs(shared(SCANNET, "scannet_sample_pairs_with_gt.txt"))
    assert len(pairs) == 15
    p = pairs[0]
    assert (p.name0, p.name1, p.rot0, p.rot1) == ("scene0711_00_frame-001680.jpg", "scene0711_00_frame-001995.jpg", 0, 0)
    assert p.K0[0, 0] == 1163.45 and p.K1[1, 2] == 481.6 and p.T_0to1[0, 3] == -1.51061 and p.T_0to1[3, 3] == 1.0
    mega = read_pose_pairs(shared("megadepth1500_gt", "megadepth_1500.json"))
    assert len(mega) == 1500 and mega[0].K0[0, 0] == pytest.approx(2161.10009765625)
    assert mega[0].name1.endswith("2912685234_7c4c21ee78_o.jpg")
    (tmp_path / "bad.txt").write_text("a.jpg b.jpg 1 2 3\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 38 values"):
        read_pose_pairs(tmp_path / "bad.txt")


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_unrotate_keypoints(k):
    image = np.zeros((5, 8), np.uint8)
    image[1, 6] = 255  # (x, y) = (6, 1)
    rotated = rotate_image(image, k)
    y, x = np.argwhere(rotated == 255)[0]
    np.testing.assert_array_equal(unrotate_keypoints(np.array([[x, y]], np.float32), k, (8, 5)), [[6, 1]])


def test_eval_pose_on_sfm_poses(tmp_path_factory, tmp_path):
    """GT from the Sacre Coeur reconstruction (a dataset built from it): SIFT recovers those poses."""
    from _sfm_reconstruction import sacre_coeur_dataset
    from localfeat.datasets.colmap_scenes import ColmapScenes

    root = sacre_coeur_dataset(tmp_path_factory)
    data = ColmapScenes(root, load_images=False, load_depth=False)
    def wide_baseline(i):  # the direction of t is noise when the cameras barely moved
        item = data[i]
        depth = np.median(data.sparse(item["scene"], data.pairs[i][1])["points_depth"])
        return np.linalg.norm(item["T_0to1"][:3, 3]) > 0.1 * depth

    best = [i for i in sorted(range(len(data)), key=lambda i: -data.pairs[i][3]) if wide_baseline(i)][:5]
    assert len(best) == 5
    lines = []
    for i in best:
        item = data[i]
        values = [item["name0"], item["name1"], "0", "0"] + [f"{v:.17g}" for v in
                                                          np.r_[item["K0"].ravel(), item["K1"].ravel(),
                                                                item["T_0to1"].ravel()]]
        lines.append(" ".join(values))
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    result = evaluate_pose(tmp_path / "pairs.txt", root / "scenes" / "sacre_coeur" / "images", model="sift",
                           conf={"max_keypoints": 2048, "resize_max": 1024}, output=tmp_path / "res")
    errors = [p["error"] for p in result["pairs"]]
    # SfM poses are not perfect ground truth (one photo of the set is weakly registered): 4 of 5.
    assert sum(e < 3.0 for e in errors) >= 4, errors
    assert result["auc@20"] > 0.7 and result["num_pairs"] == 5
    np.testing.assert_allclose([result["auc@5"], result["auc@10"], result["auc@20"]], pose_auc(errors))
    (saved,) = (tmp_path / "res").glob("pose_sift_*.json")
    assert json.loads(saved.read_text())["auc@20"] == result["auc@20"]


def test_cli_eval_pose_scannet(tmp_path, capsys):
    from localfeat.cli import main

    args = ["eval", "pose", "--pairs", str(shared(SCANNET, "scannet_sample_pairs_with_gt.txt")),
            "--images", str(shared(SCANNET, "images")), "--model", "sift", "--resize-max", "480",
            "--max-pairs", "2", "--ransac-thresh", "2", "--output", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "AUC@5 | AUC@10 | AUC@20" in out and "2 pairs" in out
    (saved,) = tmp_path.glob("pose_sift_*.json")
    result = json.loads(saved.read_text())
    assert result["num_pairs"] == 2 and [p["name0"] for p in result["pairs"]] == [
        "scene0711_00_frame-001680.jpg", "scene0713_00_frame-001320.jpg"]
    np.testing.assert_allclose([result[f"auc@{t}"] for t in (5, 10, 20)],
                               pose_auc([p["error"] for p in result["pairs"]]))
    for p in result["pairs"]:
        assert p["error"] == max(p["error_t"], p["error_R"]) and 0 <= p["num_inliers"] <= p["num_matches"]
    # A second run reuses the stored result (same model, configs and pair file).
    mtime = saved.stat().st_mtime_ns
    assert main(args) == 0 and saved.stat().st_mtime_ns == mtime
