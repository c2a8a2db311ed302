"""Local-window NRE loss: hand-computed values, the bilinear target, borders, gradients, the sampler it shares."""
from __future__ import annotations

import math

import pytest
import torch

from localfeat.registry import ConfigError
from localfeat.train.losses import build_loss
from localfeat.train.losses.nre import NRELoss, window_nre

CONF = {"subq": 100, "border": 0, "radius": 1, "temperature": 0.1}


def _one_query(h=7, w=7, target=(3.0, 3.0), d=3):
    """Every pixel of image 0 has descriptor e0 and flows to `target` (x, y) in image 1; subq 100 keeps one
    query, wherever its random grid offset puts it."""
    flow = torch.tensor(target).expand(1, h, w, 2).clone()
    valid = torch.ones(1, h, w, dtype=torch.bool)
    desc0 = torch.zeros(1, d, h, w)
    desc0[0, 0] = 1.0
    return desc0, flow, valid


def _call(desc0, desc1, flow, valid, conf=CONF):
    return window_nre(desc0, desc1, flow, valid, dict(conf))


def test_equal_similarities_give_log_of_the_candidates():
    desc0, flow, valid = _one_query()
    desc1 = torch.zeros(1, 3, 7, 7)
    desc1[0, 1] = 1.0                                   # orthogonal to the query everywhere: all similarities 0
    loss, _, _ = _call(desc0, desc1, flow, valid)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(math.log(9), abs=1e-6)


def test_a_window_at_the_corner_counts_only_the_pixels_inside():
    desc0, flow, valid = _one_query(target=(0.0, 0.0))
    desc1 = torch.zeros(1, 3, 7, 7)
    desc1[0, 1] = 1.0
    loss, _, _ = _call(desc0, desc1, flow, valid)
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)


def test_a_sharp_match_gives_the_hand_computed_value():
    desc0, flow, valid = _one_query(target=(3.0, 3.0))
    desc1 = torch.zeros(1, 3, 7, 7)
    desc1[0, 1] = 1.0
    desc1[0, :, 3, 3] = torch.tensor([1.0, 0.0, 0.0])   # similarity 1 at the target, 0 at its 8 neighbours
    loss, best, _ = _call(desc0, desc1, flow, valid)
    assert loss.item() == pytest.approx(math.log(1 + 8 * math.exp(-1 / 0.1)), abs=1e-6)  # float32 log-softmax
    assert best.tolist() == [[3, 3]]


def test_the_target_is_spread_bilinearly():
    # Target (2.25, 3.5): corners (2,3) 0.375, (3,3) 0.125, (2,4) 0.375, (3,4) 0.125; window centred on (2, 4)
    # (round half to even: 3.5 -> 4). Similarities s at four pixels, 0 elsewhere in the 3 x 3 window.
    desc0, flow, valid = _one_query(target=(2.25, 3.5))
    desc1 = torch.zeros(1, 3, 7, 7)
    desc1[0, 1] = 1.0
    sims = {(2, 3): 0.9, (3, 3): 0.5, (2, 4): 0.7, (1, 5): 0.3}
    for (x, y), s in sims.items():
        desc1[0, :, y, x] = torch.tensor([s, math.sqrt(1 - s * s), 0.0])
    loss, _, _ = _call(desc0, desc1, flow, valid)
    window = [(x, y) for y in (3, 4, 5) for x in (1, 2, 3)]
    z = sum(math.exp(sims.get(p, 0.0) / 0.1) for p in window)
    logp = {p: sims.get(p, 0.0) / 0.1 - math.log(z) for p in window}
    expected = -(0.375 * logp[(2, 3)] + 0.125 * logp[(3, 3)] + 0.375 * logp[(2, 4)] + 0.125 * logp[(3, 4)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_target_on_the_last_column_gives_a_finite_loss():
    desc0, flow, valid = _one_query(target=(6.0, 2.0))     # x0 + 1 = w: that corner has weight 0
    desc1 = torch.zeros(1, 3, 7, 7)
    desc1[0, 1] = 1.0
    loss, _, _ = _call(desc0, desc1, flow, valid)
    assert loss.item() == pytest.approx(math.log(6), abs=1e-6)


def test_the_loss_falls_as_the_map_sharpens_and_its_gradient_is_finite():
    # Identity flow shifted by a third of a pixel; image 1's descriptors are image 0's resampled there (sharp)
    # or blurred over 5 x 5 pixels: the sharp map scores lower.
    torch.manual_seed(0)
    h = w = 40
    desc = torch.nn.functional.normalize(torch.randn(1, 16, h, w), dim=1)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    flow = torch.stack([xs, ys], -1)[None].clone()
    valid = torch.ones(1, h, w, dtype=torch.bool)
    blurred = torch.nn.functional.normalize(torch.nn.functional.avg_pool2d(desc, 5, 1, 2), dim=1)
    conf = {"subq": 4, "border": 4, "radius": 3, "temperature": 0.05}
    torch.manual_seed(1)
    sharp_loss, best, t = window_nre(desc, desc, flow, valid, conf)
    torch.manual_seed(1)
    blur_loss, _, _ = window_nre(desc, blurred, flow, valid, conf)
    assert sharp_loss.mean() < blur_loss.mean() - 1.0
    assert torch.equal(best, t.round().long())           # every query's best pixel is its target
    d1 = blurred.clone().requires_grad_(True)
    torch.manual_seed(1)
    window_nre(desc, d1, flow, valid, conf)[0].mean().backward()
    assert torch.isfinite(d1.grad).all() and d1.grad.abs().sum() > 0


def test_nre_in_a_weighted_sum_and_its_terms():
    torch.manual_seed(0)
    h = w = 32
    desc = torch.nn.functional.normalize(torch.randn(2, 8, h, w), dim=1)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    batch = {"flow": torch.stack([xs, ys], -1)[None].repeat(2, 1, 1, 1), "valid": torch.ones(2, h, w, dtype=torch.bool)}
    out = {"descriptors": desc, "stride": 1}
    result = build_loss({"nre": {"weight": 2.0, "radius": 2, "temperature": 0.05, "border": 4}})(out, out, batch)
    assert result["nre/hit"].item() == 1.0                # identical maps: the target is always the best pixel
    assert result["total"].item() == pytest.approx(2 * result["nre/nre"].item())


def test_bad_configuration_is_refused():
    with pytest.raises(ConfigError, match="radius"):
        NRELoss(radius=0)
    with pytest.raises(ConfigError, match="temperature"):
        NRELoss(temperature=0)
    with pytest.raises(ConfigError):
        NRELoss(temprature=0.1)
