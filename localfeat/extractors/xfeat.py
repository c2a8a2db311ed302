"""XFeat: Accelerated Features for Lightweight Image Matching (Potje et al., CVPR 2024).

Re-implementation of verlab/accelerated_features (modules/model.py `XFeatModel`, modules/xfeat.py
`XFeat.detectAndCompute` and the coarse extraction of `XFeat.match_xfeat_star`), loading the official
weights. Two modes:

- ``sparse`` (default): `detectAndCompute` -- keypoints from the 8x8-cell keypoint heatmap, 5x5 window NMS
  above `detection_threshold`, score = heatmap value x reliability, the `max_keypoints` best, 64-D descriptors
  sampled bicubically from the dense map.
- ``semi-dense``: the coarse extraction of XFeat* (`detectAndComputeDense`): the `max_keypoints` cells of highest
  reliability of the 1/8-resolution map, at two scales (0.6 and 1.3, 20 % / 80 % of them) when `multiscale`.
  The `fine_matcher` refinement of XFeat* matching is not part of extraction (and its weights are not in the
  converted file).

Differences from the original, all deliberate:

- Keypoints follow the data contract (pixel-centre origin in original-image pixels). The original maps the
  internal (multiple-of-32) pixel p back by ``p * r`` (r = original size / internal size); we use
  ``(p + 0.5) * r - 0.5``, the exact inverse of the bilinear resize. Both agree when the image size is a
  multiple of 32 (r = 1); otherwise they differ by 0.5 * (r - 1) pixel (0.013 px on an HPatches image).
- Semi-dense descriptors are L2-normalised (data contract); the original returns the raw dense vectors.
  Semi-dense `scores` are the reliabilities the original ranks by; `scales` = 8 / extraction scale (the
  cell size in original-image pixels; the original's `scales` output is this divided by 8).
- The post-processing gives the same keypoints, scores and descriptors as the original but costs ~5x less on
  CPU (separable window maximum instead of max_pool2d, no identity resize, scores computed on NMS survivors).

The network is fed exactly as the original's `parse_input` on a `cv2.imread` image: BGR / 255, (1, 3, H, W);
the network averages the channels first.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import hub
from ..ops import fold_batchnorm, image_to_tensor, l2_normalize, pixel_to_grid, sample_dense, top_k_indices, window_max
from ..registry import ConfigError
from ..checkpoints import load_weights
from ..types import Features
from .base import Extractor

logger = logging.getLogger(__name__)

# verlab/accelerated_features weights/ (Apache-2.0).
# xfeat.pt: the official release file; sha256 of the file (shared/data/weights_xfeat_official/SOURCE.txt: git
# blob 9da942e9 of commit e92685f).
# xfeat_from_onnx.pt: the same weights recovered from the official ONNX export (PR #38, commit c58e74f),
# BatchNorm folded and without fine_matcher.*; not published as a file, accepted when xfeat.pt is absent.
WEIGHTS = {
    "xfeat": hub.WeightSpec(
        "xfeat.pt", ("https://github.com/verlab/accelerated_features/raw/main/weights/xfeat.pt",),
        "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b", "Apache-2.0"),
    "xfeat_from_onnx": hub.WeightSpec(
        "xfeat_from_onnx.pt", (), "cbdf1b1715d450f25cf337a19ed2cccc4983c6be36ea93e3573e9d99f1a5b421", "Apache-2.0"),
}

MODES = ("sparse", "semi-dense")
DESCRIPTOR_DIM = 64
CELL = 8          # the dense maps are at 1/8 of the (internal) image resolution
MULTIPLE = 32     # the network input must be a multiple of 32 (five stride-2 stages)
SEMI_DENSE_SCALES = ((0.6, 0.2), (1.3, 0.8))  # (scale, share of top_k) of the original's extract_dualscale


# ------------------------------------------------------------------------------------------ network
class BasicLayer(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d (affine=False) -> ReLU; state_dict keys `layer.0.*`, `layer.1.*`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1):
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels, affine=False),
            nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def fold_batchnorm(self) -> None:
        """Replace conv + eval-mode BatchNorm by one conv with bias: W / sqrt(var + eps), -mean / sqrt(var + eps)."""
        conv, bn = self.layer[0], self.layer[1]
        if not isinstance(bn, nn.BatchNorm2d):
            return
        self.layer = nn.Sequential(fold_batchnorm(conv, bn), nn.ReLU(inplace=True))


class XFeatNet(nn.Module):
    """The XFeat network (the original's `XFeatModel` without `fine_matcher`), same parameter names.

    forward(x): x float (B, C, H, W), C = 1 or 3 (averaged), H and W multiples of 32, values in [0, 1].
    Returns feats (B, 64, H/8, W/8) (not normalised), keypoint_logits (B, 65, H/8, W/8) (64 positions of
    each 8x8 cell in row-major order + "no keypoint"), heatmap (B, 1, H/8, W/8) (reliability, sigmoid).
    """

    def __init__(self):
        super().__init__()
        self.norm = nn.InstanceNorm2d(1)
        self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1, stride=1, padding=0))
        self.block1 = nn.Sequential(BasicLayer(1, 4, stride=1), BasicLayer(4, 8, stride=2),
                                    BasicLayer(8, 8, stride=1), BasicLayer(8, 24, stride=2))
        self.block2 = nn.Sequential(BasicLayer(24, 24, stride=1), BasicLayer(24, 24, stride=1))
        self.block3 = nn.Sequential(BasicLayer(24, 64, stride=2), BasicLayer(64, 64, stride=1),
                                    BasicLayer(64, 64, 1, padding=0))
        self.block4 = nn.Sequential(BasicLayer(64, 64, stride=2), BasicLayer(64, 64, stride=1),
                                    BasicLayer(64, 64, stride=1))
        self.block5 = nn.Sequential(BasicLayer(64, 128, stride=2), BasicLayer(128, 128, stride=1),
                                    BasicLayer(128, 128, stride=1), BasicLayer(128, 64, 1, padding=0))
        self.block_fusion = nn.Sequential(BasicLayer(64, 64, stride=1), BasicLayer(64, 64, stride=1),
                                          nn.Conv2d(64, 64, 1, padding=0))
        self.heatmap_head = nn.Sequential(BasicLayer(64, 64, 1, padding=0), BasicLayer(64, 64, 1, padding=0),
                                          nn.Conv2d(64, 1, 1), nn.Sigmoid())
        self.keypoint_head = nn.Sequential(BasicLayer(64, 64, 1, padding=0), BasicLayer(64, 64, 1, padding=0),
                                           BasicLayer(64, 64, 1, padding=0), nn.Conv2d(64, 65, 1))

    @staticmethod
    def cells_to_channels(x: torch.Tensor, cell: int = CELL) -> torch.Tensor:
        """(B, C, H, W) -> (B, C * cell^2, H / cell, W / cell), each cell's pixels in row-major order."""
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // cell, cell, w // cell, cell)
        return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * cell * cell, h // cell, w // cell)

    channels_last = False  # set by `optimize_for_inference`

    def forward(self, x: torch.Tensor):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.norm(x.mean(dim=1, keepdim=True))
        x1 = self.block1(x)
        x2 = self.block2(x1 + self.skip1(x))
        x3 = self.block3(x2)
        x4 = self.block4(x3)
        x5 = self.block5(x4)
        size = x3.shape[-2:]
        x4 = F.interpolate(x4, size, mode="bilinear", align_corners=False)
        x5 = F.interpolate(x5, size, mode="bilinear", align_corners=False)
        feats = self.block_fusion(x3 + x4 + x5)
        heatmap = self.heatmap_head(feats)
        keypoint_logits = self.keypoint_head(self.cells_to_channels(x))
        return feats, keypoint_logits, heatmap

    def fold_batchnorm(self) -> "XFeatNet":
        """Fold every BatchNorm into its convolution (inference only; outputs equal within float rounding)."""
        for module in self.modules():
            if isinstance(module, BasicLayer):
                module.fold_batchnorm()
        return self

    def optimize_for_inference(self) -> "XFeatNet":
        """Eval mode, BatchNorm folded, channels-last weights and activations (oneDNN/cuDNN convolutions run
        ~20-30 % faster on this small network; outputs equal within float rounding, ~5e-6 relative)."""
        self.eval().fold_batchnorm()
        self.to(memory_format=torch.channels_last)
        self.channels_last = True
        for p in self.parameters():
            p.requires_grad_(False)
        return self


def convert_state_dict(state: dict, path) -> dict:
    """An XFeat file's state_dict -> the keys of `XFeatNet`: the official xfeat.pt holds 22 `fine_matcher.*`
    entries (the XFeat* refinement MLP, not part of extraction), which are dropped; a `net.` prefix (a saved
    `XFeat` module) is removed. Everything else must match exactly (checked by the strict load)."""
    if all(k.startswith("net.") for k in state):
        state = {k[len("net."):]: v for k, v in state.items()}
    ignored = [k for k in state if k.startswith("fine_matcher.")]
    if ignored:
        logger.debug("%s: ignoring %d fine_matcher entries (used by XFeat* refinement only)", path, len(ignored))
    return {k: v for k, v in state.items() if not k.startswith("fine_matcher.")}


def load_xfeat_weights(net: XFeatNet, path) -> None:
    """Load the file `path` into `net`: the official xfeat.pt (BatchNorm statistics) or the converted
    xfeat_from_onnx.pt (BatchNorm folded). Raises `CheckpointError` naming the file on any mismatch."""
    load_weights(net, WEIGHTS["xfeat"], path, model="xfeat", entries=("state_dict", "model"),
                 convert=convert_state_dict)


# ----------------------------------------------------------------------------------- post-processing
def keypoint_heatmap(keypoint_logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, 65, h, w) -> keypoint probability heatmap (B, 1, 8h, 8w) (softmax, drop "no keypoint")."""
    probs = F.softmax(keypoint_logits, dim=1)[:, :CELL * CELL]
    b, _, h, w = probs.shape
    probs = probs.reshape(b, CELL, CELL, h, w).permute(0, 3, 1, 4, 2)
    return probs.reshape(b, 1, h * CELL, w * CELL)


def to_multiple_of_32(x: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float]]:
    """Resize (B, C, H, W) to (H // 32 * 32, W // 32 * 32) like the original's `preprocess_tensor`.

    Bilinear, align_corners=False; skipped when the size is already a multiple of 32 (it is the identity
    then). Returns the tensor and the factors (rw, rh) = original size / internal size.
    """
    h, w = x.shape[-2:]
    ih, iw = (h // MULTIPLE) * MULTIPLE, (w // MULTIPLE) * MULTIPLE
    if ih == 0 or iw == 0:
        raise ValueError(f"xfeat needs images of at least {MULTIPLE}x{MULTIPLE} pixels, got {w}x{h} (W x H)")
    if (ih, iw) != (h, w):
        x = F.interpolate(x, (ih, iw), mode="bilinear", align_corners=False)
    return x, (w / iw, h / ih)


def internal_to_original(points: torch.Tensor, factors: tuple[float, float], scale: float = 1.0) -> torch.Tensor:
    """Internal pixel coordinates (N, 2) -> pixel-centre coordinates of the original image.

    factors = (rw, rh) of `to_multiple_of_32`; `scale` = the factor the image was resized by before
    (semi-dense multi-scale), with the same bilinear pixel-centre convention.
    """
    f = points.new_tensor(factors)
    return ((points + 0.5) * f) / scale - 0.5


def original_sampler_grid(points: torch.Tensor, size_wh: tuple[int, int]) -> torch.Tensor:
    """The original's `InterpolateSparse2d.normgrid`: 2 p / (W - 1, H - 1) - 1 (points (B, N, 2)).

    The original samples these with align_corners=False; keeping this pairing is what makes the scores and
    descriptors identical (internal pixel p lands at p * W / (W - 1) - 0.5 pixels of the full-size heatmap).
    """
    return pixel_to_grid(points, size_wh, align_corners=True)


@torch.inference_mode()
def detect_and_compute(net: XFeatNet, x: torch.Tensor, top_k: Optional[int] = 4096,
                       detection_threshold: float = 0.05, nms_kernel: int = 5):
    """Sparse XFeat on one image tensor x (1, C, H, W) in [0, 1] (C = 3 BGR as the original, or 1).

    Returns keypoints (N, 2) float32 in INTERNAL pixels (integers; see `internal_to_original`), scores (N,),
    descriptors (N, 64) L2-normalised, sorted by decreasing score, and the factors (rw, rh).
    """
    x, factors = to_multiple_of_32(x)
    ih, iw = x.shape[-2:]
    feats, logits, reliability = net(x)
    heat = keypoint_heatmap(logits)                                     # (1, 1, ih, iw)
    local_max = window_max(heat, nms_kernel)
    peaks = ((heat == local_max) & (heat > detection_threshold))[0, 0]
    yx = peaks.nonzero()                                                # (M, 2) row-major order
    points = yx.flip(-1).float()[None]                                  # (1, M, 2) as (x, y)
    # The original marks the padding value (0, 0) invalid with score -1, so a real peak at (0, 0) is dropped.
    valid = (yx != 0).any(dim=1)
    grid = original_sampler_grid(points, (iw, ih))
    scores = (sample_dense(heat, grid, mode="nearest")[0, :, 0]
              * sample_dense(reliability, grid, mode="bilinear")[0, :, 0])
    valid &= scores > 0   # the nearest sampler reads 0 just outside the last row/column
    points, scores = points[0, valid], scores[valid]
    order = top_k_indices(scores, top_k)
    points, scores = points[order], scores[order]
    # = F.normalize(feats, dim=1) up to rounding, ~6x faster on CPU for this (1, 64, h, w) layout.
    dense = feats / feats.pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    desc = sample_dense(dense, original_sampler_grid(points[None], (iw, ih)), mode="bicubic")[0]
    return points, scores, l2_normalize(desc, dim=-1), factors


@torch.inference_mode()
def extract_dense(net: XFeatNet, x: torch.Tensor, top_k: Optional[int]):
    """The original's `extractDense` on x (1, C, H, W): the `top_k` most reliable 1/8-resolution cells.

    Returns points (N, 2) in INTERNAL pixels (8 * cell index, the cell's top-left pixel as in the original),
    reliability scores (N,) sorted decreasing, raw descriptors (N, 64), and the factors (rw, rh).
    """
    x, factors = to_multiple_of_32(x)
    feats, _, reliability = net(x)
    _, c, h, w = feats.shape
    rel = reliability.reshape(-1)
    k = rel.numel() if top_k is None else min(rel.numel(), top_k)
    values, index = torch.topk(rel, k)
    desc = feats[0].reshape(c, -1).t()[index]
    points = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], dim=1).float() * CELL
    return points, values, desc, factors


@torch.inference_mode()
def detect_and_compute_dense(net: XFeatNet, x: torch.Tensor, top_k: Optional[int] = 4096,
                             multiscale: bool = True):
    """The coarse extraction of XFeat* on x (1, C, H, W). Returns keypoints (N, 2) in ORIGINAL pixel-centre
    coordinates, scores (N,), raw descriptors (N, 64), extraction scales (N,) (the resize factor s)."""
    plans = SEMI_DENSE_SCALES if multiscale else ((1.0, 1.0),)
    out = []
    for scale, share in plans:
        k = None if top_k is None else max(1, int(top_k * share))
        xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        if min(xs.shape[-2:]) < MULTIPLE:
            h, w = x.shape[-2:]
            raise ValueError(f"xfeat semi-dense: the {w}x{h} (W x H) image is {xs.shape[-1]}x{xs.shape[-2]} at "
                             f"scale {scale}, below the network's {MULTIPLE}x{MULTIPLE} minimum; use "
                             "multiscale=False or a larger image")
        points, scores, desc, factors = extract_dense(net, xs, k)
        kpts = internal_to_original(points, factors, scale)
        out.append((kpts, scores, desc, torch.full_like(scores, scale)))
    return tuple(torch.cat(parts) for parts in zip(*out))


# ----------------------------------------------------------------------------------------- extractor
class XFeat(Extractor):
    """XFeat with its official weights (file `xfeat.pt`, or the converted `xfeat_from_onnx.pt`).

    Config (names of the original):
      mode:                'sparse' (detectAndCompute) or 'semi-dense' (XFeat* coarse features).
      max_keypoints:       keypoints kept (None = no limit); 4096 as the original's `top_k`.
      detection_threshold: sparse: minimum keypoint-heatmap value of a peak (0.05 as the original).
      nms_window:          sparse: NMS window size, odd (5 as the original's `nms_kernel`).
      multiscale:          semi-dense: extract at scales 0.6 and 1.3 (True, as the original) or at 1.0.
      weights:             a weights file (None = find xfeat.pt, then xfeat_from_onnx.pt; see `localfeat.hub`).
    Aliases (the original's names): top_k = max_keypoints, nms_kernel = nms_window.
    Output: 64-D float descriptors; semi-dense adds `scales` (8 / extraction scale, pixels).
    """

    name = "xfeat"
    input_mode = "rgb"
    conf_aliases = {"top_k": "max_keypoints", "nms_kernel": "nms_window"}
    default_conf = {
        "mode": "sparse",
        "max_keypoints": 4096,
        "detection_threshold": 0.05,
        "nms_window": 5,
        "multiscale": True,
        "weights": None,
    }

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        self.check_choice("mode", MODES)
        self.check_count("max_keypoints")
        self.check_count("nms_window", allow_none=False, odd=True)
        if not isinstance(c["detection_threshold"], (int, float)) or isinstance(c["detection_threshold"], bool):
            raise ConfigError(f"xfeat: detection_threshold must be a number, got {c['detection_threshold']!r}")
        net = XFeatNet()
        # A local xfeat.pt, else a local xfeat_from_onnx.pt, else a download of xfeat.pt.
        official, converted = WEIGHTS["xfeat"], WEIGHTS["xfeat_from_onnx"]
        spec = converted if hub.locate(official) is None and hub.locate(converted) is not None else official
        try:
            self.weights_path = load_weights(net, spec, c["weights"], model="xfeat", entries=("state_dict", "model"),
                                             convert=convert_state_dict)
        except hub.WeightsNotFoundError as exc:
            if c["weights"] is not None:
                raise
            raise hub.WeightsNotFoundError(
                f"{exc} (the converted file {converted.filename!r} is accepted too)") from exc
        self.net = net.to(self.device).optimize_for_inference()

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        return [WEIGHTS["xfeat"], WEIGHTS["xfeat_from_onnx"]]

    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB (H, W, 3) -> (1, 3, H, W) float BGR / 255, the original's input for a cv2.imread image."""
        return image_to_tensor(image[..., ::-1], device=self.device)

    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        x = self.image_tensor(image)
        c = self.conf
        if c["mode"] == "sparse":
            points, scores, desc, factors = detect_and_compute(
                self.net, x, top_k=c["max_keypoints"], detection_threshold=float(c["detection_threshold"]),
                nms_kernel=c["nms_window"])
            kpts = internal_to_original(points, factors)
            return Features(kpts.cpu(), scores.cpu(), desc.cpu(), (w, h))
        kpts, scores, desc, scale = detect_and_compute_dense(self.net, x, top_k=c["max_keypoints"],
                                                             multiscale=bool(c["multiscale"]))
        return Features(kpts.cpu(), scores.cpu(), l2_normalize(desc, dim=-1).cpu(), (w, h),
                        scales=(CELL / scale).cpu())
