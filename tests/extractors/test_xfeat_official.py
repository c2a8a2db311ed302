"""XFeat with the official xfeat.pt against the ORIGINAL code's outputs (reference/official, verlab
accelerated_features e92685f on sacre_coeur1, 1024 x 731; its README).

Conventions: the original maps an internal pixel p back by p * r (r = original / internal size, no half-pixel
correction); localfeat by the pixel-centre inverse of the resizes, ((p + 0.5) * r) / s - 0.5 (s = the
semi-dense extraction scale, 1 for sparse). The tests convert ours into the original's convention exactly and
compare there (equal within 1e-3 px), and bound the distance in our convention by the formula.
Tolerances: the keypoint sets are cut at a score/reliability rank whose gap to the next (4e-5, 3.7e-4, 1.2e-4)
is far above float rounding (measured ~1e-6), so the sets must be equal; descriptor cosine >= 0.9999.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared
from localfeat import hub, load_extractor
from localfeat.extractors.xfeat import WEIGHTS

OFFICIAL = ("reference", "official")
IMAGE = ("pairs_lightglue", "sacre_coeur1.jpg")
W, H = 1024, 731


def reference(name: str) -> dict:
    return dict(np.load(shared(*OFFICIAL, f"{name}.npz")))


def internal_factors(w: int, h: int) -> np.ndarray:
    """The original's r = original size / (size floored to a multiple of 32), as (rw, rh)."""
    return np.array([w / (w // 32 * 32), h / (h // 32 * 32)], np.float64)


def pair_up(ours: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest of `ours` for every reference keypoint, and that distance."""
    d = np.linalg.norm(ref[:, None].astype(np.float64) - ours[None].astype(np.float64), axis=2)
    return d.argmin(1), d.min(1)


def test_official_file_pinned_loaded_and_preferred():
    spec = WEIGHTS["xfeat"]
    path = shared("weights_xfeat_official", "xfeat.pt")
    assert hub.sha256_file(path) == spec.sha256 and spec.licence == "Apache-2.0"
    ex = load_extractor("xfeat", device="cpu")
    assert ex.weights_path == path  # before the converted xfeat_from_onnx.pt of weights_xfeat/
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 122 and sum(k.startswith("fine_matcher.") for k in state) == 22


@pytest.fixture(scope="module")
def sparse():
    return load_extractor("xfeat", device="cpu").extract(shared(*IMAGE))


@pytest.fixture(scope="module")
def dense():
    return load_extractor("xfeat", device="cpu", mode="semi-dense").extract(shared(*IMAGE))


def test_sparse_equals_the_original(sparse):
    ref = reference("xfeat_sacre_coeur1")
    assert sparse.image_size == (W, H) and len(sparse) == len(ref["keypoints"]) == 4096
    r = internal_factors(W, H)
    in_original_convention = (sparse.keypoints + 0.5) - 0.5 * r  # = p * r
    nearest, d = pair_up(in_original_convention, ref["keypoints"])
    assert d.max() < 1e-3 and len(set(nearest.tolist())) == 4096  # the same set, one to one
    # In our convention every keypoint is 0.5 (r - 1) per axis away: 0.019 px here, within 0.5 px for 100 %.
    _, d_ours = pair_up(sparse.keypoints, ref["keypoints"])
    assert (d_ours < 0.5).mean() == 1.0
    assert d_ours.max() == pytest.approx(np.hypot(*(0.5 * (r - 1))), abs=1e-3)
    assert (sparse.descriptors[nearest] * ref["descriptors"]).sum(1).min() >= 0.9999
    np.testing.assert_allclose(sparse.scores[nearest], ref["scores"], atol=1e-5)


def test_semi_dense_equals_the_original(dense):
    ref = reference("xfeat_dense_sacre_coeur1")
    assert len(dense) == len(ref["keypoints"]) == 819 + 3276
    np.testing.assert_allclose(dense.scales / 8, ref["scales"], rtol=1e-6)  # ours: 8 / s = cell size in px
    shift = np.zeros_like(dense.keypoints, dtype=np.float64)
    for s, rows in ((0.6, slice(0, 819)), (1.3, slice(819, None))):
        sw, sh = int(W * s), int(H * s)  # F.interpolate(scale_factor=s) floors
        r = internal_factors(sw, sh)
        shift[rows] = 0.5 - 0.5 * r / s  # ours = p r / s + 0.5 r / s - 0.5
        # Per axis 0.5 r / s - 0.5: up to 0.377 px at s = 0.6 (0.509 px diagonally), -0.11 px at s = 1.3.
        assert np.all(np.abs(0.5 * r / s - 0.5) < 0.5)
    in_original_convention = dense.keypoints + shift
    for rows in (slice(0, 819), slice(819, None)):  # each scale's own top cells
        nearest, d = pair_up(in_original_convention[rows], ref["keypoints"][rows])
        assert d.max() < 1e-3 and len(set(nearest.tolist())) == len(nearest)
        raw = ref["descriptors"][rows]
        cos = (dense.descriptors[rows][nearest] * raw).sum(1) / np.linalg.norm(raw, axis=1)
        assert cos.min() >= 0.9999  # ours are L2-normalised (data contract), the original's raw
