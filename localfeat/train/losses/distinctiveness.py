"""Distinctiveness loss: the detection score of a pixel should say how unambiguous its descriptor is,
plus the peakiness term (as used to train scale/viewpoint-robust attention/score maps).

For the sampled query pixels i of image 0 (the sampler of `_sampling`), with L2-normalised
descriptors d_i and the candidate descriptors e_k of image 1 (the sampler's distractor grid over the
batch, minus those within neg_d of the true correspondence, which are not confusers):
    n_i   = #{ k : |d_i - e_k| < margin }          (descriptors within the margin: ambiguity)
    t_i   = 1 / (1 + n_i) ** tau                     (target score, tau = 0.25; no gradient)
    score = mean_i (S0_i - t_i)^2                   (S0 = detection map of image 0 at the query)
    total = score + peaky_weight * (peaky(S0) + peaky(S1)) / 2     (peaky: see `repeatability.py`, N = 16).
The count is a step function of the descriptors: the gradient flows into the score map only.
"""
from __future__ import annotations

import torch

from ._base import Loss, detection_map, flow_at_map, masked_mean, positive_int
from ._sampling import SAMPLER_DEFAULTS, gather, sample_pixels
from .repeatability import peaky_loss


def distinctiveness_targets(anchor: torch.Tensor, candidates: torch.Tensor, mask: torch.Tensor,
                            margin: float, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets (N,) = 1 / (1 + n)^tau and counts n (N,): anchor (N, D), candidates (M, D), mask (N, M)."""
    with torch.no_grad():
        d = torch.cdist(anchor[None], candidates[None])[0]
        n = ((d < margin) & mask).sum(-1).to(anchor.dtype)
    return 1 / (1 + n) ** tau, n


def distinctiveness_score_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean (scores - targets)^2, scores/targets (N,)."""
    return ((scores - targets) ** 2).mean()


class DistinctivenessLoss(Loss):
    """Terms: total, score, peaky, confusers (mean n_i)."""

    name = "distinctiveness"
    default_conf = {**SAMPLER_DEFAULTS, "margin": 1.0, "tau": 0.25, "N": 16, "peaky_weight": 1.0}
    requires = ("descriptors", ("repeatability", "scores", "logits"))

    def forward(self, out0, out1, batch, step=0):
        self.check(out0)
        desc0, desc1 = out0["descriptors"], out1["descriptors"]
        s0, s1 = detection_map(out0), detection_map(out1)
        n = min(positive_int(self.conf, "N", "loss 'distinctiveness'", 2), s0.shape[-1], s0.shape[-2])
        peaky = (peaky_loss(s0, n) + peaky_loss(s1, n)) / 2
        flow, valid = flow_at_map(batch, int(out0.get("stride", 1)), desc0.shape[-2:])
        s = sample_pixels(flow, valid, self.conf)
        pw = float(self.conf["peaky_weight"])
        if len(s) == 0:
            zero = s0.sum() * 0
            return {"total": pw * peaky, "score": zero.detach(), "peaky": peaky.detach(), "confusers": zero.detach()}
        a = gather(desc0, s.b, s.qy, s.qx)
        cand = gather(desc1, s.dis_b, s.dis_y, s.dis_x)
        targets, counts = distinctiveness_targets(a, cand, s.far, float(self.conf["margin"]), float(self.conf["tau"]))
        score = distinctiveness_score_loss(s0[s.b, 0, s.qy, s.qx], targets)
        return {"total": score + pw * peaky, "score": score.detach(), "peaky": peaky.detach(),
                "confusers": masked_mean(counts).detach()}
