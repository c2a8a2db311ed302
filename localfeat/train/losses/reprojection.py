"""Keypoint reprojection error (ALIKE's reprojection loss, Zhao et al. 2022): the sub-pixel keypoints of image 0,
carried into image 1 by the ground-truth flow, must land on the sub-pixel keypoints that image 1 detects there.

Keypoints of each image: the `num_points` best NMS peaks c (radius r = `radius`, border r + 1, as the extractor) of
its detection map S (in image 0, among the peaks whose (2r + 1)^2 window has a valid flow), refined as DKD refines
them:

    p = c + sum_k softmax_k(S[c + o_k] / T) o_k        (o_k: the window's offsets, T = `temperature`)

The targets of image 0's keypoints t = flow(p0), bilinear in the flow, so that the error reaches S0 through p0.
A target and an image-1 keypoint p1 are paired when each is the other's nearest (detached positions) and they are
at most `max_distance` px apart (ALIKE: mutual nearest neighbours within 2 px). Over the pairs:

    reprojection = mean |t - p1|_1                           (pixels, x and y summed)
    dispersity   = sum_k softmax_k |o_k - (p - c)|^2 / r^2   (the spread of a window's softmax around its
                                                              soft-argmax; 0 for a one-pixel peak)
    total = reprojection + `peaky` * mean of (dispersity0 + dispersity1) / 2        (ALIKE's dispersity peak loss)

One direction, image 0 to image 1 (ALIKE averages both). Image 1's point must be one of its own keypoints: an
earlier version took the soft-argmax of S1 in a window at the target instead, and a map flat at the scale of T won
at once (both soft-argmaxes at the window centres, the error |t - round(t)|_1 = 0.5 px on average, no keypoint
placed better; lite did that within 40 steps).
The peak weight matters: on lite (docs/lite.md) `peaky` 0.2 narrowed the windows and moved the two images' keypoints
further apart than 0.1 or 0.05 did (0.83 against 0.79 and 0.78 px after 1500 steps); the shipped file used 0.1.
Worked case: S0 = 1 at c0, 1 - T at its right neighbour and 0 elsewhere (other values e^-20 of the peak's weight),
S1 a single 1 at the exact target of c0: p0 = c0 + (q, 0) with q = e^-1 / (1 + e^-1) = 0.2689, so the error is
0.2689 px; dispersity0 = q (1 - q) = 0.1966 (a two-pixel softmax), dispersity1 = 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...extractors._dkd import _window_offsets, flat_to_xy, select_peaks, window_patches, window_soft_argmax
from ._base import Loss, detection_map, flow_at_map, number_in_range, positive_int


def soft_argmax(scores: torch.Tensor, centres: torch.Tensor, radius: int, temperature: float):
    """Sub-pixel points (N, 2) (x, y): the integer centres (N, 2) plus the soft-argmax offset of one map (1, H, W)
    over the (2r + 1)^2 window around each (DKD's refinement; zero outside the map), and the dispersity (N,) of
    each window's softmax around its offset (module docstring)."""
    w = scores.shape[-1]
    patch = window_patches(scores, centres[:, 1] * w + centres[:, 0], radius)            # N x K*K
    residual, weights = window_soft_argmax(patch, radius, temperature)
    offsets = _window_offsets(radius, patch.device, patch.dtype)                        # K*K x 2
    dispersity = (weights * (offsets[None] - residual[:, None]).square().sum(-1)).sum(1) / radius ** 2
    return centres.to(patch.dtype) + residual, dispersity


def reprojection_errors(s0: torch.Tensor, s1: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor, conf: dict):
    """Over the paired keypoints (module docstring): L1 reprojection errors (N,) in pixels, the targets t (N, 2) in
    image 1, and the mean dispersity (N,) of the two windows, (dispersity0 + dispersity1) / 2.

    s0, s1: (B, 1, h, w) detection maps in [0, 1]; flow (B, h, w, 2) / valid (B, h, w) at their resolution
    (`flow_at_map`). conf: num_points, radius, temperature, max_distance."""
    b, _, h, w = s0.shape
    r, temp, n = int(conf["radius"]), float(conf["temperature"]), int(conf["num_points"])
    # a peak of image 0 qualifies when its whole window has a flow: the bilinear reads of flow(p0) stay valid
    window_ok = -F.max_pool2d(-valid[:, None].to(s0.dtype), 2 * r + 1, stride=1, padding=r)[:, 0] > 0.5
    masked0, masked1 = s0.detach() * window_ok[:, None], s1.detach()
    peaks0 = select_peaks(masked0, r, (r + 1, r + 1), n, 0.0, None)
    peaks1 = select_peaks(masked1, r, (r + 1, r + 1), n, 0.0, None)
    flow_chw = torch.nan_to_num(flow, nan=0.0).permute(0, 3, 1, 2).to(s0.dtype)           # B x 2 x h x w
    size = s0.new_tensor([w - 1, h - 1])
    errors, targets, dispersity = [s0.new_zeros(0)], [s0.new_zeros(0, 2)], [s0.new_zeros(0)]
    for i in range(b):
        idx0 = peaks0[i][masked0[i].reshape(-1)[peaks0[i]] > 0]      # fewer peaks than num_points: no zeros
        idx1 = peaks1[i][masked1[i].reshape(-1)[peaks1[i]] > 0]
        if len(idx0) == 0 or len(idx1) == 0:
            continue
        p0, d0 = soft_argmax(s0[i], flat_to_xy(idx0, w), r, temp)
        p1, d1 = soft_argmax(s1[i], flat_to_xy(idx1, w), r, temp)
        grid = (p0 / size * 2 - 1).view(1, 1, -1, 2)
        t = F.grid_sample(flow_chw[i:i + 1], grid, mode="bilinear", align_corners=True)[0, :, 0].T   # N0 x 2
        dist = torch.cdist(t.detach(), p1.detach())                                        # N0 x N1
        nearest = dist.argmin(dim=1)
        rows = torch.arange(len(t), device=t.device)
        keep = (dist.argmin(dim=0)[nearest] == rows) & (dist[rows, nearest] <= float(conf["max_distance"]))
        j = nearest[keep]
        errors.append((t[keep] - p1[j]).abs().sum(dim=1))
        targets.append(t[keep])
        dispersity.append((d0[keep] + d1[j]) / 2)
    return torch.cat(errors), torch.cat(targets), torch.cat(dispersity)


class ReprojectionLoss(Loss):
    """Mean keypoint reprojection error plus `peaky` times the mean dispersity over the paired keypoints (module
    docstring). Terms: total, reprojection (pixels), dispersity, within1 (the share of the pairs within 1 px),
    paired (pairs per image: how many keypoints are repeated, a diagnostic)."""

    name = "reprojection"
    default_conf = {"num_points": 256, "radius": 1, "temperature": 0.05, "max_distance": 2.0, "peaky": 1.0}
    requires = (("repeatability", "scores", "logits"),)

    def __init__(self, **conf):
        super().__init__(**conf)
        where = "loss 'reprojection'"
        for key in ("num_points", "radius"):
            positive_int(self.conf, key, where)
        number_in_range(self.conf, "temperature", where, strict=True)
        for key in ("peaky", "max_distance"):
            number_in_range(self.conf, key, where)

    def forward(self, out0, out1, batch, step=0):
        self.check(out0)
        self.check(out1)
        s0, s1 = detection_map(out0), detection_map(out1)
        with torch.autocast(s0.device.type, enabled=False):  # soft-argmax offsets in float32
            s0, s1 = s0.float(), s1.float()
            stride = max(1, round(batch["flow"].shape[2] / s0.shape[-1]))
            flow, valid = flow_at_map(batch, stride, s0.shape[-2:])
            errors, _, dispersity = reprojection_errors(s0, s1, flow, valid, self.conf)
        if len(errors) == 0:
            zero = (s0.sum() + s1.sum()) * 0
            return {"total": zero, "reprojection": zero.detach(), "dispersity": zero.detach(),
                    "within1": zero.detach(), "paired": zero.detach()}
        mean, spread = errors.mean(), dispersity.mean()
        return {"total": mean + float(self.conf["peaky"]) * spread, "reprojection": mean.detach(),
                "dispersity": spread.detach(), "within1": (errors <= 1).to(mean.dtype).mean(),
                "paired": mean.new_tensor(len(errors) / s0.shape[0])}
