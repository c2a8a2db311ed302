"""Descriptor-reliability losses.

- `reliability` (R2D2 `ReliabilityLoss`): the AP of each query (see `ap.py`) weighted by the
  reliability R in [0, 1] predicted at the query (mean of R at the query in image 0 and at its target
  in image 1), with a base kappa (default 0.5):
      loss = 1 - mean_i( AP_i * R_i + kappa * (1 - R_i) ).
  A pixel whose AP is below kappa lowers its loss by predicting R -> 0, above kappa by R -> 1.
  quality (default 'ap'): the per-query score in [0, 1] that R weights. 'hardnet' puts HardNet's
  hardest-negative triplet in the place of AP (the study's "HardNet reliability" variant):
      q_i = 1 - relu(margin + d(a, p) - min_n d(a, n)) / (margin + 2),
  L2 distances of unit vectors lie in [0, 2], so q_i is in [0, 1] and equals 1 exactly when the
  triplet is satisfied by the margin; the `ap` term logs q then.
  start_step (default 0): before this training step the term is 0 (no gradient; ap and R are still
  logged). From scratch every pixel's AP starts below kappa, so R collapses to ~0 everywhere within a
  few tens of Adam steps and stays there (its gradient is scaled by R (1 - R)); starting the term once
  a plain `ap` loss has made the descriptors discriminative lets R learn where AP exceeds kappa.
- `hardest_triplet` (HardNet-style): for each query descriptor a, its positive p (the descriptor at
  the target) and the hardest negative n among the negatives of the sampler (ring + distractors),
  with L2 distances d: loss = mean_i relu(margin + d(a, p) - min_n d(a, n)), margin 1.
"""
from __future__ import annotations

import torch

from ...config import ConfigError
from ._base import Loss, flow_at_map, masked_mean
from ._sampling import SAMPLER_DEFAULTS, gather, sample_pixels
from .ap import AP_DEFAULTS, pixel_ap


def reliability_weighted(ap: torch.Tensor, reliability: torch.Tensor, kappa: float = 0.5) -> torch.Tensor:
    """Per-query loss 1 - (ap * R + kappa * (1 - R)) for ap, reliability (N,)."""
    return 1 - (ap * reliability + kappa * (1 - reliability))


class ReliabilityLoss(Loss):
    """R2D2's AP loss with the reliability-weighted base. Terms: total, ap, reliability."""

    name = "reliability"
    default_conf = {**AP_DEFAULTS, "kappa": 0.5, "start_step": 0, "quality": "ap", "margin": 1.0}
    requires = ("descriptors", "reliability")

    def __init__(self, **conf):
        super().__init__(**conf)
        if self.conf["quality"] not in ("ap", "hardnet"):
            raise ConfigError(f"loss 'reliability': quality must be 'ap' or 'hardnet', got {self.conf['quality']!r}")
        if not (isinstance(self.conf["margin"], (int, float)) and self.conf["margin"] > 0):
            raise ConfigError(f"loss 'reliability': margin must be > 0, got {self.conf['margin']!r}")

    def forward(self, out0, out1, batch, step=0):
        self.check(out0)
        if self.conf["quality"] == "hardnet":
            margin = float(self.conf["margin"])
            triplet, _, _, s = pixel_hardest_triplet(out0, out1, batch, self.conf)
            ap = 1 - triplet / (margin + 2)
        else:
            ap, s = pixel_ap(out0, out1, batch, self.conf)
        zero = out0["descriptors"].sum() * 0 + out0["reliability"].sum() * 0
        if len(ap) == 0:
            return {"total": zero + 1, "ap": zero.detach(), "reliability": zero.detach()}
        rel = (out0["reliability"][s.b, 0, s.qy, s.qx] + out1["reliability"][s.b, 0, s.ty, s.tx]) / 2
        terms = {"ap": ap.mean().detach(), "reliability": rel.mean().detach()}
        if step < int(self.conf["start_step"]):
            return {"total": zero, **terms}
        loss = masked_mean(reliability_weighted(ap, rel, float(self.conf["kappa"])))
        return {"total": loss, **terms}


def hardest_triplet(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                    neg_mask: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Per-anchor loss relu(margin + |a - p| - min_n |a - n|): anchor, positive (N, D), negatives
    (N, K, D) with neg_mask (N, K) (False = not a negative). Returns (N,)."""
    d_pos = (anchor - positive).norm(dim=-1)
    d_neg = (anchor[:, None] - negatives).norm(dim=-1)
    d_neg = torch.where(neg_mask, d_neg, torch.full_like(d_neg, float("inf"))).min(dim=1).values
    return torch.relu(margin + d_pos - d_neg)


def pixel_hardest_triplet(out0: dict, out1: dict, batch: dict, conf: dict):
    """Per-query hardest-negative triplet loss (N,), d(a, p) (N,), min_n d(a, n) (N,) and the samples, over the
    sampler's pixels: the positive is the query's target in image 1, the negatives its ring and the far
    distractors. conf: sampler keys, margin."""
    desc0, desc1 = out0["descriptors"], out1["descriptors"]
    flow, valid = flow_at_map(batch, int(out0.get("stride", 1)), desc0.shape[-2:])
    s = sample_pixels(flow, valid, conf)
    if len(s) == 0:
        empty = desc0.new_zeros(0)
        return empty, empty, empty, s
    a = gather(desc0, s.b, s.qy, s.qx)
    p = gather(desc1, s.b, s.ty, s.tx)
    ring = gather(desc1, s.b[:, None], s.ring_y, s.ring_x)
    dis = gather(desc1, s.dis_b, s.dis_y, s.dis_x)
    # Distractors: the distance matrix once (N x M), not N copies of the descriptors.
    d_dis = torch.cdist(a[None], dis[None])[0]
    d_dis = torch.where(s.far, d_dis, torch.full_like(d_dis, float("inf"))).min(dim=1).values
    d_ring = (a[:, None] - ring).norm(dim=-1)
    d_ring = torch.where(s.ring_valid, d_ring, torch.full_like(d_ring, float("inf"))).min(dim=1).values
    d_neg = torch.minimum(d_dis, d_ring)
    d_pos = (a - p).norm(dim=-1)
    return torch.relu(float(conf["margin"]) + d_pos - d_neg), d_pos, d_neg, s


class HardestTripletLoss(Loss):
    """HardNet-style hardest-negative triplet margin loss on the sampler's pixels.
    Terms: total, pos_dist, neg_dist."""

    name = "hardest_triplet"
    default_conf = {**SAMPLER_DEFAULTS, "margin": 1.0}
    requires = ("descriptors",)

    def forward(self, out0, out1, batch, step=0):
        self.check(out0)
        loss, d_pos, d_neg, s = pixel_hardest_triplet(out0, out1, batch, self.conf)
        if len(s) == 0:
            zero = out0["descriptors"].sum() * 0
            return {"total": zero, "pos_dist": zero.detach(), "neg_dist": zero.detach()}
        return {"total": masked_mean(loss), "pos_dist": d_pos.mean().detach(), "neg_dist": d_neg.mean().detach()}
