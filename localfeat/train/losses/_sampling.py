"""Query / positive / negative sampling of the pixel-wise losses (R2D2's `NghSampler2`, defaults
ngh=7, subq=8, pos_d=3, neg_d=5, border=16, subd_neg=8).

All distances are in map pixels. For a batch:
- queries: pixels of image 0 on a grid of step `subq` (random offset), at least `border` from the
  edge, whose flow is valid; target = flow rounded to the nearest map pixel of image 1;
- positives: the pixels of image 1 within `pos_d` (Euclidean) of the target; the loss keeps the
  best-scoring one (R2D2's maxpool_pos);
- negatives: the ring neg_d <= r <= ngh around the target, plus distractors: a grid of step
  `subd_neg` (random offset) over every image 1 of the batch, minus those within neg_d of the target.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SAMPLER_DEFAULTS = {"ngh": 7, "subq": 8, "pos_d": 3, "neg_d": 5, "border": 16, "subd_neg": 8}


@dataclass
class PixelSamples:
    """Indices of sampled pixels (all int64, N queries): batch `b`, query (qy, qx) in image 0,
    target (ty, tx) in image 1; positives (N, P) and ring (N, R) pixel coordinates in image 1 with
    validity masks; distractors (M,) coordinates and `far` (N, M) True where a distractor is a negative."""

    b: torch.Tensor
    qy: torch.Tensor
    qx: torch.Tensor
    ty: torch.Tensor
    tx: torch.Tensor
    pos_y: torch.Tensor
    pos_x: torch.Tensor
    pos_valid: torch.Tensor
    ring_y: torch.Tensor
    ring_x: torch.Tensor
    ring_valid: torch.Tensor
    dis_b: torch.Tensor
    dis_y: torch.Tensor
    dis_x: torch.Tensor
    far: torch.Tensor

    def __len__(self) -> int:
        return len(self.b)


def _offsets(r_min2: float, r_max2: float, radius: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    r2 = dx * dx + dy * dy
    keep = (r2 >= r_min2) & (r2 <= r_max2)
    return dy[keep], dx[keep]


def grid_queries(valid: torch.Tensor, step: int, border: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query pixels of image 0: a grid of step `step` (one random offset from torch's global generator),
    at least `border` from the edge (no border on crops too small for one), where valid (B, h, w) holds.
    Returns batch index b, row qy, column qx (each (N,) int64)."""
    bsz, h, w = valid.shape
    dev = valid.device
    if min(h, w) <= 2 * border + step:  # tiny crops: no border
        border = 0
    oy, ox = (int(v) for v in torch.randint(0, step, (2,)))
    ys = torch.arange(min(border + oy, h - 1), max(h - border, 1), step, device=dev)
    xs = torch.arange(min(border + ox, w - 1), max(w - border, 1), step, device=dev)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    gy, gx = gy.reshape(-1), gx.reshape(-1)
    b = torch.arange(bsz, device=dev).repeat_interleave(len(gy))
    qy, qx = gy.repeat(bsz), gx.repeat(bsz)
    ok = valid[b, qy, qx]
    return b[ok], qy[ok], qx[ok]


def sample_pixels(flow: torch.Tensor, valid: torch.Tensor, conf: dict) -> PixelSamples:
    """Sample queries, positives and negatives from a map-resolution flow (B, h, w, 2) / valid (B, h, w).

    conf holds the keys of SAMPLER_DEFAULTS. Random grid offsets come from torch's global generator.
    """
    bsz, h, w = valid.shape
    dev = flow.device
    b, qy, qx = grid_queries(valid, int(conf["subq"]), int(conf["border"]))
    t = flow[b, qy, qx]
    tx = t[:, 0].round().long().clamp(0, w - 1)
    ty = t[:, 1].round().long().clamp(0, h - 1)

    pdy, pdx = _offsets(0, conf["pos_d"] ** 2, int(conf["pos_d"]), dev)
    rdy, rdx = _offsets(conf["neg_d"] ** 2, conf["ngh"] ** 2, int(conf["ngh"]), dev)
    pos_y, pos_x = ty[:, None] + pdy, tx[:, None] + pdx
    ring_y, ring_x = ty[:, None] + rdy, tx[:, None] + rdx
    pos_valid = (pos_y >= 0) & (pos_y < h) & (pos_x >= 0) & (pos_x < w)
    ring_valid = (ring_y >= 0) & (ring_y < h) & (ring_x >= 0) & (ring_x < w)

    dstep = int(conf["subd_neg"])
    dy0, dx0 = (int(v) for v in torch.randint(0, dstep, (2,)))
    dys = torch.arange(dy0, h, dstep, device=dev)
    dxs = torch.arange(dx0, w, dstep, device=dev)
    ddy, ddx = torch.meshgrid(dys, dxs, indexing="ij")
    ddy, ddx = ddy.reshape(-1), ddx.reshape(-1)
    dis_b = torch.arange(bsz, device=dev).repeat_interleave(len(ddy))
    dis_y, dis_x = ddy.repeat(bsz), ddx.repeat(bsz)
    d2 = (dis_x[None] - tx[:, None]) ** 2 + (dis_y[None] - ty[:, None]) ** 2
    far = (dis_b[None] != b[:, None]) | (d2 >= conf["neg_d"] ** 2)
    return PixelSamples(b, qy, qx, ty, tx, pos_y.clamp(0, h - 1), pos_x.clamp(0, w - 1), pos_valid,
                        ring_y.clamp(0, h - 1), ring_x.clamp(0, w - 1), ring_valid, dis_b, dis_y, dis_x, far)


def gather(desc: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Descriptors of (B, D, h, w) at integer pixels: b, y, x of any equal shape S -> (*S, D)."""
    shape = y.shape
    bb = b.expand_as(y) if b.shape != y.shape else b
    out = desc.permute(0, 2, 3, 1)[bb.reshape(-1), y.reshape(-1), x.reshape(-1)]
    return out.reshape(*shape, desc.shape[1])
