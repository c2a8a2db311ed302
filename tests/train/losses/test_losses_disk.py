"""DISK's REINFORCE loss: match distribution, rewards, keypoint sampling, schedules, gradients."""
from __future__ import annotations

import math

import pytest
import torch

from localfeat.train.losses.disk import (DiskLoss, disk_pair_loss, match_log_probs, match_rewards,
                                         sample_keypoints)


def test_match_log_probs_hand_value():
    d0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    lp = match_log_probs(d0, d1, theta=1.0)
    # distances [[0, s2], [s2, 0]]; row and column softmax both give 1/(1 + e^-s2) on the diagonal
    diag = 1 / (1 + math.exp(-math.sqrt(2)))
    off = 1 - diag
    expected = torch.log(torch.tensor([[diag * diag, off * off], [off * off, diag * diag]]))
    torch.testing.assert_close(lp, expected)


def test_disk_pair_loss_hand_value():
    lp0 = torch.tensor([-1.0, -2.0])
    lp1 = torch.tensor([-0.5])
    mlp = torch.log(torch.tensor([[0.6], [0.1]]))
    rewards = torch.tensor([[1.0], [-0.25]])
    loss, expected = disk_pair_loss(lp0, lp1, mlp, rewards, kp_penalty=-0.001)
    # -sum R p (log p + lp0 + lp1) - kp (sum lp)
    manual = -(1.0 * 0.6 * (math.log(0.6) - 1.5) + (-0.25) * 0.1 * (math.log(0.1) - 2.5)) - (-0.001) * (-3.5)
    assert loss.item() == pytest.approx(manual, abs=1e-6)
    assert expected.item() == pytest.approx(0.6 - 0.025 - 0.003, abs=1e-6)


def test_disk_pair_loss_gradcheck():
    g = torch.Generator().manual_seed(0)
    lp0 = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    lp1 = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    d0 = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    d1 = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    rewards = torch.tensor([[1.0, -0.25, 0, -0.25], [-0.25, 1, -0.25, 0], [0, 0, 0, 1]], dtype=torch.float64)

    # The probabilities p are held constant in the loss (REINFORCE): check the gradient with p given.
    probs = match_log_probs(d0, d1, 3.0).detach().exp()

    def f(a, b, x, y):
        return disk_pair_loss(a, b, match_log_probs(x, y, 3.0), rewards, probs=probs)[0]

    assert torch.autograd.gradcheck(f, (lp0, lp1, d0, d1))
    # By default p = exp(log P) detached: same value and gradient as with p given.
    a = disk_pair_loss(lp0, lp1, match_log_probs(d0, d1, 3.0), rewards)[0]
    b = f(lp0, lp1, d0, d1)
    ga = torch.autograd.grad(a, (lp0, d0))
    gb = torch.autograd.grad(b, (lp0, d0))
    torch.testing.assert_close(a, b)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y)


def test_match_rewards():
    flow = torch.full((4, 4, 2), float("nan"))
    valid = torch.zeros(4, 4, dtype=torch.bool)
    flow[1, 2] = torch.tensor([3.0, 1.0])
    valid[1, 2] = True
    xy0 = torch.tensor([[2, 1], [0, 0]])          # (x, y): the first has a flow, the second none
    xy1 = torch.tensor([[3, 2], [0, 3]])          # distance to (3, 1): 1 and 3.6
    r = match_rewards(xy0, xy1, flow, valid, 2.0, 1.0, -0.25)
    torch.testing.assert_close(r, torch.tensor([[1.0, -0.25], [0.0, 0.0]]))


def test_sample_keypoints_log_probs():
    # One 2x2 cell: logits make pixel (x=1, y=0) the near-certain proposal and acceptance.
    logits = torch.tensor([[-20.0, 20.0], [-20.0, -20.0]], requires_grad=True)
    torch.manual_seed(0)
    xy, lp = sample_keypoints(logits, 2)
    assert xy.tolist() == [[1, 0]]
    assert lp.item() == pytest.approx(0.0, abs=1e-6)
    # A cell with a real choice: the sampled proposal k has lp = log softmax(l)_k + log sigmoid(l_k) and
    # d lp / d l = onehot_k (2 - sigmoid(l_k)) - softmax(l) (acceptance is near-certain: all l >= 9).
    values = [[10.0, 11.0], [12.0, 9.0]]
    logits = torch.tensor(values, requires_grad=True)
    torch.manual_seed(3)
    xy, lp = sample_keypoints(logits, 2)
    assert xy.shape == (1, 2)
    k = int(xy[0, 1]) * 2 + int(xy[0, 0])
    flat = torch.tensor(values, dtype=torch.float64).reshape(-1)
    soft = torch.softmax(flat, 0)
    assert lp.item() == pytest.approx(float(torch.log(soft[k]) + torch.nn.functional.logsigmoid(flat[k])), abs=1e-6)
    lp.sum().backward()
    expected = -soft
    expected[k] += 2 - torch.sigmoid(flat[k])
    torch.testing.assert_close(logits.grad.reshape(-1).double(), expected, atol=1e-6, rtol=0)


def test_theta_and_ramp_schedules():
    loss = DiskLoss(anneal_steps=100, ramp_steps=10)
    assert loss.theta(0) == 15.0 and loss.theta(50) == 32.5 and loss.theta(1000) == 50.0
    assert loss.ramp(0) == 0.0 and loss.ramp(5) == 0.5 and loss.ramp(20) == 1.0


def test_disk_loss_rewards_matching_descriptors():
    """Identical images, descriptors, and (near-certain) keypoints, one per 8x8 cell: every match is
    correct, so the expected reward is close to the 16 keypoints and grows with theta."""
    g = torch.Generator().manual_seed(3)
    size = 32
    desc = torch.nn.functional.normalize(torch.randn(1, 16, size, size, generator=g), dim=1)
    logits = torch.full((1, 1, size, size), -20.0)
    logits[..., 3::8, 5::8] = 20.0
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    batch = {"flow": torch.stack([xs, ys], -1).float()[None], "valid": torch.ones(1, size, size, dtype=torch.bool)}
    out = {"descriptors": desc, "logits": logits}
    rewards = []
    for step in (0, 10 ** 6):
        torch.manual_seed(0)
        rewards.append(DiskLoss(anneal_steps=1000)(out, out, batch, step)["reward"].item())
    assert 8 < rewards[0] < rewards[1] <= 16
