"""Shared building blocks (localfeat.ops): the dense-map normalisation with a written-out gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from localfeat.ops import l2_normalize_map


def test_l2_normalize_map_equals_f_normalize_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 7, generator=g)
    x[1, :, 2, 3] = 0  # a zero pixel: the norm is clamped to eps, the gradient is grad / eps
    x[0, :, 4, 1] = 1e-12  # norm 2.2e-12, just above eps: normalised, not clamped
    w = torch.randn(2, 5, 6, 7, generator=g)
    for layout in (torch.contiguous_format, torch.channels_last):
        a = x.clone().contiguous(memory_format=layout).requires_grad_()
        b = x.clone().requires_grad_()
        ya, yb = l2_normalize_map(a), F.normalize(b, dim=1)
        assert torch.allclose(ya, yb, rtol=1e-6, atol=1e-7)
        norms = torch.linalg.vector_norm(ya.detach(), dim=1)
        assert torch.allclose(norms[0], torch.ones(6, 7), atol=1e-6) and norms[1, 2, 3].item() == 0
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6 * b.grad.abs().max().item())
        assert torch.equal(a.grad[1, :, 2, 3], w[1, :, 2, 3] / 1e-12)


def test_l2_normalize_map_gradcheck():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert torch.autograd.gradcheck(l2_normalize_map, (x,))


def test_l2_normalize_map_of_a_half_precision_map_runs_in_float32():
    # Under CUDA autocast the map is float16: normalised in float32 (as autocast runs F.normalize's norm), the
    # gradient handed back in the map's dtype.
    x = torch.randn(1, 6, 4, 5, generator=torch.Generator().manual_seed(2))
    for dtype in (torch.float16, torch.bfloat16):
        a = x.to(dtype).requires_grad_()
        y = l2_normalize_map(a)
        assert y.dtype == torch.float32
        assert torch.allclose(y, F.normalize(x.to(dtype).float(), dim=1), atol=1e-6)
        y.sum().backward()
        assert a.grad.dtype == dtype and torch.isfinite(a.grad.float()).all()
