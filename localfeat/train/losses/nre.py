"""Neural reprojection error in a local window (NRE; Germain et al. 2021, the descriptor loss of ALIKE, here
restricted to a window around each target so that it trains what the AP loss does not: telling a point from its
neighbours one or two pixels away).

Queries: pixels q of image 0 on a grid of step `subq` (random offset), at least `border` from the edge, with a
valid flow; t = flow(q), the exact target in image 1 (map coordinates, x right, y down). Candidates: the pixels
j of image 1 in the (2r + 1) x (2r + 1) window centred on round(t) (r = `radius`) that lie inside image 1.
With cosine similarities s_j = d0(q) . d1(j) of the L2-normalised descriptors,

    p_j = exp(s_j / T) / sum_k exp(s_k / T)                 (T = `temperature`)
    NRE(q) = - sum_j target_j log p_j,

where the target spreads t bilinearly over its four neighbouring pixels: (1 - fx)(1 - fy) on (x0, y0),
fx (1 - fy) on (x0 + 1, y0), (1 - fx) fy on (x0, y0 + 1), fx fy on (x0 + 1, y0 + 1), with x0 = floor(tx),
fx = tx - x0 (likewise y). The loss is the mean over the queries. Worked cases: all candidates equally similar
gives log(number of candidates inside image 1); similarity 1 at an integer target and 0 at the 8 other pixels of
a 3 x 3 window gives log(1 + 8 exp(-1 / T)).

Every pixel of the window but the target competes, unlike the AP loss's ring of negatives (5 to 7 px away,
nothing in between): a descriptor map that is smooth at the pixel scale pays here, and that is what mutual
nearest neighbours among 2,048 keypoints per image need for matches within 1 to 3 px.
"""
from __future__ import annotations

import torch

from ...registry import ConfigError
from ._base import Loss, flow_at_map, positive_int
from ._sampling import gather, grid_queries

_OUTSIDE = -1e4  # logit of a window pixel outside image 1: exp() underflows to 0, log-softmax stays finite


def window_nre(desc0: torch.Tensor, desc1: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor, conf: dict):
    """NRE (N,) of every query and its window's best-scoring pixel (N, 2) as (x, y) in image 1.

    desc0, desc1: (B, D, h, w) L2-normalised descriptor maps; flow (B, h, w, 2) / valid (B, h, w) at map
    resolution (`flow_at_map`). conf: subq, border, radius, temperature.
    """
    h, w = desc1.shape[-2:]
    b, qy, qx = grid_queries(valid, int(conf["subq"]), int(conf["border"]))
    t = flow[b, qy, qx]                                                          # N x 2, inside [0, w-1] x [0, h-1]
    r = int(conf["radius"])
    cx, cy = t[:, 0].round().long(), t[:, 1].round().long()
    d = torch.arange(-r, r + 1, device=desc0.device)
    wy = (cy[:, None, None] + d[None, :, None]).expand(-1, 2 * r + 1, 2 * r + 1)  # N x K x K
    wx = (cx[:, None, None] + d[None, None, :]).expand(-1, 2 * r + 1, 2 * r + 1)
    inside = (wy >= 0) & (wy < h) & (wx >= 0) & (wx < w)
    q = gather(desc0, b, qy, qx)                                                 # N x D
    cand = gather(desc1, b[:, None, None], wy.clamp(0, h - 1), wx.clamp(0, w - 1))   # N x K x K x D
    logits = (q[:, None, None, :] * cand).sum(-1) / float(conf["temperature"])
    logits = torch.where(inside, logits, torch.full_like(logits, _OUTSIDE)).flatten(1)
    logp = torch.log_softmax(logits, dim=1)                                      # N x K*K

    x0, y0 = t[:, 0].floor(), t[:, 1].floor()
    fx, fy = t[:, 0] - x0, t[:, 1] - y0
    loss = logp.new_zeros(len(b))
    for ox, oy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy),
                           (1, 1, fx * fy)):
        # window index of corner (x0 + ox, y0 + oy); |x0 + ox - cx| <= 1 <= r. A corner outside image 1
        # (x0 + 1 = w when tx = w - 1) has weight 0.
        col = (x0.long() + ox - cx + r).clamp(0, 2 * r)
        row = (y0.long() + oy - cy + r).clamp(0, 2 * r)
        loss = loss - weight * logp.gather(1, (row * (2 * r + 1) + col)[:, None])[:, 0]
    best = logits.argmax(1)
    best_xy = torch.stack([cx + best % (2 * r + 1) - r, cy + best // (2 * r + 1) - r], dim=1)
    return loss, best_xy, t


class NRELoss(Loss):
    """Mean NRE over the sampled queries (module docstring). Terms: total, nre, hit (the share of queries whose
    window's most similar pixel is within 1 px of the target, a diagnostic)."""

    name = "nre"
    default_conf = {"subq": 8, "border": 16, "radius": 4, "temperature": 0.02}
    requires = ("descriptors",)

    def __init__(self, **conf):
        super().__init__(**conf)
        positive_int(self.conf, "radius", "loss 'nre'")
        if not float(self.conf["temperature"]) > 0:
            raise ConfigError(f"loss 'nre': temperature must be > 0, got {self.conf['temperature']!r}")

    def forward(self, out0, out1, batch, step=0):
        self.check(out0)
        desc0, desc1 = out0["descriptors"], out1["descriptors"]
        flow, valid = flow_at_map(batch, int(out0.get("stride", 1)), desc0.shape[-2:])
        loss, best_xy, t = window_nre(desc0, desc1, flow, valid, self.conf)
        if len(loss) == 0:
            zero = desc0.sum() * 0
            return {"total": zero, "nre": zero.detach(), "hit": zero.detach()}
        mean = loss.mean()
        hit = ((best_xy.to(t.dtype) - t).norm(dim=1) <= 1).to(t.dtype).mean()
        return {"total": mean, "nre": mean.detach(), "hit": hit}
