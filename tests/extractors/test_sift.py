"""SIFT extractor: contract, max_keypoints, RootSIFT, resize_max mapping."""
import cv2
import numpy as np
import pytest

import localfeat
from conftest import shared


@pytest.fixture(scope="module")
def photo():
    return cv2.cvtColor(cv2.imread(str(shared("sfm_sacre_coeur_hloc", "mapping", "02928139_3448003521.jpg"))),
                        cv2.COLOR_BGR2RGB)


def test_contract_and_equality_with_opencv(photo):
    f = localfeat.load_extractor("sift").extract(photo)
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    kpts, desc = cv2.SIFT_create().detectAndCompute(gray, None)
    assert len(f) == len(kpts) > 1000
    assert f.image_size == (photo.shape[1], photo.shape[0])
    # Strongest first; the same set of keypoints as OpenCV's.
    assert np.all(np.diff(f.scores) <= 0)
    ours = {(round(float(x), 3), round(float(y), 3), round(float(s), 3)) for (x, y), s in zip(f.keypoints, f.scales)}
    theirs = {(round(k.pt[0], 3), round(k.pt[1], 3), round(k.size, 3)) for k in kpts}
    assert ours == theirs
    assert np.allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)
    assert f.orientations.min() >= 0 and f.orientations.max() < 2 * np.pi + 1e-6


def test_max_keypoints_keeps_the_strongest(photo):
    full = localfeat.load_extractor("sift").extract(photo)
    top = localfeat.load_extractor("sift", max_keypoints=100).extract(photo)
    assert len(top) == 100
    assert np.array_equal(top.keypoints, full.keypoints[:100]) and np.array_equal(top.scores, full.scores[:100])
    with pytest.raises(ValueError, match="max_keypoints must be None or a positive integer"):
        localfeat.load_extractor("sift", max_keypoints=-1)


def test_rootsift_is_sqrt_of_l1_normalised_sift(photo):
    plain = localfeat.load_extractor("sift", max_keypoints=50).extract(photo)
    root = localfeat.load_extractor("sift", max_keypoints=50, rootsift=True).extract(photo)
    l1 = plain.descriptors / plain.descriptors.sum(1, keepdims=True)
    assert np.allclose(root.descriptors, np.sqrt(l1), atol=1e-5)
    assert np.allclose(np.linalg.norm(root.descriptors, axis=1), 1, atol=1e-5)


def test_resize_max_maps_keypoints_to_original_pixels(photo):
    # An image made by 2x pixel replication: features found on the half-size original, mapped back,
    # must land where pixel-centre geometry says: x_full = 2 * x_half + 0.5.
    half = cv2.resize(photo, (photo.shape[1] // 2, photo.shape[0] // 2), interpolation=cv2.INTER_AREA)
    doubled = cv2.resize(half, (half.shape[1] * 2, half.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    on_half = localfeat.load_extractor("sift", max_keypoints=200).extract(half)
    via_resize = localfeat.load_extractor("sift", max_keypoints=200,
                                          resize_max=max(half.shape[:2])).extract(doubled)
    assert via_resize.image_size == (doubled.shape[1], doubled.shape[0])
    assert np.allclose(via_resize.keypoints, on_half.keypoints * 2 + 0.5, atol=1e-3)
    assert np.allclose(via_resize.scales, on_half.scales * 2, atol=1e-3)


def test_empty_and_tiny_images_give_no_keypoints():
    for img in (np.zeros((1, 1), np.uint8), np.full((64, 64), 128, np.uint8)):
        f = localfeat.load_extractor("sift").extract(img)
        assert len(f) == 0 and f.descriptors.shape == (0, 128) and f.image_size == (img.shape[1], img.shape[0])
