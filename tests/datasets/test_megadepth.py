"""MegaDepth-format scenes: LoFTR and D2-Net index files written by the converter from the Sacre Coeur
dataset read back to the same views, pairs and training samples; the allow-list unpickler; a training
smoke run on the index; MegaDepth-1500-format pose pairs through the pose evaluation."""
from __future__ import annotations

import csv
import zlib  # noqa: F401  (before pycolmap: see localfeat.io.colmap._require_pycolmap)

import numpy as np
import pytest

from _sfm_reconstruction import sacre_coeur_dataset
from conftest import shared
from localfeat.datasets.colmap_scenes import ColmapScenes
from localfeat.datasets.megadepth import D2NET_KEYS, LOFTR_KEYS, MegaDepthError, MegaDepthScenes, read_index_npz

_CACHE: dict = {}


def _exported(tmp_path_factory):
    """(ColmapScenes of the Sacre Coeur dataset, MegaDepth root written from it, the written files)."""
    if "md" not in _CACHE:
        from localfeat.cli import main

        root = sacre_coeur_dataset(tmp_path_factory)
        out = tmp_path_factory.mktemp("megadepth") / "md"
        assert main(["dataset", "to-megadepth", str(root), "-o", str(out)]) == 0   # = export_megadepth(root, out)
        files = {"loftr": [out / "megadepth_indices" / "scene_info" / "sacre_coeur.npz"],
                 "d2net": [out / "scene_info" / "sacre_coeur.npz"],
                 "pose_pairs": [out / "pose_pairs" / "sacre_coeur.json"]}
        _CACHE["md"] = (ColmapScenes(root), out, files)
    return _CACHE["md"]


def _same_sample(a: dict, b: dict) -> None:
    for key in ("image0", "image1", "valid", "index"):
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)
    np.testing.assert_array_equal(a["flow"].numpy(), b["flow"].numpy())  # NaN where invalid, in both


def test_loftr_index_round_trips_the_colmap_dataset(tmp_path_factory):
    data, out, files = _exported(tmp_path_factory)
    (index,) = files["loftr"]
    raw = dict(np.load(index, allow_pickle=True))   # the file as LoFTR's MegaDepthDataset reads it
    assert sorted(raw) == sorted(LOFTR_KEYS)
    images = data.scenes["sacre_coeur"]["images"]
    n = len(images)
    assert raw["intrinsics"].shape == (n, 3, 3) and raw["poses"].shape == (n, 4, 4)
    assert raw["image_paths"][0] == f"Undistorted_SfM/sacre_coeur/images/{images[0]['name']}"
    assert raw["depth_paths"][0].startswith("phoenix/S6/zl548/MegaDepth_v1/sacre_coeur/dense0/depths/")
    (i, j), overlap, _ = raw["pair_infos"][0]
    scene, a, b, _, o = data.pairs[0]
    assert (int(i), int(j), float(overlap)) == (a, b, o)
    # LoFTR's T_0to1 = T1 inv(T0); its K is COLMAP's (principal point +0.5 from localfeat's)
    np.testing.assert_allclose(raw["poses"][j] @ np.linalg.inv(raw["poses"][i]), data[0]["T_0to1"], atol=1e-12)
    np.testing.assert_allclose(raw["intrinsics"][i][:2, 2] - data[0]["K0"][:2, 2], [0.5, 0.5], atol=1e-12)

    md = MegaDepthScenes(out, index)
    assert md.formats == {"sacre_coeur": "loftr"}
    assert [(p, q, o) for p, q, o in md.pairs] == [(a, b, o) for _, a, b, _, o in data.pairs]
    load = md.view_loader()
    for k in range(n):
        mine, theirs = load(k), data.view("sacre_coeur", k)
        np.testing.assert_allclose(mine.K, theirs["K"], atol=1e-12)
        np.testing.assert_array_equal(mine.T_cw, theirs["T"])
        np.testing.assert_array_equal(mine.depth, theirs["depth"])
        np.testing.assert_array_equal(mine.image, theirs["image"])
    # The training samples (crops, depth-reprojected flow, occlusion check) are the dataset's own.
    ours, reference = md.posed_pairs(crop_size=64, seed=3), data.posed_pairs(crop_size=64, seed=3)
    assert len(ours) == len(reference)
    for k in (0, 1, len(ours) - 1):
        _same_sample(ours.sample(k), reference.sample(k))
    assert int(ours.sample(0)["valid"].sum()) >= 1
    import pickle

    pickle.loads(pickle.dumps(ours))  # the loader's worker processes receive it pickled


def test_d2net_scene_info_round_trips_the_colmap_dataset(tmp_path_factory):
    data, out, files = _exported(tmp_path_factory)
    (index,) = files["d2net"]
    raw = dict(np.load(index, allow_pickle=True))
    assert set(D2NET_KEYS) | {"angles", "n_points3D", "points3D_id_to_2D", "points3D_id_to_ndepth"} == set(raw)
    sparse = data.sparse("sacre_coeur", 0)
    obs = raw["points3D_id_to_2D"][0]
    pid = int(sparse["point3D_ids"][0])
    np.testing.assert_allclose(obs[pid], sparse["observations"][0] + 0.5, atol=1e-5)   # COLMAP's pixel corner
    for _, a, b, shared_points, _ in data.pairs:
        # D2-Net's overlap[i, j] = shared 3D points / points of image i
        assert raw["overlap_matrix"][a, b] * raw["n_points3D"][a] == pytest.approx(shared_points)
        assert raw["scale_ratio_matrix"][a, b] >= 1.0

    md = MegaDepthScenes(out, index, min_overlap=0.1)
    assert md.formats == {"sacre_coeur": "d2net"}
    got = {(p, q): o for p, q, o in md.pairs}
    # Every pair of the dataset (>= 20 shared points, overlap >= 0.1), with the same overlap; more pairs only
    # where fewer than 20 points are shared.
    for _, a, b, _, o in data.pairs:
        assert got.pop((a, b)) == pytest.approx(o, abs=1e-6)
    for a, b in got:
        assert raw["overlap_matrix"][a, b] * raw["n_points3D"][a] < 20
    assert len(MegaDepthScenes(out, index).pairs) < len(md.pairs)   # D2-Net's default overlap >= 0.5
    np.testing.assert_array_equal(md.view_loader()(2).depth, data.view("sacre_coeur", 2)["depth"])
    np.testing.assert_allclose(md.view_loader()(2).K, data.view("sacre_coeur", 2)["K"], atol=1e-12)


def test_index_reader_skips_left_out_images_and_refuses_code(tmp_path_factory, tmp_path):
    _, out, files = _exported(tmp_path_factory)
    raw = dict(np.load(files["loftr"][0], allow_pickle=True))
    # Image 1 left out (None), as in LoFTR's indices: its pairs go, the others are renumbered.
    raw["image_paths"][1] = None
    raw["pair_infos"] = np.array([(np.array([0, 1]), 0.5, None), (np.array([0, 2]), 0.4, None),
                                  (np.array([2, 3]), 0.05, None)] + [None] * 0, dtype=object)
    np.savez(tmp_path / "cut.npz", **raw)
    md = MegaDepthScenes(out, tmp_path / "cut.npz")
    assert len(md.views) == len(raw["image_paths"]) - 1 and md.views[1]["index"] == 2
    assert md.pairs == [(0, 1, 0.4), (1, 2, 0.05)]
    assert MegaDepthScenes(out, tmp_path / "cut.npz", min_overlap=0.1).pairs == [(0, 1, 0.4)]

    class Exploit:
        def __reduce__(self):
            import os
            return (os.system, ("echo unsafe",))

    evil = dict(raw, image_paths=np.array([Exploit()], dtype=object))
    np.savez(tmp_path / "evil.npz", **evil)
    with pytest.raises(MegaDepthError, match="system is not allowed"):
        read_index_npz(tmp_path / "evil.npz")
    # Compressed files, Fortran order, strings: read as numpy does.
    f_order = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    np.savez_compressed(tmp_path / "packed.npz", a=f_order, s=np.array(["ab", "c"]), o=raw["pair_infos"])
    packed = read_index_npz(tmp_path / "packed.npz")
    np.testing.assert_array_equal(packed["a"], f_order)
    assert packed["s"].tolist() == ["ab", "c"] and packed["o"][1][1] == 0.4
    np.savez(tmp_path / "other.npz", images=np.zeros(3))
    with pytest.raises(MegaDepthError, match=r"other\.npz: neither a LoFTR index"):
        MegaDepthScenes(out, tmp_path / "other.npz")
    with pytest.raises(MegaDepthError, match="phoenix"):
        MegaDepthScenes(tmp_path, files["loftr"][0]).view_loader()(0)   # the wrong root: says what it must hold


def test_training_smoke_run_on_the_loftr_index(tmp_path_factory, tmp_path):
    from localfeat.train import train

    _, out, files = _exported(tmp_path_factory)
    run = train({"model": {"name": "r2d2", "mchan": 1}, "losses": {"ap": 1.0},
                 "data": {"source": "megadepth", "root": str(out), "scenes": str(files["loftr"][0].parent),
                          "crop_size": 48, "num_workers": 0}},
                tmp_path / "run", {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "tensorboard": False,
                                   "seed": 1})
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "1"] and all(np.isfinite(float(r["total"])) for r in rows)
    assert (run / "weights.pt").is_file()


def test_megadepth1500_format_pairs_through_the_pose_evaluation(tmp_path_factory, tmp_path):
    from localfeat.eval.pose import evaluate_pose, read_pose_pairs

    data, out, files = _exported(tmp_path_factory)
    (path,) = files["pose_pairs"]
    pairs = read_pose_pairs(path)
    assert len(pairs) == len(data)
    for k in range(len(data)):
        item = data[k]
        np.testing.assert_allclose(pairs[k].T_0to1, item["T_0to1"], atol=1e-12)
        np.testing.assert_allclose(pairs[k].K0[:2, 2] - item["K0"][:2, 2], [0.5, 0.5], atol=1e-12)
        np.testing.assert_allclose(pairs[k].K1[:2, 2] - item["K1"][:2, 2], [0.5, 0.5], atol=1e-12)
        assert pairs[k].name0 == f"Undistorted_SfM/sacre_coeur/images/{item['name0']}"
        assert (out / pairs[k].name1).is_file()
    # Up to two wide-baseline pairs of high overlap (how many the SfM run gives varies): SIFT recovers the SfM
    # pose of at least one through the JSON's K (COLMAP's convention) and T_0to1. (SfM poses are not perfect
    # ground truth: test_pose.py accepts 4 of 5 pairs; the SfM run differs from one session to the next.)
    def baseline(k):
        depth = np.median(data.sparse("sacre_coeur", data.pairs[k][1])["points_depth"])
        return np.linalg.norm(data[k]["T_0to1"][:3, 3]) / depth
    best = [k for k in sorted(range(len(data)), key=lambda k: -data.pairs[k][4]) if baseline(k) > 0.1][:2]
    assert best, [baseline(k) for k in range(len(data))]
    import json

    entries = json.loads(path.read_text())
    (tmp_path / "two.json").write_text(json.dumps([entries[k] for k in best]))
    result = evaluate_pose(tmp_path / "two.json", out, model="sift", conf={"max_keypoints": 2048, "resize_max": 1024})
    assert result["num_pairs"] == len(best)
    assert min(p["error"] for p in result["pairs"]) < 3.0, [(p["error_R"], p["error_t"]) for p in result["pairs"]]
    # The real MegaDepth-1500 split without its images: one clear error before any extraction.
    with pytest.raises(FileNotFoundError, match=r"806 of the images that megadepth_1500\.json names are missing, "
                       r"e\.g\. .*/Undistorted_SfM/0015/images/1017541041_394e9f81d4_o\.jpg; .*MegaDepth root"):
        evaluate_pose(shared("megadepth1500_gt", "megadepth_1500.json"), tmp_path, model="sift")
