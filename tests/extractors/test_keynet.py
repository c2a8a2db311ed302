"""Key.Net: parity with the original's outputs (shared/data/reference/keynet), budgets, coordinates, weights."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from conftest import REFERENCE, shared

from localfeat import hub, load_extractor
from localfeat.extractors.keynet import _pyrdown, level_budgets

FLOOR = np.float32(1.1235435)  # the flat-region score of the reference (README)


@pytest.fixture(scope="module")
def reference():
    return np.load(shared("reference", "keynet", "keynet_full.npz"))


@pytest.fixture(scope="module")
def detector():
    return load_extractor("keynet", official_coordinates=True, descriptor=None, device="cpu")


@pytest.fixture(scope="module")
def image():
    return cv2.imread(str(shared("hpatches_subset", "v_dogman", "1.ppm")), cv2.IMREAD_GRAYSCALE)


def test_input_and_score_map_match_reference(reference, detector, image):
    t = torch.from_numpy(image).float().div(255.0)[None, None]
    assert torch.equal(t, torch.from_numpy(reference["input_tensor"]))
    score = detector.score_map(t)[0, 0].numpy()
    ref = reference["score_map"]
    assert score.shape == ref.shape == (522, 788)
    np.testing.assert_allclose(score, ref, rtol=1e-5, atol=1e-4)
    assert float(score.min()) == pytest.approx(float(FLOOR), rel=1e-6)


def test_keypoints_above_floor_match_reference_per_level(reference, detector, image):
    det = detector.detect(image)
    ref = reference["keypoints_xy_scale_score"]
    assert len(det["keypoints"]) == len(ref) == 4996
    ref_level = np.round(np.log(ref[:, 2]) / np.log(math.sqrt(2))).astype(int)  # -1 (up), 0..4
    expected_above = {-1: 1019, 0: 580, 1: 271, 2: 139, 3: 86, 4: 41}
    expected_total = {-1: 2539, 0: 1269, 1: 634, 2: 317, 3: 158, 4: 79}
    for lvl, n_above in expected_above.items():
        r = ref[ref_level == lvl]
        mine = det["levels"] == lvl
        assert mine.sum() == len(r) == expected_total[lvl]
        r_above = r[r[:, 3] > FLOOR]
        kp, sc = det["keypoints"][mine], det["scores"][mine]
        above = sc > FLOOR
        assert above.sum() == len(r_above) == n_above
        # Same points, same order (descending score, no ties above the floor).
        np.testing.assert_allclose(kp[above], r_above[:, :2], atol=1e-4)
        np.testing.assert_allclose(sc[above], r_above[:, 3], rtol=1e-5)
        # Floor-score points are ties: only their count and score are defined.
        np.testing.assert_allclose(sc[~above], FLOOR, rtol=1e-6)
        np.testing.assert_allclose(det["scales"][mine], 44.0 * math.sqrt(2) ** lvl, rtol=1e-6)


def test_level_budgets_are_the_official_split():
    assert level_budgets(5000, 4, 1, math.sqrt(2)) == [2539, 1269, 634, 317, 158, 79]


def test_pyrdown_sizes_and_constant_image():
    x = torch.full((1, 1, 522, 788), 0.25)
    y = _pyrdown(x, math.sqrt(2))
    assert tuple(y.shape) == (1, 1, 369, 557)
    assert torch.allclose(y, torch.full_like(y, 0.25), atol=1e-7)


def test_pixel_centre_coordinates_differ_from_official_by_the_half_pixel(image):
    small = cv2.resize(image, (200, 132), interpolation=cv2.INTER_AREA)
    a = load_extractor("keynet", official_coordinates=True, descriptor=None, num_points=300, device="cpu")
    b = load_extractor("keynet", official_coordinates=False, descriptor=None, num_points=300, device="cpu")
    da, db = a.detect(small), b.detect(small)
    np.testing.assert_array_equal(da["levels"], db["levels"])
    h, w = small.shape
    sizes = {-1: (int(w * math.sqrt(2)), int(h * math.sqrt(2))), 0: (w, h)}
    for k in range(1, 5):
        sizes[k] = (int(sizes[k - 1][0] // math.sqrt(2)), int(sizes[k - 1][1] // math.sqrt(2)))
    for lvl in np.unique(da["levels"]):
        m = da["levels"] == lvl
        f = np.array([w, h]) / np.array(sizes[int(lvl)])
        # official x = i * f; pixel centre x = (i + 0.5) * f - 0.5
        np.testing.assert_allclose(db["keypoints"][m], da["keypoints"][m] + 0.5 * f - 0.5, atol=1e-4)


def test_keynet_with_tfeat_descriptors_is_a_valid_feature_set(image):
    small = cv2.resize(image, (240, 160), interpolation=cv2.INTER_AREA)
    feats = load_extractor("keynet", num_points=200, device="cpu").extract(small)
    # The budget is an upper bound: the coarsest levels of a small image hold fewer maxima.
    assert 150 <= len(feats) <= 200 and feats.descriptors.shape == (len(feats), 128)
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, rtol=1e-5)
    assert feats.image_size == (240, 160)


def test_weights_entry_names_official_file_url_hash_and_licence():
    from localfeat.extractors.keynet import WEIGHTS

    spec = WEIGHTS["keynet"]
    assert spec.filename == "keynet_pytorch.pth"
    assert any("axelBarroso/Key.Net-Pytorch" in u for u in spec.urls)
    assert spec.sha256 == hub.sha256_file(shared("weights_keynet", "keynet_pytorch.pth"))
    assert spec.licence == "MIT" and spec.non_commercial is False
    assert REFERENCE.is_dir()
