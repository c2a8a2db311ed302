"""Reliability loss (AP with the reliability-weighted base) and the hardest-negative triplet loss."""
from __future__ import annotations

import pytest
import torch

from localfeat.config import ConfigError
from localfeat.train.losses import LossInputError
from localfeat.train.losses.reliability import (HardestTripletLoss, ReliabilityLoss, hardest_triplet,
                                                reliability_weighted)


def test_reliability_weighted_hand_values():
    ap = torch.tensor([0.9, 0.2, 0.5])
    rel = torch.tensor([1.0, 0.0, 0.3])
    # 1 - (ap R + 0.5 (1 - R)): R = 1 -> 1 - ap; R = 0 -> 0.5; ap = kappa -> 0.5 whatever R
    torch.testing.assert_close(reliability_weighted(ap, rel, 0.5), torch.tensor([0.1, 0.5, 0.5]))
    assert reliability_weighted(torch.tensor([0.8]), torch.tensor([0.25]), 0.5).item() == pytest.approx(
        1 - (0.8 * 0.25 + 0.5 * 0.75))


def test_reliability_gradient_sign_follows_ap_vs_kappa():
    rel = torch.tensor([0.5, 0.5], requires_grad=True)
    reliability_weighted(torch.tensor([0.9, 0.1]), rel, 0.5).sum().backward()
    # d loss / d R = kappa - ap: good pixels are pushed to R -> 1, bad ones to R -> 0.
    torch.testing.assert_close(rel.grad, torch.tensor([0.5 - 0.9, 0.5 - 0.1]))


def test_reliability_weighted_gradcheck():
    ap = torch.tensor([0.3, 0.7, 0.55], dtype=torch.float64, requires_grad=True)
    rel = torch.tensor([0.2, 0.9, 0.6], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, r: reliability_weighted(a, r, 0.5), (ap, rel))


def test_hardest_triplet_hand_value():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.6, 0.8]])                    # |a - p| = sqrt(0.16 + 0.64) = 0.894...
    negs = torch.tensor([[[0.0, 1.0], [-1.0, 0.0], [0.8, 0.6]]])  # distances sqrt2, 2, sqrt(0.04+0.36)
    mask = torch.tensor([[True, True, False]])         # the closest one is not a negative
    expected = max(0.0, 1.0 + 0.8 ** 0.5 - 2 ** 0.5)
    assert hardest_triplet(a, p, negs, mask).item() == pytest.approx(expected, abs=1e-6)
    mask_all = torch.ones(1, 3, dtype=torch.bool)
    assert hardest_triplet(a, p, negs, mask_all).item() == pytest.approx(1.0 + 0.8 ** 0.5 - 0.4 ** 0.5, abs=1e-6)


def test_hardest_triplet_gradcheck():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    n = torch.randn(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 5, generator=g) > 0.3
    mask[:, 0] = True
    assert torch.autograd.gradcheck(lambda x, y, z: hardest_triplet(x, y, z, mask, 3.0), (a, p, n))


def _pair(size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    desc = torch.nn.functional.normalize(torch.randn(1, 8, size, size, generator=g), dim=1)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    flow = torch.stack([xs, ys], -1).float()[None]
    return desc, {"flow": flow, "valid": torch.ones(1, size, size, dtype=torch.bool)}


def test_reliability_loss_on_identical_maps():
    desc, batch = _pair()
    for r, expected in ((1.0, 0.0), (0.0, 0.5), (0.5, 0.25)):   # AP = 1: loss = 1 - (R + 0.5 (1 - R))
        rel = torch.full((1, 1, 32, 32), r)
        out = ReliabilityLoss(border=4)({"descriptors": desc, "reliability": rel},
                                        {"descriptors": desc, "reliability": rel}, batch)
        assert out["total"].item() == pytest.approx(expected, abs=1e-6)
        assert out["ap"].item() == pytest.approx(1.0, abs=1e-6)


def test_reliability_loss_needs_reliability():
    desc, batch = _pair()
    with pytest.raises(LossInputError, match="reliability"):
        ReliabilityLoss()({"descriptors": desc}, {"descriptors": desc}, batch)


def test_hardest_triplet_loss_on_identical_maps():
    desc, batch = _pair()
    out = HardestTripletLoss(border=4)({"descriptors": desc}, {"descriptors": desc}, batch)
    assert out["pos_dist"].item() == pytest.approx(0.0, abs=1e-5)
    # loss = mean relu(1 - d_neg): below 1, and 0 only if every hardest negative is >= 1 away
    assert 0.0 <= out["total"].item() < 1.0
    assert out["neg_dist"].item() > 0.3


def test_reliability_loss_starts_at_start_step():
    desc, batch = _pair()
    rel = torch.full((1, 1, 32, 32), 0.5, requires_grad=True)
    d = desc.clone().requires_grad_(True)
    loss = ReliabilityLoss(border=4, start_step=3)
    outs = {"descriptors": d, "reliability": rel}
    before = loss(outs, outs, batch, step=2)
    # Before start_step: no loss, no gradient, but AP and R are still logged (AP = 1 on identical maps).
    assert before["total"].item() == 0.0
    assert before["ap"].item() == pytest.approx(1.0, abs=1e-6) and before["reliability"].item() == pytest.approx(0.5)
    before["total"].backward()
    assert torch.count_nonzero(rel.grad) == 0 and torch.count_nonzero(d.grad) == 0
    # From start_step on: R2D2's loss, 1 - (AP R + kappa (1 - R)) = 1 - (0.5 + 0.5 * 0.5) with AP = 1.
    at = loss(outs, outs, batch, step=3)
    assert at["total"].item() == pytest.approx(0.25, abs=1e-6)
    at["total"].backward()
    # d loss / d R at every query = (kappa - AP) / n_queries averaged over both views: negative.
    assert rel.grad.sum().item() == pytest.approx(-0.5, abs=1e-5)


def test_reliability_hardnet_quality_is_the_scaled_triplet():
    # quality 'hardnet': q = 1 - triplet / (margin + 2). With R = 1 the loss is 1 - mean q = mean triplet / 3,
    # i.e. the HardNet loss of the same sampled pixels divided by 3; with R = 0 it is kappa's 0.5.
    desc, batch = _pair()
    outs = {"descriptors": desc, "reliability": torch.ones(1, 1, 32, 32)}
    torch.manual_seed(0)
    hard = HardestTripletLoss(border=4)(outs, outs, batch)["total"].item()
    torch.manual_seed(0)
    rel = ReliabilityLoss(border=4, quality="hardnet")(outs, outs, batch)
    assert 0 < hard < 1
    assert rel["total"].item() == pytest.approx(hard / 3, abs=1e-6)
    assert rel["ap"].item() == pytest.approx(1 - hard / 3, abs=1e-6)
    zero = {"descriptors": desc, "reliability": torch.zeros(1, 1, 32, 32)}
    assert ReliabilityLoss(border=4, quality="hardnet")(zero, zero, batch)["total"].item() == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="quality must be 'ap' or 'hardnet'"):
        ReliabilityLoss(quality="triplet")
    with pytest.raises(ConfigError, match="margin must be > 0"):
        ReliabilityLoss(quality="hardnet", margin=0)
