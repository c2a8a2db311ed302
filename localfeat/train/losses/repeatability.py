"""Repeatability loss (R2D2): the detection maps of the two images must agree once warped, and be peaky.

With S0 the detection map of image 0 and S1w the map of image 1 resampled at the flow of image 0
(bilinear; pixels without a valid flow set to 0 in both), over the N x N patches P (stride N/2):
    cosim = 1 - mean_P  <S0[P], S1w[P]> / (|S0[P]| |S1w[P]|)
(patches with less than half of their pixels valid are left out), and for each map S
    peaky(S) = 1 - mean( maxpool_{N+1}(A) - avgpool_{N+1}(A) ),  A = avgpool_3(S) (removes the highest
               frequencies; all pools stride 1, padded by half their size, zero padding counted),
    total = cosim + peaky_weight * (peaky(S0) + peaky(S1)) / 2.        N = 16 by default.
The detection map is 'repeatability' (R2D2), else 'scores', else sigmoid('logits').
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._base import Loss, detection_map, flow_at_map, positive_int, warp_map


def cosim_loss(s0: torch.Tensor, s1w: torch.Tensor, valid: torch.Tensor, n: int = 16) -> torch.Tensor:
    """1 - mean cosine similarity of the N x N patches of s0, s1w (B, 1, h, w) (valid (B, h, w))."""
    v = valid[:, None].to(s0.dtype)
    stride = max(1, n // 2)
    p0 = F.unfold(s0 * v, n, stride=stride)          # B x N^2 x P
    p1 = F.unfold(s1w * v, n, stride=stride)
    frac = F.unfold(v, n, stride=stride).mean(1)     # B x P
    cos = (F.normalize(p0, dim=1, eps=1e-8) * F.normalize(p1, dim=1, eps=1e-8)).sum(1)
    keep = (frac >= 0.5).to(cos.dtype)
    return 1 - (cos * keep).sum() / keep.sum().clamp(min=1)


def peaky_loss(s: torch.Tensor, n: int = 16) -> torch.Tensor:
    """1 - mean(maxpool - avgpool) over (N+1) x (N+1) windows of avgpool_3(s), s (B, 1, h, w)."""
    pad = n // 2
    s = F.avg_pool2d(s, 3, stride=1, padding=1)
    mx = F.max_pool2d(s, n + 1, stride=1, padding=pad)
    av = F.avg_pool2d(s, n + 1, stride=1, padding=pad)
    return 1 - (mx - av).mean()


class RepeatabilityLoss(Loss):
    """Terms: total, cosim, peaky."""

    name = "repeatability"
    default_conf = {"N": 16, "peaky_weight": 1.0}
    requires = (("repeatability", "scores", "logits"),)

    def forward(self, out0, out1, batch, step=0):
        self.check(out0)
        n = positive_int(self.conf, "N", "loss 'repeatability'", 2)
        s0, s1 = detection_map(out0), detection_map(out1)
        flow, valid = flow_at_map(batch, int(out0.get("stride", 1)), s0.shape[-2:])
        n_eff = min(n, s0.shape[-1], s0.shape[-2])
        cosim = cosim_loss(s0, warp_map(s1, flow, valid), valid, n_eff)
        peaky = (peaky_loss(s0, n_eff) + peaky_loss(s1, n_eff)) / 2
        return {"total": cosim + float(self.conf["peaky_weight"]) * peaky,
                "cosim": cosim.detach(), "peaky": peaky.detach()}
