"""AP loss (R2D2): 1 - quantised, differentiable average precision of each query's ranking of its
positive among negatives, with a pluggable similarity.

Quantised AP (R2D2 `APLoss`, nq bins over [smin, smax], default 20 over [0, 1]): bin centres
c_k = smax - k * delta, delta = (smax - smin) / (nq - 1), k = 0..nq-1 (k = 0 is the most similar);
a score x falls softly into bins by triangular kernels
    q_k(x) = max(0, 1 - |x - c_k| / delta),
except that the first and last kernels are flat outside the range (q_0(x) = 1 for x >= smax,
q_{nq-1}(x) = 1 for x <= smin). With labels y_j in {0, 1} (1 = positive) and candidates j:
    n_k = sum_j q_k(x_j),   p_k = sum_j y_j q_k(x_j),
    precision_k = (p_0 + ... + p_k) / (n_0 + ... + n_k),   recall increment r_k = p_k / sum_k p_k,
    AP = sum_k precision_k * r_k.
With scores on the bin centres this is the exact AP (e.g. positive at 1, negative at 0.75, positive
at 0.5 with nq = 5: AP = (1 + 2/3) / 2).

Similarities s(a, b) of two L2-normalised descriptors a, b (D,):
- cosine (default):  s = a . b  (in [-1, 1]; negative values land in the last bin).
- The other measures need non-negative inputs. Each descriptor is mapped (losslessly) to the
  non-negative 2D-vector u = [relu(a), relu(-a)], then L1-normalised: p = u / sum(u) (a probability
  vector; q likewise from b). Then, all in [0, 1]:
  - dice:          s = 2 p.q / (|p|^2 + |q|^2)
  - jaccard:       s = p.q / (|p|^2 + |q|^2 - p.q)          (Tanimoto)
  - czekanowski:   s = 2 sum_i min(p_i, q_i) / sum_i (p_i + q_i) = 1 - |p - q|_1 / 2
  - squared_chord: s = 1 - sum_i (sqrt(p_i) - sqrt(q_i))^2 / 2, with sqrt(p_i + 1e-16) for a finite gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...registry import ConfigError
from ._base import Loss, flow_at_map, masked_mean
from ._sampling import SAMPLER_DEFAULTS, gather, sample_pixels

SIMILARITIES = ("cosine", "dice", "jaccard", "czekanowski", "squared_chord")
_EPS = 1e-12
_SQRT_EPS = 1e-16


def nonnegative(x: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (..., 2D) non-negative and L1-normalised: [relu(x), relu(-x)] / |x|_1."""
    u = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return u / u.sum(-1, keepdim=True).clamp(min=_EPS)


def pairwise_similarity(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Similarity (N, M) of every row of a (N, D) with every row of b (M, D) (see module docstring)."""
    if name == "cosine":
        return a @ b.t()
    if name not in SIMILARITIES:
        raise ConfigError(f"similarity {name!r} is not one of {list(SIMILARITIES)}")
    p, q = nonnegative(a), nonnegative(b)
    if name == "czekanowski":
        return 1 - torch.cdist(p[None], q[None], p=1)[0] / 2
    if name == "squared_chord":
        sp, sq = torch.sqrt(p + _SQRT_EPS), torch.sqrt(q + _SQRT_EPS)
        d = (sp * sp).sum(-1)[:, None] + (sq * sq).sum(-1)[None] - 2 * sp @ sq.t()
        return 1 - d / 2
    dot = p @ q.t()
    n2 = (p * p).sum(-1)[:, None] + (q * q).sum(-1)[None]
    if name == "dice":
        return 2 * dot / n2
    return dot / (n2 - dot)


def rowwise_similarity(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Similarity (N, K) of row i of a (N, D) with each b[i, k] of b (N, K, D)."""
    if name == "cosine":
        return (a[:, None] * b).sum(-1)
    if name not in SIMILARITIES:
        raise ConfigError(f"similarity {name!r} is not one of {list(SIMILARITIES)}")
    p, q = nonnegative(a)[:, None], nonnegative(b)
    if name == "czekanowski":
        return 1 - (p - q).abs().sum(-1) / 2
    if name == "squared_chord":
        return 1 - ((torch.sqrt(p + _SQRT_EPS) - torch.sqrt(q + _SQRT_EPS)) ** 2).sum(-1) / 2
    dot = (p * q).sum(-1)
    n2 = (p * p).sum(-1) + (q * q).sum(-1)
    if name == "dice":
        return 2 * dot / n2
    return dot / (n2 - dot)


def quantized_ap(scores: torch.Tensor, labels: torch.Tensor, nq: int = 20, smin: float = 0.0,
                 smax: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Quantised AP (N,) of each row of scores (N, M) with labels (N, M) (1 = positive).

    mask (N, M) optional: False entries are ignored. A row without positives gives NaN (mask it out).
    """
    if nq < 2:
        raise ConfigError(f"nq (number of AP bins) must be >= 2, got {nq}")
    delta = (smax - smin) / (nq - 1)
    # Each score touches at most two neighbouring bins k0 and k0 + 1 (weights 1 - frac and frac, the
    # values of the triangular kernels there): histograms by scatter-add in O(N M), not O(N Q M).
    t = ((smax - scores) / delta).clamp(0, nq - 1)
    k0 = t.detach().floor().clamp(max=nq - 2).long()
    frac = t - k0.to(t.dtype)
    w = torch.ones_like(scores) if mask is None else mask.to(scores.dtype)
    lab = labels.to(scores.dtype)
    zeros = scores.new_zeros(scores.shape[0], nq)
    nbs = zeros.scatter_add(1, k0, (1 - frac) * w).scatter_add(1, k0 + 1, frac * w)      # N x Q
    rec = zeros.scatter_add(1, k0, (1 - frac) * w * lab).scatter_add(1, k0 + 1, frac * w * lab)
    prec = rec.cumsum(-1) / (1e-16 + nbs.cumsum(-1))
    rec = rec / rec.sum(-1, keepdim=True)
    return (prec * rec).sum(-1)


def pixel_ap(out0: dict, out1: dict, batch: dict, conf: dict):
    """AP (N,) of every sampled query and the samples (see `_sampling`). conf: sampler keys, nq, similarity."""
    desc0, desc1 = out0["descriptors"], out1["descriptors"]
    flow, valid = flow_at_map(batch, int(out0.get("stride", 1)), desc0.shape[-2:])
    s = sample_pixels(flow, valid, conf)
    if len(s) == 0:
        return desc0.new_zeros(0), s
    sim = conf["similarity"]
    q = gather(desc0, s.b, s.qy, s.qx)                                    # N x D
    # One gather from image 1's map for positives, ring and distractors: each gather's backward fills a
    # map-sized gradient.
    near_y, near_x = torch.cat([s.pos_y, s.ring_y], 1), torch.cat([s.pos_x, s.ring_x], 1)   # N x (P + R)
    d1 = gather(desc1, torch.cat([s.b[:, None].expand_as(near_y).reshape(-1), s.dis_b]),
                torch.cat([near_y.reshape(-1), s.dis_y]), torch.cat([near_x.reshape(-1), s.dis_x]))
    near_d, dis_d = d1[:near_y.numel()].view(*near_y.shape, -1), d1[near_y.numel():]
    pos_d, ring_d = near_d.split([s.pos_y.shape[1], s.ring_y.shape[1]], dim=1)
    pos = rowwise_similarity(sim, q, pos_d)
    pos = torch.where(s.pos_valid, pos, torch.full_like(pos, -1e4)).max(dim=1, keepdim=True).values
    ring = rowwise_similarity(sim, q, ring_d)
    dis = pairwise_similarity(sim, q, dis_d)
    scores = torch.cat([pos, ring, dis], dim=1)
    labels = torch.zeros_like(scores, dtype=torch.bool)
    labels[:, 0] = True
    mask = torch.cat([torch.ones_like(pos, dtype=torch.bool), s.ring_valid, s.far], dim=1)
    return quantized_ap(scores, labels, conf["nq"], mask=mask), s


AP_DEFAULTS = {"nq": 20, "similarity": "cosine", **SAMPLER_DEFAULTS}


class APLoss(Loss):
    """1 - mean AP over the sampled queries (R2D2's PixelAPLoss). Terms: total, ap."""

    name = "ap"
    default_conf = dict(AP_DEFAULTS)
    requires = ("descriptors",)

    def __init__(self, **conf):
        super().__init__(**conf)
        if self.conf["similarity"] not in SIMILARITIES:
            raise ConfigError(f"loss 'ap': similarity {self.conf['similarity']!r} is not one of {list(SIMILARITIES)}")

    def forward(self, out0, out1, batch, step=0):
        self.check(out0)
        ap, _ = pixel_ap(out0, out1, batch, self.conf)
        mean_ap = masked_mean(ap) if len(ap) else out0["descriptors"].sum() * 0
        return {"total": 1 - mean_ap, "ap": mean_ap.detach()}
