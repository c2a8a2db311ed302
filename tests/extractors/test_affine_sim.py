"""Affine simulation (`affine_sim`): view sampling, exact view geometry, mapping back, duplicates, gain at tilt."""
from __future__ import annotations

import numpy as np
import pytest

from localfeat import load_extractor, load_matcher
from localfeat.eval.invariance import evaluate_pair, load_photos, make_pair
from localfeat.extractors.affine_sim import _dedup, match_views, simulate_view, simulated_views


def test_asift_view_sampling():
    views = simulated_views([1, 2, 4], 72.0)
    assert len(views) == 1 + 5 + 10
    assert views[:2] == [(1.0, 0.0), (2.0, 0.0)]
    np.testing.assert_allclose([p for t, p in views if t == 2.0], [0, 36, 72, 108, 144])
    assert max(p for t, p in views if t == 4.0) == pytest.approx(162.0)


@pytest.mark.parametrize("t,phi", [(1.0, 0.0), (1.0, 30.0), (2.0, 0.0), (4.0, 72.0)])
def test_view_map_sends_a_blob_to_its_predicted_position(t, phi):
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    p = np.array([97.3, 41.6])
    img = (200 * np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 3.0 ** 2))).astype(np.float32)
    view, mask, A = simulate_view(img, t, phi)
    q = A @ np.array([p[0], p[1], 1.0])
    vy, vx = np.mgrid[0:view.shape[0], 0:view.shape[1]]
    wgt = view.astype(np.float64)
    centroid = np.array([(wgt * vx).sum(), (wgt * vy).sum()]) / wgt.sum()
    np.testing.assert_allclose(centroid, q, atol=0.1)
    assert mask[int(round(q[1])), int(round(q[0]))] == 255


def test_single_upright_view_reproduces_the_base_extractor():
    img = load_photos(size=200, max_photos=1)[0][1]
    base = load_extractor("sift").extract(img)
    sim = load_extractor("affine_sim", base="sift", tilts=[1]).extract(img)
    order_b = np.lexsort((base.keypoints[:, 1], base.keypoints[:, 0], -base.scores))
    order_s = np.lexsort((sim.keypoints[:, 1], sim.keypoints[:, 0], -sim.scores))
    # The 5 px border of the valid region drops the few points SIFT finds that close to the image edge.
    # (tested at the nearest pixel, as the mask is)
    r = np.round(base.keypoints)
    inner = ((r >= 5) & (r <= np.array(base.image_size) - 6)).all(1)
    assert len(sim) == inner.sum()
    kb = base.keypoints[order_b][inner[order_b]]
    np.testing.assert_allclose(sim.keypoints[order_s], kb, atol=1e-4)


def test_dedup_drops_only_near_identical_points_of_other_views():
    kpts = np.array([[10, 10], [10.5, 10], [10.2, 10.1], [30, 30]], np.float64)
    scores = np.array([4, 3, 2, 1], np.float32)
    d = np.eye(4, dtype=np.float32)
    d[1] = d[0]  # same descriptor as point 0, other view -> duplicate
    d[2] = np.array([0.6, 0.8, 0, 0])  # close but different descriptor -> kept
    views = np.array([0, 1, 2, 1])
    assert _dedup(kpts, scores, d, views, 1.0, 0.9).tolist() == [0, 2, 3]
    assert _dedup(kpts, scores, d, views, 1.0, None).tolist() == [0, 3]
    same_view = np.array([0, 0, 0, 0])
    assert _dedup(kpts, scores, d, same_view, 1.0, None).tolist() == [0, 1, 2, 3]


def test_affine_simulation_raises_correct_matches_at_tilt_4():
    img = load_photos(size=200, max_photos=1)[0][1]
    img_b, H = make_pair(img, "tilt", 4.0, longitude=0.0)
    sift = load_extractor("sift")
    asift = load_extractor("affine_sim", base="sift", tilts=[1, 2, 4])
    plain = evaluate_pair(sift.extract(img), sift.extract(img_b), H)
    sim = evaluate_pair(asift.extract(img), asift.extract(img_b), H)
    assert sim["n_correct"] >= 5 * max(plain["n_correct"], 4)
    assert sim["mma"]["3"] > plain["mma"]["3"] + 0.2


def test_match_views_keeps_the_best_view_pairs():
    img = load_photos(size=160, max_photos=1)[0][1]
    asift = load_extractor("affine_sim", base="sift", tilts=[1, 2])
    v0 = asift.extract_views(img)
    m = match_views(v0, v0, load_matcher("nearest_neighbor"), best=2)
    # Identical images: the best view pairs are a view with itself, matched onto itself.
    n = sum(len(f) for f in v0)
    assert len(m) > 0 and m.indices.max() < n
    assert np.mean(m.indices[:, 0] == m.indices[:, 1]) > 0.95
