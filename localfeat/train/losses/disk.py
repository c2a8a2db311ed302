"""DISK's policy-gradient loss (Tyszkiewicz et al. 2020): REINFORCE over sampled keypoints and matches.

Keypoints: the detection logits are cut into cells of `cell` x `cell` map pixels; in each cell a
pixel is proposed from softmax(logits of the cell) and accepted with probability sigmoid(logit);
an accepted keypoint has log-probability lp = log softmax_cell(proposal) + log sigmoid(logit).
Matches: with the L2 distances D_ij of the keypoints' descriptors and inverse temperature theta,
    log P_ij = log_softmax_j(-theta D)_ij + log_softmax_i(-theta D)_ij      (both directions agree),
Rewards R_ij: +1 (reward_tp) when keypoint j of image 1 is within `threshold` map pixels of the
correspondence of keypoint i, reward_fp = -0.25 when it is not, 0 when i has no known correspondence.
With p = exp(log P) held constant (no gradient), as the original:
    loss = - sum_ij R_ij p_ij (log P_ij + lp0_i + lp1_j) - kp_penalty * (sum_i lp0_i + sum_j lp1_j),
kp_penalty = -0.001 (a cost per keypoint). theta is annealed linearly from theta_start (15) to
theta_end (50) over `anneal_steps` steps; the rewards of wrong matches and keypoints are ramped from
0 to their full value over `ramp_steps` (0 = no ramp), as DISK's epoch schedule does.
Expected reward, number of keypoints and theta are reported.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._base import Loss, flow_at_map, positive_int


def sample_keypoints(logits: torch.Tensor, cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one proposal per cell of logits (h, w) and accept it; returns xy (K, 2) long (map pixels)
    and lp (K,) their log-probabilities (differentiable). Uses torch's global generator."""
    h, w = logits.shape
    hc, wc = h // cell, w // cell
    cells = logits[:hc * cell, :wc * cell].reshape(hc, cell, wc, cell).permute(0, 2, 1, 3).reshape(hc * wc, -1)
    logp_cell = F.log_softmax(cells, dim=-1)
    with torch.no_grad():
        prop = torch.multinomial(logp_cell.exp(), 1)[:, 0]
    chosen = cells.gather(1, prop[:, None])[:, 0]
    with torch.no_grad():
        accept = torch.rand(chosen.shape, device=chosen.device) < torch.sigmoid(chosen)
    lp = logp_cell.gather(1, prop[:, None])[:, 0] + F.logsigmoid(chosen)
    idx = torch.arange(hc * wc, device=logits.device)
    y = (idx // wc) * cell + prop // cell
    x = (idx % wc) * cell + prop % cell
    keep = accept
    return torch.stack([x[keep], y[keep]], -1), lp[keep]


def match_log_probs(desc0: torch.Tensor, desc1: torch.Tensor, theta: float) -> torch.Tensor:
    """log P (K0, K1) of the consistent match distribution of descriptors (K0, D), (K1, D)."""
    logits = -theta * torch.cdist(desc0[None], desc1[None])[0]
    return F.log_softmax(logits, dim=1) + F.log_softmax(logits, dim=0)


def disk_pair_loss(lp0: torch.Tensor, lp1: torch.Tensor, match_logp: torch.Tensor, rewards: torch.Tensor,
                   kp_penalty: float = -0.001, probs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE loss of one pair: lp0 (K0,), lp1 (K1,) keypoint log-probs, match_logp (K0, K1),
    rewards (K0, K1); probs (K0, K1) the match probabilities held constant (default exp(match_logp),
    detached). Returns (loss, expected reward incl. the keypoint cost)."""
    p = match_logp.detach().exp() if probs is None else probs
    plogp = p * (match_logp + lp0[:, None] + lp1[None, :])
    loss = -(rewards * plogp).sum() - kp_penalty * (lp0.sum() + lp1.sum())
    expected = (p * rewards).sum() + kp_penalty * (len(lp0) + len(lp1))
    return loss, expected.detach()


def match_rewards(xy0: torch.Tensor, xy1: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor,
                  threshold: float, reward_tp: float, reward_fp: float) -> torch.Tensor:
    """R (K0, K1): reward_tp where |flow(xy0_i) - xy1_j| <= threshold, reward_fp elsewhere, 0 for
    keypoints xy0 without a valid flow. flow (h, w, 2), valid (h, w) of image 0 -> image 1."""
    ok = valid[xy0[:, 1], xy0[:, 0]]
    target = flow[xy0[:, 1], xy0[:, 0]]
    d = (torch.nan_to_num(target, nan=1e6)[:, None] - xy1[None].to(target.dtype)).norm(dim=-1)
    r = torch.where(d <= threshold, torch.full_like(d, reward_tp), torch.full_like(d, reward_fp))
    return r * ok[:, None].to(r.dtype)


class DiskLoss(Loss):
    """Terms: total, reward (expected, per pair), keypoints (per image), theta."""

    name = "disk"
    default_conf = {"cell": 8, "threshold": 2.0, "reward_tp": 1.0, "reward_fp": -0.25, "kp_penalty": -0.001,
                    "theta_start": 15.0, "theta_end": 50.0, "anneal_steps": 10000, "ramp_steps": 0}
    requires = ("descriptors", ("logits", "scores", "repeatability"))

    def theta(self, step: int) -> float:
        c = self.conf
        t = min(1.0, step / c["anneal_steps"]) if c["anneal_steps"] else 1.0
        return float(c["theta_start"] + (c["theta_end"] - c["theta_start"]) * t)

    def ramp(self, step: int) -> float:
        return min(1.0, step / self.conf["ramp_steps"]) if self.conf["ramp_steps"] else 1.0

    def forward(self, out0, out1, batch, step=0):
        self.check(out0)
        c = self.conf
        cell = positive_int(c, "cell", "loss 'disk'")
        desc0, desc1 = out0["descriptors"], out1["descriptors"]
        lg = []
        for out in (out0, out1):
            if "logits" in out:
                lg.append(out["logits"][:, 0])
            else:
                m = out.get("scores", out.get("repeatability"))[:, 0].clamp(1e-6, 1 - 1e-6)
                lg.append(torch.log(m) - torch.log1p(-m))
        flow, valid = flow_at_map(batch, int(out0.get("stride", 1)), desc0.shape[-2:])
        theta, ramp = self.theta(step), self.ramp(step)
        losses, rewards, nkp = [], [], []
        for i in range(desc0.shape[0]):
            xy0, lp0 = sample_keypoints(lg[0][i], cell)
            xy1, lp1 = sample_keypoints(lg[1][i], cell)
            nkp.append((len(xy0) + len(xy1)) / 2)
            if len(xy0) == 0 or len(xy1) == 0:
                losses.append(-c["kp_penalty"] * ramp * (lp0.sum() + lp1.sum()) + desc0.sum() * 0)
                continue
            d0 = desc0[i][:, xy0[:, 1], xy0[:, 0]].t()
            d1 = desc1[i][:, xy1[:, 1], xy1[:, 0]].t()
            r = match_rewards(xy0, xy1, flow[i], valid[i], float(c["threshold"]), float(c["reward_tp"]),
                              float(c["reward_fp"]) * ramp)
            loss, expected = disk_pair_loss(lp0, lp1, match_log_probs(d0, d1, theta), r, float(c["kp_penalty"]) * ramp)
            losses.append(loss)
            rewards.append(expected)
        total = torch.stack(losses).mean()
        reward = torch.stack(rewards).mean() if rewards else total.new_zeros(())
        return {"total": total, "reward": reward, "keypoints": total.new_tensor(sum(nkp) / len(nkp)),
                "theta": total.new_tensor(theta)}
