"""Keypoint reprojection loss: hand-computed values, sub-pixel flows, invalid flows, gradients, config errors."""
from __future__ import annotations

import math

import pytest
import torch

from localfeat.registry import ConfigError
from localfeat.train.losses import build_loss
from localfeat.train.losses.reprojection import ReprojectionLoss, reprojection_errors, soft_argmax

T = 0.05
CONF = {"num_points": 1, "radius": 1, "temperature": T, "max_distance": 2.0}
H = W = 24


def _translation(dx: float, dy: float, h=H, w=W):
    """Flow of image 0 -> image 1 for a translation by (dx, dy), valid where the target lies in image 1."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    flow = torch.stack([xs + dx, ys + dy], dim=-1)[None]
    valid = (flow[..., 0] >= 0) & (flow[..., 0] <= w - 1) & (flow[..., 1] >= 0) & (flow[..., 1] <= h - 1)
    return flow, valid


def _batch(flow, valid):
    return {"flow": flow, "valid": valid}


def _peak(points: dict, h=H, w=W) -> torch.Tensor:
    s = torch.zeros(1, 1, h, w)
    for (x, y), v in points.items():
        s[0, 0, y, x] = v
    return s


def test_soft_argmax_is_the_hand_computed_offset():
    s = _peak({(10, 10): 1.0, (11, 10): 1.0 - T})[0]
    p, dispersity = soft_argmax(s, torch.tensor([[10, 10]]), 1, T)
    e = math.exp(-1)
    rest = 7 * math.exp(-20)                                  # the seven zeros of the 3 x 3 window
    q = e / (1 + e + rest)
    assert p[0, 0].item() == pytest.approx(10 + q, abs=1e-6)
    assert p[0, 1].item() == pytest.approx(10.0, abs=1e-6)
    assert dispersity.item() == pytest.approx(q * (1 - q), abs=1e-6)   # a two-pixel softmax: its variance


def test_a_flat_window_has_the_largest_dispersity():
    # 5 x 5 window, all weights 1/25: mean of dx^2 + dy^2 = 2 + 2, divided by R^2 = 4
    s = torch.full((1, H, W), 0.5)
    p, dispersity = soft_argmax(s, torch.tensor([[10, 10]]), 2, T)
    assert p[0].tolist() == pytest.approx([10.0, 10.0], abs=1e-6)
    assert dispersity.item() == pytest.approx(1.0, abs=1e-6)


def test_the_worked_case_of_the_docstring():
    s0 = _peak({(10, 10): 1.0, (11, 10): 1.0 - T})
    s1 = _peak({(13, 12): 1.0})                               # the exact target of the integer peak (10, 10)
    flow, valid = _translation(3.0, 2.0)
    errors, targets, dispersity = reprojection_errors(s0, s1, flow, valid, CONF)
    q = math.exp(-1) / (1 + math.exp(-1))
    assert errors.tolist() == pytest.approx([q], abs=1e-5)   # 0.2689 px, all of it in x
    assert targets[0].tolist() == pytest.approx([13 + q, 12.0], abs=1e-5)
    assert dispersity.tolist() == pytest.approx([q * (1 - q) / 2], abs=1e-5)   # image 1's window: a single peak
    terms = ReprojectionLoss(**{**CONF, "peaky": 0.5})({"scores": s0}, {"scores": s1}, _batch(flow, valid))
    assert terms["total"].item() == pytest.approx(q + 0.5 * q * (1 - q) / 2, abs=1e-5)


def test_a_map_warped_with_the_image_gives_zero():
    pts = {(10, 10): 1.0, (11, 10): 1.0 - T, (10, 11): 0.97}
    s0 = _peak(pts)
    s1 = _peak({(x + 3, y + 2): v for (x, y), v in pts.items()})
    flow, valid = _translation(3.0, 2.0)
    errors, _, _ = reprojection_errors(s0, s1, flow, valid, CONF)
    assert errors.item() == pytest.approx(0.0, abs=1e-6)


def test_a_sub_pixel_flow_is_read_bilinearly():
    # flow = translation by (2.5, 0): the target of p0 = (10, 10) is (12.5, 10); image 1's keypoint (12, 10): 0.5 px
    s0 = _peak({(10, 10): 1.0})
    s1 = _peak({(12, 10): 1.0})
    flow, valid = _translation(2.5, 0.0)
    errors, targets, _ = reprojection_errors(s0, s1, flow, valid, CONF)
    assert targets[0].tolist() == pytest.approx([12.5, 10.0], abs=1e-5)
    assert errors.item() == pytest.approx(0.5, abs=1e-5)


def test_targets_without_a_keypoint_within_max_distance_are_left_out():
    s0 = _peak({(10, 10): 1.0, (4, 4): 0.9})
    s1 = _peak({(10, 13): 1.0, (5, 4): 1.0})                  # 3 px from the first target, 1 px from the second
    flow, valid = _translation(0.0, 0.0)
    errors, targets, _ = reprojection_errors(s0, s1, flow, valid, {**CONF, "num_points": 2})
    assert targets.shape == (1, 2) and targets[0].tolist() == pytest.approx([4.0, 4.0], abs=1e-5)
    assert errors.tolist() == pytest.approx([1.0], abs=1e-5)
    terms = ReprojectionLoss(**{**CONF, "num_points": 2})({"scores": s0}, {"scores": s1}, _batch(flow, valid))
    assert terms["paired"].item() == 1.0 and terms["within1"].item() == 1.0


def test_pairs_are_mutual_nearest_neighbours():
    # targets (10, 10) and (13, 10) both have image 1's only keypoint (11, 10) as nearest, 1 and 2 px away:
    # only the mutual pair (the first) counts
    s0 = _peak({(10, 10): 1.0, (13, 10): 0.9})
    s1 = _peak({(11, 10): 1.0})
    flow, valid = _translation(0.0, 0.0)
    errors, targets, _ = reprojection_errors(s0, s1, flow, valid, {**CONF, "num_points": 2})
    assert targets.tolist() == [[10.0, 10.0]] and errors.tolist() == pytest.approx([1.0], abs=1e-5)


def test_peaks_without_a_valid_flow_around_them_are_left_out():
    s0 = _peak({(10, 10): 1.0, (4, 4): 0.9})
    s1 = _peak({(10, 10): 1.0, (4, 4): 1.0})
    flow, valid = _translation(0.0, 0.0)
    valid[0, 9, 11] = False                                   # one pixel of the best peak's window
    errors, targets, _ = reprojection_errors(s0, s1, flow, valid, {**CONF, "num_points": 2})
    assert targets.shape == (1, 2) and targets[0].tolist() == pytest.approx([4.0, 4.0], abs=1e-5)
    assert errors.tolist() == pytest.approx([0.0], abs=1e-6)


def test_gradients_reach_both_maps_and_no_flow_gives_a_zero_that_backpropagates():
    torch.manual_seed(0)
    s0 = torch.rand(2, 1, H, W, requires_grad=True)
    s1 = torch.rand(2, 1, H, W, requires_grad=True)
    flow, valid = _translation(1.3, -0.7)
    loss = ReprojectionLoss(num_points=16, temperature=0.1)
    terms = loss({"scores": s0}, {"scores": s1}, _batch(flow.expand(2, -1, -1, -1), valid.expand(2, -1, -1)))
    assert terms["total"].item() > 0 and 0 <= terms["within1"].item() <= 1
    terms["total"].backward()
    assert s0.grad.abs().sum() > 0 and s1.grad.abs().sum() > 0

    none = torch.zeros(2, H, W, dtype=torch.bool)
    terms = loss({"scores": s0}, {"scores": s1}, _batch(torch.full((2, H, W, 2), float("nan")), none))
    assert terms["total"].item() == 0.0
    terms["total"].backward()


def test_the_loss_builds_from_a_config_and_rejects_bad_values():
    spec = build_loss({"reprojection": {"weight": 0.5, "max_distance": 3}})
    assert spec.weights["reprojection"] == 0.5 and spec.parts["reprojection"].conf["max_distance"] == 3
    with pytest.raises(ConfigError, match="temperature"):
        ReprojectionLoss(temperature=0)
    with pytest.raises(ConfigError, match="peaky"):
        ReprojectionLoss(peaky=-1)
    with pytest.raises(ConfigError, match="radius"):
        ReprojectionLoss(radius=0)
    with pytest.raises(ConfigError):
        ReprojectionLoss(window=3)
