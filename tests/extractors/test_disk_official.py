"""DISK with the official depth-save.pth against the ORIGINAL code's outputs (reference/official: kornia 0.9.0's
DISK as cvg/LightGlue's extractor calls it; its README gives every setting).

Tolerances: keypoints are integer pixels of the processed image, so they must be equal (after mapping back,
within 1e-3 px, far under the 0.5 px asked); the smallest 5 x 5 NMS gap in these images is 3.6e-4 in logits, so
a keypoint can only move by a float difference larger than that (measured: 0). Descriptor cosine >= 0.9999 and
logits within 1e-3 relative to their range (float32 rounding of a 1M-parameter U-Net: ~1e-6 measured).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared
from localfeat import hub, load_extractor, presets
from localfeat.extractors.disk import WEIGHTS, lightglue_keypoints, pad_to_multiple
from localfeat.ops import strict_maxima

OFFICIAL = ("reference", "official")
LIGHTGLUE_PRESET = {"style": "lightglue", "long_side": 1024, "max_keypoints": 2048, "resize_max": None}


def reference(name: str) -> dict:
    return dict(np.load(shared(*OFFICIAL, f"{name}.npz")))


@pytest.fixture(scope="module")
def disk():
    # The named preset is LightGlue's DISK(max_num_keypoints=2048).
    assert presets.EXTRACT["disk-lightglue"].model == "disk"
    assert dict(presets.EXTRACT["disk-lightglue"].conf) == LIGHTGLUE_PRESET
    assert presets.EXTRACT["disk-lightglue"].match == "disk+lightglue"
    return presets.load_extractor("disk-lightglue", device="cpu")


def assert_same_features(feats, ref):
    """100 % of keypoints within 0.5 px (here: equal), descriptor cosine >= 0.9999, same scores."""
    assert feats.image_size == tuple(int(v) for v in ref["image_size"])
    assert feats.keypoints.shape == ref["keypoints"].shape
    dist = np.linalg.norm(feats.keypoints - ref["keypoints"], axis=1)  # same raster order
    assert (dist < 0.5).mean() == 1.0 and dist.max() < 1e-3
    assert (feats.descriptors * ref["descriptors"]).sum(1).min() >= 0.9999
    np.testing.assert_allclose(feats.scores, ref["scores"], atol=1e-3 * np.ptp(ref["scores"]))


def test_official_file_pinned_and_loaded():
    spec = WEIGHTS["depth"]
    path = shared("weights_disk", "depth-save.pth")
    assert hub.sha256_file(path) == spec.sha256 and spec.licence == "Apache-2.0"
    ex = load_extractor("disk", device="cpu")
    assert ex.weights_path == path
    file_state = torch.load(path, map_location="cpu", weights_only=True)["extractor"]
    assert set(ex.net.state_dict()) == set(file_state)
    assert all(torch.equal(ex.net.state_dict()[k], v) for k, v in file_state.items())


def test_raw_network_outputs_equal_the_original(disk):
    ref = reference("disk_raw")
    with torch.inference_mode():
        desc, heat = disk.net(torch.from_numpy(ref["input64"]))
        out = torch.cat([desc, heat], 1).numpy()
        np.testing.assert_allclose(out, ref["raw_output64"], atol=1e-4 * np.abs(ref["raw_output64"]).max())
        desc, heat = disk.net(torch.from_numpy(ref["input256"]))
    np.testing.assert_allclose(heat.numpy(), ref["heatmap256"], atol=1e-4 * np.abs(ref["heatmap256"]).max())
    stride8 = desc[:, :, 0::8, 0::8].numpy()
    np.testing.assert_allclose(stride8, ref["descriptors256_stride8"], atol=1e-4 * np.abs(stride8).max())
    np.testing.assert_allclose(desc.sum((0, 2, 3)).numpy(), ref["descriptors256_channel_sum"], rtol=1e-4)
    assert float(desc.double().abs().sum()) == pytest.approx(float(ref["descriptors256_abs_sum"][0]), rel=1e-5)


@pytest.mark.slow
def test_sacre_coeur_keypoints_descriptors_and_every_maximum(disk):
    ref = reference("disk_sacre_coeur1")
    feats = disk.extract(shared("pairs_lightglue", "sacre_coeur1.jpg"))  # 1024 x 731: not resized
    assert_same_features(feats, ref)
    # Without a limit: every strict maximum with a positive logit, raster order (the reference's 5137).
    image = torch.from_numpy(np.ascontiguousarray(
        np.asarray(__import__("cv2").imread(str(shared("pairs_lightglue", "sacre_coeur1.jpg")))[..., ::-1])))
    x = image.permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        _, heat = disk.net(pad_to_multiple(x))
    xy, scores = lightglue_keypoints(heat[0, 0, :731, :1024], 5, 0.0, None)
    assert len(xy) == len(ref["all_keypoints"]) == 5137
    np.testing.assert_array_equal(xy.numpy().astype(np.float32), ref["all_keypoints"])
    np.testing.assert_allclose(scores.numpy(), ref["all_scores"], atol=1e-3 * np.ptp(ref["all_scores"]))


@pytest.mark.slow
def test_v_dogman_upscaled_to_1024_as_lightglue(disk):
    ref = reference("disk_v_dogman_1")
    feats = disk.extract(shared("hpatches_subset", "v_dogman", "1.ppm"))  # 788 x 522 -> 1024 x 678
    assert tuple(ref["processed_size"]) == (1024, 678)
    assert_same_features(feats, ref)
    # The mapping back is LightGlue's (k + 0.5) / scale - 0.5.
    back = (ref["keypoints_processed"] + 0.5) / ref["scale"] - 0.5
    np.testing.assert_allclose(feats.keypoints, back, atol=1e-3)


@pytest.mark.slow
def test_v_dogman_native_size():
    ref = reference("disk_v_dogman_1_native")
    feats = load_extractor("disk", device="cpu", style="lightglue", max_keypoints=2048).extract(
        shared("hpatches_subset", "v_dogman", "1.ppm"))
    assert_same_features(feats, ref)


def test_strict_maxima_hand_computed():
    x = torch.tensor([[0., 0., 0., 0., 0., 0.],
                      [0., 5., 0., 0., 0., 0.],
                      [0., 0., 0., 0., 3., 3.],
                      [0., 0., 0., 0., 0., 0.],
                      [0., 0., 2., 0., 0., 9.],
                      [0., 0., 0., 0., 0., 0.]])
    got = strict_maxima(x, 3)
    # 5 is a strict maximum; the plateau 3/3 is not; 2 is; 9 is on the border (its window leaves the image).
    assert got.nonzero().tolist() == [[1, 1], [4, 2]]
    # 5 x 5: only the 2 x 2 centre is 2 px from every border, and it holds no strict maximum.
    assert strict_maxima(x, 5).nonzero().tolist() == []
    x[3, 3] = 10.0  # above every pixel of its window (5, 3, 9, ...)
    assert strict_maxima(x, 5).nonzero().tolist() == [[3, 3]]


def test_top_n_keeps_best_and_ties_in_raster_order():
    heat = torch.full((12, 12), -1.0)
    for (y, x), v in {(2, 2): 4.0, (2, 6): 3.0, (6, 2): 3.0, (6, 6): 3.0, (9, 9): 1.0}.items():
        heat[y, x] = v
    xy, scores = lightglue_keypoints(heat, 3, 0.0, 3)
    assert xy.tolist() == [[2, 2], [6, 2], [2, 6]] and scores.tolist() == [4.0, 3.0, 3.0]  # raster order
    xy, _ = lightglue_keypoints(heat, 3, 0.0, 10)
    assert len(xy) == 5  # fewer than n: all of them
    xy, _ = lightglue_keypoints(heat, 3, 2.0, None)
    assert len(xy) == 4


def test_style_config_is_checked():
    with pytest.raises(Exception, match=r"style='kornia' is not one of \['disk', 'lightglue'\]"):
        load_extractor("disk", style="kornia")
    with pytest.raises(Exception, match="official_n_rule is the detect.py rule"):
        load_extractor("disk", style="lightglue", official_n_rule=True)
