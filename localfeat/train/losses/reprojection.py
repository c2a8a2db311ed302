"""Keypoint reprojection error (after ALIKE's reprojection loss, Zhao et al. 2022): the sub-pixel keypoints of
image 0, carried into image 1 by the ground-truth flow, must land on the sub-pixel peak of image 1's detection map.

Keypoints of image 0: the `num_points` best NMS peaks c0 (radius r = `radius`, border r + 1, as the extractor) of
the detection map S0 among those whose (2r + 1)^2 window has a valid flow, refined as DKD refines them:

    p0 = c0 + sum_k softmax_k(S0[c0 + o_k] / T) o_k        (o_k: the window's offsets, T = `temperature`)

Their targets t = flow(p0), bilinear in the flow, so that the error reaches S0 through p0. In image 1, the same
soft-argmax of S1 over the (2R + 1)^2 window centred on c1 = round(t) (R = `search_radius`, zero outside image 1):

    p1 = c1 + sum_k softmax_k(S1[c1 + o_k] / T) o_k
    reprojection = mean over the keypoints of |t - p1|_1                   (pixels, x and y summed)

ALIKE pairs the keypoints detected in both images (mutual nearest neighbours within 2 px) and averages both
directions. Here image 1's point is the soft-argmax at the target, so every keypoint of image 0 has one without a
matching step, and image 1's map learns to peak where image 0's keypoints land; one direction, image 0 to image 1.
Worked case: S0 = 1 at c0, 1 - T at its right neighbour and 0 elsewhere (other values e^-20 of the peak's weight),
S1 a single 1 at the exact target of c0: p0 = c0 + (e^-1 / (1 + e^-1), 0), so the error is 0.2689 px.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...extractors._dkd import _window_offsets, select_peaks, window_patches
from ...registry import ConfigError
from ._base import Loss, detection_map, flow_at_map, positive_int


def soft_argmax(scores: torch.Tensor, centres: torch.Tensor, radius: int, temperature: float) -> torch.Tensor:
    """(N, 2) sub-pixel points (x, y): the integer centres (N, 2) plus the soft-argmax offset of one map (1, H, W)
    over the (2r + 1)^2 window around each (DKD's refinement; zero outside the map)."""
    w = scores.shape[-1]
    patch = window_patches(scores, centres[:, 1] * w + centres[:, 0], radius)            # N x K*K
    weights = torch.softmax(patch / temperature, dim=1)
    return centres.to(patch.dtype) + weights @ _window_offsets(radius, patch.device, patch.dtype)


def reprojection_errors(s0: torch.Tensor, s1: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor, conf: dict):
    """L1 reprojection errors (N,) in pixels of the keypoints of image 0 and their targets t (N, 2).

    s0, s1: (B, 1, h, w) detection maps in [0, 1]; flow (B, h, w, 2) / valid (B, h, w) at their resolution
    (`flow_at_map`). conf: num_points, radius, search_radius, temperature."""
    b, _, h, w = s0.shape
    r, big_r, temp = int(conf["radius"]), int(conf["search_radius"]), float(conf["temperature"])
    # a peak qualifies when its whole window has a flow: the bilinear reads of flow(p0) stay among valid pixels
    window_ok = -F.max_pool2d(-valid[:, None].to(s0.dtype), 2 * r + 1, stride=1, padding=r)[:, 0] > 0.5
    masked = s0.detach() * window_ok[:, None]
    peaks = select_peaks(masked, r, (r + 1, r + 1), int(conf["num_points"]), 0.0, None)
    flow_chw = torch.nan_to_num(flow, nan=0.0).permute(0, 3, 1, 2).to(s0.dtype)           # B x 2 x h x w
    size = s0.new_tensor([w - 1, h - 1])
    errors, targets = [], []
    for i in range(b):
        idx = peaks[i][masked[i].reshape(-1)[peaks[i]] > 0]       # fewer peaks than num_points: no zeros
        c0 = torch.stack([idx % w, torch.div(idx, w, rounding_mode="trunc")], dim=1)
        p0 = soft_argmax(s0[i], c0, r, temp)
        grid = (p0 / size * 2 - 1).view(1, 1, -1, 2)
        t = F.grid_sample(flow_chw[i:i + 1], grid, mode="bilinear", align_corners=True)[0, :, 0].T   # N x 2
        c1 = torch.stack([t[:, 0].detach().round().clamp(0, w - 1), t[:, 1].detach().round().clamp(0, h - 1)],
                         dim=1).long()
        p1 = soft_argmax(s1[i], c1, big_r, temp)
        errors.append((t - p1).abs().sum(dim=1))
        targets.append(t)
    return torch.cat(errors), torch.cat(targets)


class ReprojectionLoss(Loss):
    """Mean keypoint reprojection error (module docstring). Terms: total, reprojection (pixels), within1 (the
    share of keypoints whose error is at most 1 px, a diagnostic)."""

    name = "reprojection"
    default_conf = {"num_points": 256, "radius": 1, "search_radius": 2, "temperature": 0.05}
    requires = (("repeatability", "scores", "logits"),)

    def __init__(self, **conf):
        super().__init__(**conf)
        for key in ("num_points", "radius", "search_radius"):
            positive_int(self.conf, key, "loss 'reprojection'")
        t = self.conf["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ConfigError(f"loss 'reprojection': temperature must be a number > 0, got {t!r}")

    def forward(self, out0, out1, batch, step=0):
        self.check(out0)
        self.check(out1)
        s0, s1 = detection_map(out0), detection_map(out1)
        with torch.autocast(s0.device.type, enabled=False):  # soft-argmax offsets in float32
            s0, s1 = s0.float(), s1.float()
            stride = max(1, round(batch["flow"].shape[2] / s0.shape[-1]))
            flow, valid = flow_at_map(batch, stride, s0.shape[-2:])
            errors, _ = reprojection_errors(s0, s1, flow, valid, self.conf)
        if len(errors) == 0:
            zero = (s0.sum() + s1.sum()) * 0
            return {"total": zero, "reprojection": zero.detach(), "within1": zero.detach()}
        mean = errors.mean()
        return {"total": mean, "reprojection": mean.detach(), "within1": (errors <= 1).to(mean.dtype).mean()}
