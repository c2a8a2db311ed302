"""Quantised AP: localfeat's scatter-add histogram vs R2D2's triangular-kernel formulation (N x Q x M).

Prints forward+backward time of both on the same scores (the R2D2 sampler's size for a batch of 4
crops of 192 px: ~1600 queries x ~2400 candidates, 20 bins), their ratio, and the largest difference
of the APs and of the gradients (the two are the same function).

    .venv/bin/python benchmarks/bench_train_ap.py [--queries 1600 --candidates 2400 --bins 20 --repeat 3]
"""
from __future__ import annotations

import argparse
import time

import torch

from localfeat.train.losses.ap import quantized_ap


def kernel_ap(scores, labels, nq=20, smin=0.0, smax=1.0):
    """R2D2's formulation: every score against every bin with the triangular kernels."""
    delta = (smax - smin) / (nq - 1)
    centres = smax - delta * torch.arange(nq, dtype=scores.dtype)
    x = scores[:, None, :]
    q = 1 - (x - centres[None, :, None]).abs() / delta
    q = torch.cat([torch.where(x >= smax, torch.ones_like(x), q[:, :1]), q[:, 1:-1],
                   torch.where(x <= smin, torch.ones_like(x), q[:, -1:])], dim=1).clamp(min=0)
    lab = labels[:, None, :].to(q.dtype)
    nbs = q.sum(-1)
    rec = (q * lab).sum(-1)
    prec = rec.cumsum(-1) / (1e-16 + nbs.cumsum(-1))
    rec = rec / rec.sum(-1, keepdim=True)
    return (prec * rec).sum(-1)


def timed(fn, scores, labels, nq, repeat):
    best, out, grad = float("inf"), None, None
    for _ in range(repeat):
        s = scores.clone().requires_grad_()
        t0 = time.perf_counter()
        ap = fn(s, labels, nq)
        ap.mean().backward()
        best = min(best, time.perf_counter() - t0)
        out, grad = ap.detach(), s.grad
    return best, out, grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1600)
    parser.add_argument("--candidates", type=int, default=2400)
    parser.add_argument("--bins", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(args.queries, args.candidates, generator=g) * 1.4 - 0.2
    labels = torch.zeros(args.queries, args.candidates, dtype=torch.bool)
    labels[:, 0] = True
    t_ref, ap_ref, g_ref = timed(kernel_ap, scores, labels, args.bins, args.repeat)
    t_new, ap_new, g_new = timed(quantized_ap, scores, labels, args.bins, args.repeat)
    print(f"{'implementation':32s} {'fwd+bwd s':>10s} {'ratio':>7s}")
    print(f"{'R2D2 kernels (N x Q x M)':32s} {t_ref:10.3f} {1.0:7.2f}")
    print(f"{'localfeat scatter-add (N x M)':32s} {t_new:10.3f} {t_ref / t_new:7.2f}x faster")
    print(f"max |AP difference| {float((ap_ref - ap_new).abs().max()):.2e}, "
          f"max |gradient difference| {float((g_ref - g_new).abs().max()):.2e}")


if __name__ == "__main__":
    main()
