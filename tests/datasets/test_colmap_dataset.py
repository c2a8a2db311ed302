"""Training dataset from the Sacre Coeur reconstruction: depth/pose consistency, relative paths, merging."""
from __future__ import annotations

import json
import shutil
import zlib  # noqa: F401  (before pycolmap: see localfeat.io.colmap._require_pycolmap)

import numpy as np
import pycolmap
import pytest

from _sfm_reconstruction import sacre_coeur_dataset, sacre_coeur_sfm
from conftest import shared
from localfeat.datasets.colmap_scenes import (ColmapScenes, DatasetError, build_scene, covisibility_pairs,
                                              merge_datasets, splat_sparse_depth)
from localfeat.geometry import project, relative_pose, unproject
from localfeat.io.colmap import write_colmap_array


def _common(data, k):
    scene, a, b, _, _ = data.pairs[k]
    s0, s1 = data.sparse(scene, a), data.sparse(scene, b)
    v0, v1 = data.view(scene, a), data.view(scene, b)
    _, i0, i1 = np.intersect1d(s0["point3D_ids"], s1["point3D_ids"], return_indices=True)
    return s0, s1, v0, v1, i0, i1


def test_geometry_by_hand():
    K = np.array([[100.0, 0, 49.5], [0, 100, 39.5], [0, 0, 1]])
    T = np.eye(4)
    T[:3, 3] = [0.0, 0.0, 2.0]
    uv, z = project(np.array([[0.0, 0.0, 0.0], [1.0, -0.5, 3.0]]), K, T)
    np.testing.assert_allclose(uv, [[49.5, 39.5], [69.5, 29.5]])
    np.testing.assert_allclose(z, [2.0, 5.0])
    np.testing.assert_allclose(unproject(uv, z, K, T), [[0, 0, 0], [1, -0.5, 3]], atol=1e-12)
    T1 = np.eye(4)
    T1[:3, 3] = [1.0, 0, 0]
    np.testing.assert_allclose(relative_pose(T, T1)[:3, 3], [1.0, 0, -2.0])
    depth = splat_sparse_depth(np.array([[2.2, 1.4], [1.6, 0.6], [9.0, 9.0]]), np.array([5.0, 3.0, 1.0]), (4, 3))
    assert depth[1, 2] == 3.0 and np.count_nonzero(depth) == 1  # the nearer point wins; off-image dropped


def test_covisibility_pairs_by_hand():
    sets = [{1, 2, 3}, {2, 3, 4, 5}, {9}, {1, 2, 3, 4, 5}]
    pairs = covisibility_pairs(sets, min_shared=2, min_overlap=0.5)
    assert pairs == [(0, 1, 2, pytest.approx(2 / 3)), (0, 3, 3, 1.0), (1, 3, 4, 1.0)]
    assert covisibility_pairs(sets, min_shared=2, min_overlap=0.5, max_pairs_per_image=1) == [
        (0, 3, 3, 1.0), (1, 3, 4, 1.0)]


def test_dataset_reprojection_within_one_pixel(tmp_path_factory):
    root = sacre_coeur_dataset(tmp_path_factory)
    _, _, summary = sacre_coeur_sfm(tmp_path_factory)
    data = ColmapScenes(root)
    index = json.loads((root / "index.json").read_text())
    assert index["scenes"][0]["num_images"] == summary["num_registered"]
    assert len(data) == index["scenes"][0]["num_pairs"] >= 10
    scene = data.scenes["sacre_coeur"]
    assert scene["depth_source"] == "sparse" and scene["undistorted"]  # SIMPLE_RADIAL -> undistorted pinhole
    within, total, observed_err = 0, 0, []
    for k in range(len(data)):
        s0, s1, v0, v1, i0, i1 = _common(data, k)
        assert len(i0) >= 20
        # 1. Stored sub-pixel point + depth in image 0 -> world -> image 1 = the stored point there.
        X = unproject(s0["points"][i0], s0["points_depth"][i0], v0["K"], v0["T"])
        uv, z = project(X, v1["K"], v1["T"])
        assert np.abs(uv - s1["points"][i1]).max() < 0.01 and np.abs(z - s1["points_depth"][i1]).max() < 1e-3
        # 2. Through the depth MAP: depth read at the pixel, back-projected from that pixel centre.
        ij = np.rint(s0["points"][i0]).astype(np.int64)
        depth = v0["depth"][ij[:, 1], ij[:, 0]]
        assert (depth > 0).all()
        uv_map, _ = project(unproject(ij, depth, v0["K"], v0["T"]), v1["K"], v1["T"])
        err = np.linalg.norm(uv_map - s1["points"][i1], axis=1)
        within += int((err < 1.0).sum())
        total += len(err)
        # 3. Against COLMAP's own observations (keypoints, shifted to our convention).
        uv_obs, _ = project(unproject(s0["observations"][i0], s0["points_depth"][i0], v0["K"], v0["T"]),
                            v1["K"], v1["T"])
        observed_err.append(np.linalg.norm(uv_obs - s1["observations"][i1], axis=1))
    assert within / total > 0.9, within / total
    assert np.median(np.concatenate(observed_err)) < 1.0
    # The stored K is COLMAP's undistorted camera with the principal point moved by -0.5.
    item = data[0]
    assert item["image0"].shape[:2] == item["depth0"].shape == item["size0"][::-1]
    np.testing.assert_allclose(item["T_0to1"], item["T1"] @ np.linalg.inv(item["T0"]))


def test_dataset_moves_and_merges(tmp_path_factory, tmp_path):
    root = sacre_coeur_dataset(tmp_path_factory)
    copy = tmp_path / "a" / "ds"
    shutil.copytree(root, copy)
    before = ColmapScenes(copy)[3]
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(str(copy), moved)
    assert not copy.exists()
    after = ColmapScenes(moved)[3]
    for key in ("image0", "image1", "depth0", "depth1", "K0", "K1", "T_0to1"):
        np.testing.assert_array_equal(before[key], after[key])
    texts = (moved / "index.json").read_text() + (moved / "scenes" / "sacre_coeur" / "scene.json").read_text()
    assert str(tmp_path) not in texts and str(root) not in texts and '"/' not in texts

    # Merge: the same scene under another name, built with hard links, plus the moved dataset.
    _, out, _ = sacre_coeur_sfm(tmp_path_factory)
    other = tmp_path / "other"
    build_scene(out / "sparse", shared("sfm_sacre_coeur_hloc", "mapping"), other, scene="again",
                image_mode="hardlink", min_shared=50)
    with pytest.raises(DatasetError, match="already holds a scene 'again'"):
        build_scene(out / "sparse", shared("sfm_sacre_coeur_hloc", "mapping"), other, scene="again")
    merged = merge_datasets([moved, other], tmp_path / "merged")
    assert [s["name"] for s in merged["scenes"]] == ["sacre_coeur", "again"]
    all_pairs = ColmapScenes(tmp_path / "merged")
    assert len(all_pairs) == len(ColmapScenes(moved)) + len(ColmapScenes(other))
    assert len(ColmapScenes(tmp_path / "merged", scenes=["again"])) == len(ColmapScenes(other))
    with pytest.raises(DatasetError, match="sacre_coeur"):
        merge_datasets([moved], tmp_path / "merged")
    with pytest.raises(DatasetError, match="unknown scene"):
        ColmapScenes(moved, scenes=["nope"])


def test_dense_depth_maps_are_used(tmp_path_factory, tmp_path):
    """A dense workspace (undistorted model + stereo/depth_maps/*.geometric.bin) gives dense depth."""
    _, out, _ = sacre_coeur_sfm(tmp_path_factory)
    workspace = tmp_path / "dense"
    pycolmap.undistort_images(str(workspace), str(out / "sparse"), str(shared("sfm_sacre_coeur_hloc", "mapping")))
    rec = pycolmap.Reconstruction(str(workspace / "sparse"))
    maps = {}
    (workspace / "stereo" / "depth_maps").mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(rec.images.values()):
        cam = image.camera
        depth = np.full((cam.height, cam.width), 5.0 + k, np.float32)
        depth[: cam.height // 2] = 0.0
        write_colmap_array(workspace / "stereo" / "depth_maps" / f"{image.name}.geometric.bin", depth)
        maps[image.name] = depth
    from localfeat.cli import main

    assert main(["dataset", "from-colmap", str(workspace / "sparse"), str(workspace / "images"),
                 "-o", str(tmp_path / "ds"), "--scene", "dense"]) == 0
    data = ColmapScenes(tmp_path / "ds")
    assert data.scenes["dense"]["depth_source"] == "dense" and not data.scenes["dense"]["undistorted"]
    for k, entry in enumerate(data.scenes["dense"]["images"]):
        np.testing.assert_array_equal(data.view("dense", k)["depth"], maps[entry["name"]])


def test_trainer_reprojection_agrees(tmp_path_factory):
    """The training pairs (train.pairs.reproject / PosedPairs) read the same geometry from the dataset."""
    from localfeat.train.pairs import reproject

    data = ColmapScenes(sacre_coeur_dataset(tmp_path_factory))
    s0, s1, v0, v1, i0, i1 = _common(data, 0)
    flow, valid = reproject(v0["depth"], v0["K"], v0["T"], v1["K"], v1["T"], size1=v1["size"])
    ij = np.rint(s0["points"][i0]).astype(np.int64)
    inside = valid[ij[:, 1], ij[:, 0]]
    assert inside.mean() > 0.9
    err = np.linalg.norm(flow[ij[inside, 1], ij[inside, 0]] - s1["points"][i1][inside], axis=1)
    assert np.median(err) < 1.0
    posed = data.posed_pairs(crop_size=128, seed=0)
    sample = posed.sample(0)
    assert len(posed) == len(data) and tuple(sample["flow"].shape) == (128, 128, 2)
    assert int(sample["valid"].sum()) >= 1  # the crop centre has (sparse) depth
