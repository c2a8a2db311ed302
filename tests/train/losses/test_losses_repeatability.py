"""Repeatability loss: cosine similarity of warped N x N patches and the peakiness term."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from localfeat.train.losses.repeatability import RepeatabilityLoss, cosim_loss, peaky_loss


def _identity(size):
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return {"flow": torch.stack([xs, ys], -1).float()[None], "valid": torch.ones(1, size, size, dtype=torch.bool)}


def _peaky_reference(s: np.ndarray, n: int) -> float:
    """The peakiness term with explicit loops: A = 3x3 mean (zero padded, /9), then per pixel
    max and mean (zero padded, /(n+1)^2) of A over the (n+1)x(n+1) window; 1 - mean(max - mean)."""
    h, w = s.shape
    p = np.pad(s, 1)
    a = np.array([[p[y:y + 3, x:x + 3].sum() / 9 for x in range(w)] for y in range(h)])
    r = n // 2
    out = []
    for y in range(h):
        for x in range(w):
            win = a[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
            out.append(win.max() - win.sum() / (n + 1) ** 2)
    return 1 - float(np.mean(out))


def test_peaky_loss_against_loops():
    rng = np.random.default_rng(0)
    s = rng.uniform(size=(7, 9))
    got = peaky_loss(torch.tensor(s)[None, None], 4).item()
    assert got == pytest.approx(_peaky_reference(s, 4), abs=1e-10)


def test_peaky_loss_prefers_peaks():
    flat = torch.full((1, 1, 32, 32), 0.5)
    peaks = torch.zeros(1, 1, 32, 32)
    peaks[..., 4::8, 4::8] = 1.0
    assert peaky_loss(peaks, 8).item() < peaky_loss(flat, 8).item()


def test_cosim_hand_value():
    # One 2x2 patch (N = 2, stride 1 on a 2x2 map): cos([1,0,0,1], [1,1,0,0]) = 1/2.
    s0 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    s1 = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    assert cosim_loss(s0, s1, valid, 2).item() == pytest.approx(0.5, abs=1e-6)
    assert cosim_loss(s0, s0, valid, 2).item() == pytest.approx(0.0, abs=1e-6)


def test_cosim_and_peaky_gradcheck():
    g = torch.Generator().manual_seed(0)
    s0 = torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    s1 = torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    valid = torch.ones(1, 6, 6, dtype=torch.bool)
    valid[0, 0, :3] = False
    assert torch.autograd.gradcheck(lambda a, b: cosim_loss(a, b, valid, 4), (s0, s1))
    assert torch.autograd.gradcheck(lambda a: peaky_loss(a, 2), (s0,))


def test_repeatability_loss_warps_the_second_map():
    """Image 1 is image 0 shifted right by 3 px; the loss with the true flow sees identical maps."""
    g = torch.Generator().manual_seed(1)
    size = 32
    s0 = torch.rand(1, 1, size, size, generator=g)
    s1 = torch.zeros_like(s0)
    s1[..., 3:] = s0[..., :-3]
    batch = _identity(size)
    batch["flow"][..., 0] += 3
    batch["valid"][..., -3:] = False
    batch["flow"][~batch["valid"]] = float("nan")
    loss = RepeatabilityLoss(N=8)
    out = loss({"repeatability": s0}, {"repeatability": s1}, batch)
    assert out["cosim"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["total"].item() == pytest.approx(out["peaky"].item(), abs=1e-5)
    wrong = RepeatabilityLoss(N=8)({"repeatability": s0}, {"repeatability": s1}, _identity(size))
    assert wrong["cosim"].item() > 0.1
