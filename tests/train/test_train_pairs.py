"""Training pairs: homography pairs (determinism, exact correspondence) and depth reprojection."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from localfeat.train.pairs import (HomographyConf, HomographyPairs, IndexRange, PairsError, PosedPairs, PosedView,
                                   make_loader, reproject, warp_flow)


def test_warp_flow_hand_value():
    T = np.array([[1.0, 0, 2], [0, 1, -1], [0, 0, 1]])
    flow, valid = warp_flow(T, 4)
    assert flow[1, 0].tolist() == [2.0, 0.0]            # pixel (x=0, y=1) -> (2, 0)
    assert valid[1, 0] and valid[1, 1] and not valid[0, 0] and not valid[1, 2]   # y -1 / x 4 fall outside
    assert np.isnan(flow[0, 0]).all()


def test_homography_pairs_are_deterministic_and_differ_by_index():
    conf = HomographyConf(crop_size=48, base_size=96)
    a, b = HomographyPairs(conf=conf, seed=3), HomographyPairs(conf=conf, seed=3)
    s1, s2 = a[5], b[5]
    for key in ("image0", "image1", "flow", "valid"):
        assert torch.equal(torch.nan_to_num(s1[key].float(), nan=-1), torch.nan_to_num(s2[key].float(), nan=-1)), key
    assert not torch.equal(a[6]["image0"], s1["image0"])
    assert not torch.equal(HomographyPairs(conf=conf, seed=4)[5]["image0"], s1["image0"])
    assert s1["image0"].shape == (3, 48, 48) and s1["flow"].shape == (48, 48, 2) and s1["valid"].dtype == torch.bool
    # epoch e = index // length: the same position of another epoch is another sample
    short = HomographyPairs(conf=conf, seed=3, length=4)
    assert torch.equal(short[1]["image0"], short.sample(1, 0)["image0"])
    assert torch.equal(short[5]["image0"], short.sample(1, 1)["image0"])


def test_samples_are_built_with_opencv_on_one_thread(monkeypatch):
    # A loader worker runs OpenCV on one thread; the main process must build the same bits, so every sample is built
    # on one thread too (OpenCV's stripes can round differently), and the caller's thread count comes back after.
    import localfeat.train.pairs as pairs

    seen, warp = [], cv2.warpPerspective

    def counting_warp(*args, **kwargs):
        seen.append(cv2.getNumThreads())
        return warp(*args, **kwargs)

    monkeypatch.setattr(pairs.cv2, "warpPerspective", counting_warp)
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        HomographyPairs(conf=HomographyConf(crop_size=48, base_size=96), seed=3)[0]
        assert seen == [1, 1] and cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


def test_homography_pairs_correspondence_is_exact():
    """Without photometric change, image 1 sampled at the flow reproduces image 0 (up to resampling blur)."""
    conf = HomographyConf(crop_size=96, base_size=192, photometric=0.0)
    ds = HomographyPairs(conf=conf, seed=0)
    errors, shifted = [], []
    for k in range(3):
        s = ds[k]
        im0 = s["image0"].permute(1, 2, 0).numpy()
        im1 = s["image1"].permute(1, 2, 0).numpy()
        f, v = s["flow"].numpy(), s["valid"].numpy()
        assert v.mean() > 0.3
        inner = v & np.roll(v, 2, 0) & np.roll(v, -2, 0) & np.roll(v, 2, 1) & np.roll(v, -2, 1)
        warped = cv2.remap(im1, np.nan_to_num(f[..., 0]), np.nan_to_num(f[..., 1]), cv2.INTER_LINEAR)
        errors.append(np.abs(warped - im0)[inner].mean())
        off = cv2.remap(im1, np.nan_to_num(f[..., 0]) + 3, np.nan_to_num(f[..., 1]), cv2.INTER_LINEAR)
        shifted.append(np.abs(off - im0)[inner].mean())
    assert max(errors) < 0.03
    assert min(s - e for s, e in zip(shifted, errors)) > 0.01   # a 3 px error is clearly visible


def test_index_range_and_loader_position():
    assert list(IndexRange(6, 9)) == [6, 7, 8] and len(IndexRange(6, 9)) == 3
    ds = HomographyPairs(conf=HomographyConf(crop_size=32, base_size=64), seed=1)
    batches = list(make_loader(ds, 2, start_step=1, total_steps=3, num_workers=0))
    assert [b["index"].tolist() for b in batches] == [[2, 3], [4, 5]]
    assert torch.equal(batches[0]["image0"][1], ds[3]["image0"])


def _plane_scene(size=64, depth_value=4.0):
    K = np.array([[50.0, 0, (size - 1) / 2], [0, 50.0, (size - 1) / 2], [0, 0, 1]])
    T0 = np.eye(4)
    T1 = np.eye(4)
    T1[0, 3] = -0.4          # camera 1 is 0.4 units to the right: points move left by f * 0.4 / z
    depth = np.full((size, size), depth_value)
    return K, T0, T1, depth


def test_reproject_plane_hand_value():
    K, T0, T1, depth = _plane_scene()
    flow, valid = reproject(depth, K, T0, K, T1, size1=(64, 64))
    # z = 4, baseline 0.4, f = 50: disparity 5 px to the left, rows unchanged
    assert flow[10, 20].tolist() == pytest.approx([15.0, 10.0], abs=1e-4)
    assert not valid[10, 2]          # x = 2 - 5 < 0: outside image 1
    assert valid[:, 5:].all()


def test_reproject_occlusion_check():
    K, T0, T1, depth = _plane_scene()
    depth1 = depth.copy()
    depth1[:, 30:40] = 2.0           # an occluder in front of the plane in view 1
    flow, valid = reproject(depth, K, T0, K, T1, depth1=depth1)
    x1 = flow[..., 0]
    assert not valid[5, 40]          # lands at x = 35: hidden by the occluder
    assert valid[5, 50]              # lands at x = 45: visible
    assert np.isnan(x1[5, 40])
    depth_unknown = depth.copy()
    depth_unknown[0, 0] = 0.0
    _, v = reproject(depth_unknown, K, T0, K, T1, depth1=depth)
    assert not v[0, 0]


def test_posed_pairs_sample():
    K, T0, T1, depth = _plane_scene(size=96)
    rng = np.random.default_rng(0)
    img = (rng.uniform(size=(96, 96, 3)) * 255).astype(np.uint8)
    img1 = np.zeros_like(img)
    img1[:, :-5] = img[:, 5:]         # the same plane seen 5 px to the left
    views = [PosedView(img, K, T0, depth), PosedView(img1, K, T1, depth)]
    ds = PosedPairs(views, [(0, 1)], crop_size=48, seed=0)
    s = ds[0]
    f, v = s["flow"].numpy(), s["valid"].numpy()
    im0 = s["image0"].permute(1, 2, 0).numpy()
    im1 = s["image1"].permute(1, 2, 0).numpy()
    ys, xs = np.nonzero(v)
    assert len(ys) > 100
    got = im1[np.round(f[ys, xs, 1]).astype(int), np.round(f[ys, xs, 0]).astype(int)]
    np.testing.assert_allclose(got, im0[ys, xs], atol=1e-6)
    with pytest.raises(PairsError, match="smaller than crop_size"):
        PosedPairs(views, [(0, 1)], crop_size=128)[0]


def _write_scenes_dataset(root, size=96):
    """A two-view plane scene written in the format of `localfeat.datasets.colmap_scenes` (by hand)."""
    import json

    K, T0, T1, depth = _plane_scene(size=size)
    rng = np.random.default_rng(0)
    img = (rng.uniform(size=(size, size, 3)) * 255).astype(np.uint8)
    img1 = np.zeros_like(img)
    img1[:, :-5] = img[:, 5:]
    scene = root / "scenes" / "plane"
    (scene / "images").mkdir(parents=True)
    (scene / "depth").mkdir()
    images = []
    for name, im, T in (("a.png", img, T0), ("b.png", img1, T1)):
        cv2.imwrite(str(scene / "images" / name), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        np.savez(scene / "depth" / f"{name}.npz", depth=depth.astype(np.float32), points=np.zeros((0, 2)),
                 points_depth=np.zeros(0), point3D_ids=np.zeros(0, np.int64), observations=np.zeros((0, 2)))
        images.append({"name": name, "image": f"scenes/plane/images/{name}", "depth": f"scenes/plane/depth/{name}.npz",
                       "size": [size, size], "K": K.tolist(), "T_cam_from_world": T.tolist()})
    (scene / "scene.json").write_text(json.dumps({"images": images, "pairs": [[0, 1, 100, 0.9]],
                                                  "depth_source": "dense"}))
    (root / "index.json").write_text(json.dumps({"format": "localfeat-colmap-scenes", "version": 1, "scenes": [
        {"name": "plane", "path": "scenes/plane/scene.json", "num_images": 2, "num_pairs": 1}]}))
    return img, img1


def test_colmap_scenes_dataset_gives_posed_pairs(tmp_path):
    from localfeat.datasets.colmap_scenes import ColmapScenes

    _write_scenes_dataset(tmp_path / "ds")
    ds = ColmapScenes(tmp_path / "ds").posed_pairs(crop_size=48, seed=0)
    s = ds[0]
    f, v = s["flow"].numpy(), s["valid"].numpy()
    im0, im1 = s["image0"].permute(1, 2, 0).numpy(), s["image1"].permute(1, 2, 0).numpy()
    ys, xs = np.nonzero(v)
    assert len(ys) > 100
    got = im1[np.round(f[ys, xs, 1]).astype(int), np.round(f[ys, xs, 0]).astype(int)]
    np.testing.assert_allclose(got, im0[ys, xs], atol=1e-6)


def test_trainer_on_colmap_scenes(tmp_path):
    from localfeat.train import train

    _write_scenes_dataset(tmp_path / "ds")
    run = train({"model": {"name": "r2d2", "mchan": 1}, "losses": {"ap": 1.0},
                 "data": {"source": "colmap_scenes", "scenes": str(tmp_path / "ds"), "crop_size": 48,
                          "num_workers": 2}},
                tmp_path / "run", {"steps": 2, "batch_size": 1, "checkpoint_every": 2, "tensorboard": False})
    text = (run / "metrics.csv").read_text().splitlines()
    assert text[0].startswith("step,total") and len(text) == 3


def test_homography_pairs_missing_photos_folder_says_how_to_get_photos(tmp_path):
    # The acceptance preset reads data/train_photos: a missing folder names it and the gathering command.
    with pytest.raises(PairsError, match=r"(?s)no_photos_here.*localfeat\.datasets\.training_photos"):
        HomographyPairs([str(tmp_path / "no_photos_here")])
