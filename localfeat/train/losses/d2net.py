"""D2-Net loss: a triplet margin loss weighted by the soft-detection scores (Dusmanu et al. 2019).

For the correspondences c = (i in image 0, j in image 1) of a pair (at map resolution, at most
`max_points` of them drawn at random), with L2-normalised descriptors:
    p(c)  = |d0_i - d1_j|^2 = 2 - 2 d0_i . d1_j                       (positive distance)
    n(c)  = min( min_{k: |k - j|_inf > R} |d0_i - d1_k|^2,  min_{k: |k - i|_inf > R} |d0_k - d1_j|^2 )
    loss  = sum_c s0_i s1_j relu(margin + p(c) - n(c)) / sum_c s0_i s1_j,
margin M = 1, safe radius R = 4 map pixels; s0, s1 the soft-detection scores at the points (for a
model with raw 'features', D2-Net's soft detection of them; otherwise the model's detection map).
The descriptor and score of image 1 are sampled bilinearly at the (sub-pixel) correspondence, as
the original does. The loss of a batch is the mean over its pairs with correspondences.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._base import Loss, detection_map, flow_at_map, positive_int


def soft_scores(out: dict) -> torch.Tensor:
    """Soft-detection scores (B, h, w): D2-Net's soft detection of raw 'features' when present."""
    if "features" in out:
        from ...extractors.d2net import soft_detection_scores

        return soft_detection_scores(out["features"])
    return detection_map(out)[:, 0]


def _bilinear(maps: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """maps (C, h, w) sampled at xy (K, 2) map pixels (pixel-centre) -> (K, C)."""
    c, h, w = maps.shape
    grid = xy.clone()
    grid[:, 0] = (grid[:, 0] + 0.5) / w * 2 - 1
    grid[:, 1] = (grid[:, 1] + 0.5) / h * 2 - 1
    return F.grid_sample(maps[None], grid[None, None].to(maps.dtype), mode="bilinear",
                         align_corners=False)[0, :, 0].t()


def d2net_pair_loss(d0: torch.Tensor, d1: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor,
                    all0: torch.Tensor, all1: torch.Tensor, pos0: torch.Tensor, pos1: torch.Tensor,
                    grid0: torch.Tensor, grid1: torch.Tensor, margin: float = 1.0,
                    safe_radius: float = 4.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of one pair.

    d0, d1 (K, D): descriptors at the K correspondences; s0, s1 (K,) their scores; all0 (M0, D),
    all1 (M1, D): every descriptor of each map; pos0, pos1 (K, 2) positions of the correspondences
    and grid0 (M0, 2), grid1 (M1, 2) positions of every map pixel (same units as safe_radius).
    Returns (loss, mean positive distance, mean negative distance).
    """
    pos_dist = 2 - 2 * (d0 * d1).sum(-1)
    far1 = (pos1[:, None] - grid1[None]).abs().max(-1).values > safe_radius      # K x M1
    far0 = (pos0[:, None] - grid0[None]).abs().max(-1).values > safe_radius      # K x M0
    dist1 = 2 - 2 * d0 @ all1.t()
    dist0 = 2 - 2 * d1 @ all0.t()
    big = torch.full_like(dist1, 10.0)
    neg1 = torch.where(far1, dist1, big).min(-1).values
    neg0 = torch.where(far0, dist0, torch.full_like(dist0, 10.0)).min(-1).values
    neg = torch.minimum(neg0, neg1)
    w = s0 * s1
    loss = (w * F.relu(margin + pos_dist - neg)).sum() / w.sum().clamp(min=1e-12)
    return loss, pos_dist.mean(), neg.mean()


class D2NetLoss(Loss):
    """Terms: total, pos_dist, neg_dist."""

    name = "d2net"
    default_conf = {"margin": 1.0, "safe_radius": 4, "max_points": 1024}
    requires = ("descriptors",)

    def forward(self, out0, out1, batch, step=0):
        self.check(out0)
        desc0, desc1 = out0["descriptors"], out1["descriptors"]
        b, dim, h, w = desc0.shape
        flow, valid = flow_at_map(batch, int(out0.get("stride", 1)), (h, w))
        sc0, sc1 = soft_scores(out0), soft_scores(out1)
        ys, xs = torch.meshgrid(torch.arange(h, device=desc0.device), torch.arange(w, device=desc0.device),
                                indexing="ij")
        grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).to(desc0.dtype)
        max_points = positive_int(self.conf, "max_points", "loss 'd2net'")
        losses, pos_d, neg_d = [], [], []
        for i in range(b):
            idx = valid[i].reshape(-1).nonzero()[:, 0]
            if len(idx) < 2:
                continue
            if len(idx) > max_points:
                idx = idx[torch.randperm(len(idx), device=idx.device)[:max_points]]
            pos0 = grid[idx]
            pos1 = flow[i].reshape(-1, 2)[idx].to(desc0.dtype)
            all0 = desc0[i].reshape(dim, -1).t()
            all1 = desc1[i].reshape(dim, -1).t()
            d0 = all0[idx]
            d1 = F.normalize(_bilinear(desc1[i], pos1), dim=-1)
            s0 = sc0[i].reshape(-1)[idx]
            s1 = _bilinear(sc1[i][None], pos1)[:, 0]
            loss, pd, nd = d2net_pair_loss(d0, d1, s0, s1, all0, all1, pos0, pos1, grid, grid,
                                           float(self.conf["margin"]), float(self.conf["safe_radius"]))
            losses.append(loss)
            pos_d.append(pd.detach())
            neg_d.append(nd.detach())
        if not losses:
            zero = desc0.sum() * 0
            return {"total": zero, "pos_dist": zero.detach(), "neg_dist": zero.detach()}
        return {"total": torch.stack(losses).mean(), "pos_dist": torch.stack(pos_d).mean(),
                "neg_dist": torch.stack(neg_d).mean()}
