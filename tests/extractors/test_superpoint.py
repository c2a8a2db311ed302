"""SuperPoint: parity with Magic Leap's release (SuperPointNet + SuperPointFrontend) and with LightGlue's
`superpoint.py` post-processing (reference/superpoint, random weights)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from conftest import shared

from localfeat import hub
from localfeat.extractors.superpoint import SuperPoint, SuperPointNet, semi_to_heatmap
from localfeat.registry import ConfigError, get_class, load_extractor, load_matcher


SCORE_RTOL = 2e-4  # scores: softmax of the network's `semi`, matched at 1e-4 absolute (float32 kernels differ by CPU)

@pytest.fixture(scope="module")
def weights_path():
    return str(shared("reference", "superpoint", "superpoint_random_state_dict.pth"))


@pytest.fixture(scope="module")
def ref():
    return {name: np.load(shared("reference", "superpoint", f"superpoint_{name}.npz"))
            for name in ("input", "raw_output", "frontend_output", "lightglue_impl_output")}


@pytest.fixture(scope="module")
def extractor(weights_path):
    return load_extractor("superpoint", weights=weights_path, device="cpu")


@pytest.fixture(scope="module")
def demo_features(extractor, ref):
    return [extractor.extract(ref["input"][f"image{i}_gray_uint8"]) for i in (1, 2)]


def test_registered_and_non_commercial():
    assert get_class("extractor", "superpoint") is SuperPoint
    (spec,) = SuperPoint.weight_specs(SuperPoint.all_defaults())
    assert spec.filename == "superpoint_v1.pth"
    assert spec.non_commercial is True
    assert "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/superpoint_v1.pth" in spec.urls


def test_state_dict_keys_and_shapes_match_manifest():
    manifest = json.loads(shared("reference", "superpoint", "superpoint_state_dict_manifest.json").read_text())
    own = {k: list(v.shape) for k, v in SuperPointNet().state_dict().items()}
    assert own == {k: v["shape"] for k, v in manifest.items()}
    assert sum(int(np.prod(s)) for s in own.values()) == 1_300_865


def test_raw_outputs_match_release(extractor, ref):
    x = torch.from_numpy(ref["input"]["input1"])[None, None]
    with torch.no_grad():
        semi, desc = extractor.net(x)
    np.testing.assert_allclose(semi.numpy(), ref["raw_output"]["semi"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(desc.numpy(), ref["raw_output"]["desc"], atol=1e-4, rtol=0)
    heat = semi_to_heatmap(torch.from_numpy(ref["raw_output"]["semi"]), "magicleap")[0].numpy()
    np.testing.assert_allclose(heat, ref["frontend_output"]["heatmap1"], atol=1e-7, rtol=0)


@pytest.mark.parametrize("i", [1, 2])
def test_frontend_points_and_descriptors(demo_features, ref, i):
    f = demo_features[i - 1]
    pts = ref["frontend_output"][f"pts{i}"]
    assert f.image_size == (320, 240)
    assert len(f) == pts.shape[1]
    # The release orders points by confidence. Two confidences a float32 rounding apart may swap on
    # another CPU (seen with AVX2 kernels: 2 of 1223 points), so the point sets are compared aligned by
    # position and the order as a property. Scores are softmax outputs of `semi`, itself matched at 1e-4
    # above: relative 2e-4.
    ours, theirs = np.lexsort(f.keypoints.T), np.lexsort(pts[:2])
    np.testing.assert_array_equal(f.keypoints[ours], pts[:2].T.astype(np.float32)[theirs])
    np.testing.assert_allclose(f.scores[ours], pts[2][theirs], atol=1e-7, rtol=SCORE_RTOL)
    np.testing.assert_allclose(f.descriptors[ours], ref["frontend_output"][f"desc{i}"].T[theirs], atol=1e-4, rtol=0)
    assert np.all(np.diff(f.scores) <= 0)  # by decreasing confidence
    moved = np.flatnonzero(np.any(f.keypoints != pts[:2].T.astype(np.float32), axis=1))
    np.testing.assert_allclose(f.scores[moved], pts[2][moved], atol=1e-7, rtol=SCORE_RTOL)  # only near-ties swap


def test_demo_two_way_matches_with_nearest_neighbour_matcher(demo_features, ref):
    """nn_match_two_way(desc1, desc2, 0.7) == mutual nearest neighbours with max L2 distance 0.7."""
    m = load_matcher("nearest_neighbor", mutual=True, max_distance=0.7).match(*demo_features)
    expected = {tuple(p) for p in ref["frontend_output"]["matches"][:2].T.astype(int).tolist()}
    got = {tuple(p) for p in m.indices.tolist()}
    assert len(got) == len(expected) == 420
    assert len(got & expected) >= 418  # the README allows 1-2 flips from near-ties (8.7e-6 gaps)


def test_lightglue_style_keypoints(weights_path, ref):
    lg = ref["lightglue_impl_output"]
    ex = load_extractor("superpoint", weights=weights_path, device="cpu", style="lightglue",
                        detection_threshold=0.0005)
    f = ex.extract(ref["input"]["image1_gray_uint8"])
    np.testing.assert_array_equal(f.keypoints, lg["keypoints"][0])  # raster order
    np.testing.assert_allclose(f.scores, lg["keypoint_scores"][0], atol=1e-7, rtol=SCORE_RTOL)


def test_lightglue_style_top256_with_descriptors(weights_path, ref):
    lg = ref["lightglue_impl_output"]
    ex = load_extractor("superpoint", weights=weights_path, device="cpu", style="lightglue",
                        detection_threshold=0.0005, max_keypoints=256)
    f = ex.extract(ref["input"]["image1_gray_uint8"])
    np.testing.assert_array_equal(f.keypoints, lg["keypoints_top256"][0])
    np.testing.assert_allclose(f.scores, lg["keypoint_scores_top256"][0], atol=1e-7, rtol=SCORE_RTOL)
    np.testing.assert_allclose(f.descriptors, lg["descriptors_top256"][0], atol=1e-4, rtol=0)


def test_max_keypoints_keeps_the_best_demo_points(weights_path, ref, demo_features):
    ex = load_extractor("superpoint", weights=weights_path, device="cpu", max_keypoints=100)
    f = ex.extract(ref["input"]["image1_gray_uint8"])
    np.testing.assert_array_equal(f.keypoints, demo_features[0].keypoints[:100])


def test_border_and_threshold_invariants(demo_features):
    f = demo_features[0]
    x, y = f.keypoints[:, 0], f.keypoints[:, 1]
    assert x.min() >= 4 and x.max() < 316 and y.min() >= 4 and y.max() < 236
    assert f.scores.min() >= 0.015
    assert np.all(np.diff(f.scores) <= 0)
    # greedy NMS: no two kept points within the same 9x9 box
    d = np.abs(f.keypoints[:, None] - f.keypoints[None]).max(-1) + np.eye(len(f)) * 99
    assert d.min() > 4


def test_licence_notice_when_loading(weights_path, monkeypatch, caplog):
    monkeypatch.setattr(hub, "_NOTICED", set())
    with caplog.at_level(logging.WARNING, logger="localfeat.hub"):
        load_extractor("superpoint", weights=weights_path, device="cpu")
    assert any("superpoint_v1.pth" in r.message and "NON-COMMERCIAL" in r.message for r in caplog.records)


def test_missing_weights_error_says_what_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("LOCALFEAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LOCALFEAT_OFFLINE", "1")
    with pytest.raises(hub.WeightsNotFoundError) as err:
        load_extractor("superpoint")
    text = str(err.value)
    assert "superpoint_v1.pth" in text
    assert "https://github.com/magicleap/SuperPointPretrainedNetwork/raw/master/superpoint_v1.pth" in text
    assert str(tmp_path / "weights") in text


def test_bad_style_is_named():
    with pytest.raises(ConfigError, match="style"):
        load_extractor("superpoint", style="kornia")


def test_greedy_box_nms_hand_case():
    from localfeat.ops import greedy_box_nms

    xy = np.array([[0, 0], [1, 1], [5, 5], [3, 3], [9, 0]])
    scores = np.array([0.5, 0.9, 0.8, 0.7, 0.1])
    # (1, 1) suppresses (0, 0) and (3, 3) (within +-2 px); (5, 5) and (9, 0) survive; best first
    np.testing.assert_array_equal(greedy_box_nms(xy, scores, 2, (10, 10)), [1, 2, 4])
    np.testing.assert_array_equal(greedy_box_nms(xy, scores, 0, (10, 10)), [1, 2, 3, 0, 4])
