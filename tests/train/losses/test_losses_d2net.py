"""D2-Net loss: detection-weighted triplet margin loss (margin 1, safe radius 4)."""
from __future__ import annotations

import pytest
import torch

from localfeat.train.losses.d2net import D2NetLoss, d2net_pair_loss


def test_d2net_pair_loss_hand_value():
    # Two correspondences on a 1-D strip of 6 map pixels (y = 0), 2-D descriptors.
    grid = torch.tensor([[float(x), 0.0] for x in range(6)])
    all0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0], [0.0, -1.0]])
    all1 = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [0.0, -1.0], [-1.0, 0.0]])
    idx0 = torch.tensor([0, 5])
    idx1 = torch.tensor([0, 5])
    d0, d1 = all0[idx0], all1[idx1]
    pos0, pos1 = grid[idx0], grid[idx1]
    s0, s1 = torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.25])
    loss, pd, nd = d2net_pair_loss(d0, d1, s0, s1, all0, all1, pos0, pos1, grid, grid, 1.0, 1.5)
    # c0: d0=(1,0), d1=(.8,.6): p = 2 - 1.6 = 0.4. Far from x=0 (|dx| > 1.5): pixels 2..5.
    #   image-1 side min over all1[2:] of 2 - 2 d0.k: (1,0) -> 0; image-0 side: 2 - 2 d1.all0[2:]:
    #   (.6,.8) -> 2 - 2(.48+.48) = 0.08, (.8,.6) -> 0.08, ... -> min 0 -> n = 0; relu(1 + .4 - 0) = 1.4
    # c1: d0=(0,-1), d1=(-1,0): p = 2. Far from x=5: pixels 0..3.
    #   image-1: 2 - 2 (0,-1).all1[:4] = [2 - 2(-.6), 2 - 2(-1), 2, 2 - 2(-.8)] -> min 2
    #   image-0: 2 - 2 (-1,0).all0[:4] = [4, 2, 3.2, 3.6] -> min 2 -> n = 2; relu(1 + 2 - 2) = 1
    # weights 0.5 * 1 = 0.5 and 1 * 0.25 = 0.25: (0.5 * 1.4 + 0.25 * 1) / 0.75
    assert loss.item() == pytest.approx((0.5 * 1.4 + 0.25 * 1.0) / 0.75, abs=1e-6)
    assert pd.item() == pytest.approx((0.4 + 2.0) / 2, abs=1e-6)
    assert nd.item() == pytest.approx((0.0 + 2.0) / 2, abs=1e-6)


def test_d2net_pair_loss_gradcheck():
    g = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="xy"), -1).reshape(-1, 2)
    grid = grid.double()
    all0 = torch.nn.functional.normalize(torch.randn(16, 3, generator=g, dtype=torch.float64), dim=1)
    all1 = torch.nn.functional.normalize(torch.randn(16, 3, generator=g, dtype=torch.float64), dim=1)
    idx = torch.tensor([0, 5, 15])
    s0 = torch.rand(3, generator=g, dtype=torch.float64)
    s1 = torch.rand(3, generator=g, dtype=torch.float64)
    inputs = (all0.clone().requires_grad_(), all1.clone().requires_grad_(), s0.requires_grad_(), s1.requires_grad_())

    def f(a0, a1, x0, x1):
        return d2net_pair_loss(a0[idx], a1[idx], x0, x1, a0, a1, grid[idx], grid[idx], grid, grid, 1.0, 1.0)[0]

    assert torch.autograd.gradcheck(f, inputs)


def test_d2net_loss_identical_maps_far_below_unrelated_maps():
    g = torch.Generator().manual_seed(1)
    size = 16
    feats = torch.relu(torch.randn(1, 32, size, size, generator=g)) + 0.01
    other = torch.relu(torch.randn(1, 32, size, size, generator=g)) + 0.01
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    batch = {"flow": torch.stack([xs, ys], -1).float()[None], "valid": torch.ones(1, size, size, dtype=torch.bool)}

    def out(f):
        return {"descriptors": torch.nn.functional.normalize(f, dim=1), "features": f, "stride": 1}

    torch.manual_seed(0)
    same = D2NetLoss()(out(feats), out(feats), batch)
    diff = D2NetLoss()(out(feats), out(other), batch)
    assert same["pos_dist"].item() == pytest.approx(0.0, abs=1e-5)
    assert same["total"].item() < diff["total"].item() - 0.3


def test_d2net_loss_at_stride_8():
    """The flow is brought to map resolution: map pixel j covers input pixels 8j..8j+7."""
    g = torch.Generator().manual_seed(2)
    feats = torch.relu(torch.randn(1, 16, 8, 8, generator=g)) + 0.01
    ys, xs = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    batch = {"flow": torch.stack([xs, ys], -1).float()[None], "valid": torch.ones(1, 64, 64, dtype=torch.bool)}
    o = {"descriptors": torch.nn.functional.normalize(feats, dim=1), "features": feats, "stride": 8}
    res = D2NetLoss(safe_radius=1)(o, o, batch)
    assert res["pos_dist"].item() == pytest.approx(0.0, abs=1e-5)
