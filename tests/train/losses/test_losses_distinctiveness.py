"""Distinctiveness loss: target 1 / (1 + confusers)^tau, squared error on the score, peakiness term."""
from __future__ import annotations

import pytest
import torch

from localfeat.train.losses.distinctiveness import (DistinctivenessLoss, distinctiveness_score_loss,
                                                    distinctiveness_targets)
from localfeat.train.losses.repeatability import peaky_loss


def test_targets_hand_values():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cand = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, -1.0]])
    # distances of anchor 0: 0, sqrt(.04+.36)=.632, sqrt(.16+.64)=.894, sqrt2 ; anchor 1: sqrt2, .894, .632, 2
    mask = torch.tensor([[False, True, True, True], [True, True, True, True]])   # (0, 0) is the true match
    t, n = distinctiveness_targets(anchor, cand, mask, margin=1.0, tau=0.25)
    torch.testing.assert_close(n, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(t, torch.tensor([3.0 ** -0.25, 3.0 ** -0.25]))
    t, n = distinctiveness_targets(anchor, cand, mask, margin=0.7, tau=0.5)
    torch.testing.assert_close(n, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(t, torch.tensor([2.0 ** -0.5, 2.0 ** -0.5]))


def test_score_loss_hand_value_and_gradcheck():
    s = torch.tensor([0.5, 1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert distinctiveness_score_loss(s, t).item() == pytest.approx(0.25)
    assert torch.autograd.gradcheck(lambda x: distinctiveness_score_loss(x, t), (s,))


def test_distinctiveness_loss_total_and_gradient_goes_to_scores_only():
    g = torch.Generator().manual_seed(0)
    size = 32
    desc = torch.nn.functional.normalize(torch.randn(1, 8, size, size, generator=g), dim=1).requires_grad_()
    scores = torch.rand(1, 1, size, size, generator=g).requires_grad_()
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    batch = {"flow": torch.stack([xs, ys], -1).float()[None], "valid": torch.ones(1, size, size, dtype=torch.bool)}
    out = {"descriptors": desc, "scores": scores}
    torch.manual_seed(0)
    res = DistinctivenessLoss(border=4, N=8)(out, out, batch)
    assert res["total"].item() == pytest.approx(res["score"].item() + peaky_loss(scores, 8).item(), abs=1e-5)
    res["total"].backward()
    assert desc.grad is None or float(desc.grad.abs().sum()) == 0.0
    assert float(scores.grad.abs().sum()) > 0
