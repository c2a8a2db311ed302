"""Key.Net (Barroso-Laguna et al., ICCV 2019): a shallow detector combining handcrafted derivative
filters with learned convolutions over a small internal pyramid, re-implemented from the facts of
the official PyTorch port (axelBarroso/Key.Net-Pytorch) and loading its weights `keynet_pytorch.pth`
(MIT).

Network (official `KeyNet`, num_filters 8, num_levels 3, kernel 5): for each of 3 internal levels
(level i = `_pyrdown(level i-1, 1.2)`), the handcrafted block computes Sobel derivatives (kornia's
normalised 3 x 3 Sobel, replicate padding) dx, dy, dxx, dxy, dyy and the 10 maps
[dx, dy, dx^2, dy^2, dx dy, dxy, dxy^2, dxx, dyy, dxx dyy]; three conv5x5-BN-ReLU blocks give 8 maps,
upsampled bilinearly to full size; the 24 maps go through conv5x5 + ReLU -> score map (raw values).

Detection (official `compute_kpts_desc`): one level upsampled by sqrt(2), the image, and 4 levels each
`_pyrdown(previous, sqrt(2))`; per level the score map with a 15 px border zeroed, 15 x 15 max-pool NMS,
scores > 0, best first, with a point budget per level (proportional to the level's area, unused
points passed to the next level).

The original has no descriptor of its own here (HyNet weights are not available offline): `keynet`
describes its keypoints with a patch descriptor of `localfeat.extractors._patch_nets` (default
TFeat) on patches of diameter `scales` (sampled from a Gaussian pyramid, `localfeat.patches`);
`compose` offers every combination (orientation, affine shape).
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import hub
from ..ops import window_max
from ..types import Features
from .base import Extractor

logger = logging.getLogger(__name__)

# axelBarroso/Key.Net-Pytorch model/weights/ at commit 74fe0a7 (MIT); sha256 of the official file.
WEIGHTS = {
    "keynet": hub.WeightSpec(
        "keynet_pytorch.pth",
        ("https://github.com/axelBarroso/Key.Net-Pytorch/raw/74fe0a75998445bb47b74b642b764543b25dc90a/model/weights/keynet_pytorch.pth",
         "https://github.com/axelBarroso/Key.Net-Pytorch/raw/main/model/weights/keynet_pytorch.pth"),
        "59d3a46d57b439513acf531877fdfaa95eb550ccd10ec462e23d7c1f7a86d52a", "MIT"),
}

_PYR_KERNEL = torch.tensor([[1., 4., 6., 4., 1.], [4., 16., 24., 16., 4.], [6., 24., 36., 24., 6.],
                            [4., 16., 24., 16., 4.], [1., 4., 6., 4., 1.]]) / 256.0


def _pyrdown(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Key.Net's `custom_pyrdown`: 5 x 5 binomial blur (reflect padding), then bilinear resize
    (align_corners=False, no antialias) to (int(H // factor), int(W // factor)). x: (B, C, H, W)."""
    b, c, h, w = x.shape
    k = _PYR_KERNEL.to(x)[None, None].expand(c, 1, 5, 5)
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=c)
    return F.interpolate(blurred, size=(int(h // factor), int(w // factor)), mode="bilinear", align_corners=False)


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia's `spatial_gradient` (Sobel, normalised by 8, replicate padding): (d/dx, d/dy) of (B, C, H, W)."""
    kx = torch.tensor([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]], device=x.device, dtype=x.dtype) / 8.0
    k = torch.stack([kx, kx.t()])[:, None]  # (2, 1, 3, 3)
    b, c, h, w = x.shape
    g = F.conv2d(F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate"), k)
    g = g.reshape(b, c, 2, h, w)
    return g[:, :, 0], g[:, :, 1]


def _conv_block(cin: int, cout: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 5, 1, 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _LearnableBlock(nn.Module):
    def __init__(self, cin: int = 10, filters: int = 8):
        super().__init__()
        self.conv0 = _conv_block(cin, filters)
        self.conv1 = _conv_block(filters, filters)
        self.conv2 = _conv_block(filters, filters)

    def forward(self, x):
        return self.conv2(self.conv1(self.conv0(x)))


class _FeatureExtractor(nn.Module):
    def __init__(self, filters: int = 8):
        super().__init__()
        self.lb_block = _LearnableBlock(10, filters)

    def forward(self, x):
        dx, dy = _sobel(x)
        dxx, dxy = _sobel(dx)
        _, dyy = _sobel(dy)
        hc = torch.cat([dx, dy, dx ** 2.0, dy ** 2.0, dx * dy, dxy, dxy ** 2.0, dxx, dyy, dxx * dyy], dim=1)
        return self.lb_block(hc)


class KeyNetNet(nn.Module):
    """Key.Net score network: (B, 1, H, W) grey in [0, 1] -> (B, 1, H, W) raw non-negative scores.
    Parameter names follow the official state dict."""

    def __init__(self, num_filters: int = 8, num_levels: int = 3, kernel_size: int = 5):
        super().__init__()
        self.num_levels = num_levels
        self.feature_extractor = _FeatureExtractor(num_filters)
        self.last_conv = nn.Sequential(nn.Conv2d(num_filters * num_levels, 1, kernel_size, padding=kernel_size // 2),
                                       nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        feats = [self.feature_extractor(x)]
        for _ in range(1, self.num_levels):
            x = _pyrdown(x, 1.2)
            feats.append(F.interpolate(self.feature_extractor(x), size=(h, w), mode="bilinear", align_corners=False))
        return self.last_conv(torch.cat(feats, dim=1))


def level_budgets(num_points: int, pyramid_levels: int, up_levels: int, factor: float) -> list[int]:
    """Official points per level (up levels first): num_points * f^-(i - up) / sum, rounded down, f = factor^2."""
    f = factor ** 2
    shares = [f ** (-(i - up_levels)) for i in range(pyramid_levels + up_levels + 1)]
    total = sum(shares)
    return [int(num_points * s / total) for s in shares]


class KeyNet(Extractor):
    """Key.Net multi-scale detector (+ a patch descriptor, default TFeat).

    Config:
      max_keypoints:  total keypoint budget (official default 5000); None = every NMS maximum.
      pyramid_levels: levels below the image (4); up_levels: levels above it (1); scale_factor: sqrt(2).
      nms_window:     NMS window size, odd (15); border: 15 (px zeroed at each level); nms_threshold: 0.0
                      (scores must exceed it).
      s_mult:         22, the official descriptor support half-size in level pixels: `scales` =
                      2 * s_mult * level scale (diameter, original pixels).
      official_coordinates: False maps level pixel i to (i + 0.5) * W / W_level - 0.5 (pixel centres);
                      True keeps the original's i * W / W_level.
      descriptor:     patch descriptor name ('tfeat', 'hardnet', 'sosnet', 'sift'), see `compose`.
      descriptor_weights: None or a path for the descriptor's weights.
      weights:        None (find `keynet_pytorch.pth`) or a path.
    Aliases (the original's names): num_points = max_keypoints, nms_size = nms_window.
    Output: keypoints in the official order (up level, then level 0..4, best first within a level),
    scores = raw score-map values, scales (N,) as above, orientations 0.
    """

    name = "keynet"
    input_mode = "gray"
    conf_aliases = {"num_points": "max_keypoints", "nms_size": "nms_window"}
    default_conf = {
        "max_keypoints": 5000, "pyramid_levels": 4, "up_levels": 1, "scale_factor": math.sqrt(2.0),
        "nms_window": 15, "border": 15, "nms_threshold": 0.0, "s_mult": 22.0,
        "official_coordinates": False, "descriptor": "tfeat", "descriptor_weights": None, "weights": None,
    }

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        from ._patch_nets import descriptor_weight_specs

        desc = conf.get("descriptor", cls.default_conf["descriptor"])
        return [WEIGHTS["keynet"]] + descriptor_weight_specs(desc)

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        self.check_count("max_keypoints")
        self.check_count("nms_window", allow_none=False, odd=True)
        self.net = KeyNetNet()
        path = hub.find_weights(WEIGHTS["keynet"], override=c["weights"])
        ckpt = hub.load_torch_checkpoint(path)
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        try:
            self.net.load_state_dict(state)
        except (RuntimeError, KeyError) as exc:
            raise ValueError(f"keynet: {path} is not a Key.Net state dict: {exc}") from exc
        self.net.eval().to(self.device)
        self.descriptor = None
        if c["descriptor"] is not None:
            from ._patch_nets import load_patch_descriptor

            self.descriptor = load_patch_descriptor(c["descriptor"], weights=c["descriptor_weights"],
                                                    device=self.device)

    @torch.no_grad()
    def score_map(self, image: torch.Tensor) -> torch.Tensor:
        """Raw score map (B, 1, H, W) of a grey tensor (B, 1, H, W) in [0, 1]."""
        return self.net(image.to(self.device))

    @torch.no_grad()
    def _detect_level(self, level: torch.Tensor, budget: Optional[int]):
        scores = self.score_map(level).float()  # float32 under precision='bf16' too
        b = self.conf["border"]
        if b:
            mask = torch.zeros_like(scores)
            mask[:, :, b:scores.shape[2] - b, b:scores.shape[3] - b] = 1
            scores = scores * mask
        k = self.conf["nms_window"]
        maxima = (scores == window_max(scores, k)) & (scores > self.conf["nms_threshold"])
        ys, xs = torch.nonzero(maxima[0, 0], as_tuple=True)  # row-major order, as the original's nonzero()
        vals = scores[0, 0, ys, xs]
        order = torch.sort(vals, descending=True, stable=True).indices
        order = order[vals[order] > 0]
        if budget is not None:
            order = order[:budget]
        return xs[order], ys[order], vals[order]

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> dict:
        """Multi-scale detection on a uint8 grey image (H, W).

        Returns a dict of numpy arrays: keypoints (N, 2) original pixels, scores (N,), scales (N,)
        (support diameter, original pixels), levels (N,) int (-1 = up level, 0 = image, 1..4 below),
        """
        c = self.conf
        f = float(c["scale_factor"])
        im = torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0)[None, None].to(self.device)
        h, w = image.shape[:2]
        n_up, n_down = int(c["up_levels"]), int(c["pyramid_levels"])
        budgets = (level_budgets(c["max_keypoints"], n_down, n_up, f) if c["max_keypoints"] is not None
                   else [None] * (n_up + n_down + 1))
        out_xy, out_s, out_sc, out_lvl = [], [], [], []
        taken = 0

        def add(level_img, lvl, level_scale, budget):
            nonlocal taken
            lh, lw = level_img.shape[-2:]
            xs, ys, vals = self._detect_level(level_img, budget)
            fx, fy = w / lw, h / lh
            xy = torch.stack([xs, ys], 1).double().cpu().numpy()
            if c["official_coordinates"]:
                xy = xy * [fx, fy]
            else:
                xy = (xy + 0.5) * [fx, fy] - 0.5
            out_xy.append(xy)
            out_sc.append(vals.cpu().numpy())
            out_s.append(np.full(len(xy), 2.0 * c["s_mult"] * level_scale))
            out_lvl.append(np.full(len(xy), lvl))
            taken += len(xy)

        im_up = im
        for i in range(n_up):
            up = f ** (1 + i)
            im_up = F.interpolate(im_up, (int(h * up), int(w * up)), mode="bilinear", align_corners=False)
            add(im_up, -(i + 1), 1.0 / up, budgets[n_up - 1 - i])
        level = im
        for i in range(n_down + 1):
            if i > 0:
                level = _pyrdown(level, f)
            budget = budgets[i + n_up]
            if budget is not None and (i > 0 or n_up):
                budget = int(sum(budgets[:i + 1 + n_up]) - taken)
            add(level, i, f ** i, budget)
        cat = (lambda xs, dt: np.concatenate(xs).astype(dt))
        return {"keypoints": cat(out_xy, np.float32), "scores": cat(out_sc, np.float32),
                "scales": cat(out_s, np.float32), "levels": cat(out_lvl, np.int64)}

    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        det = self.detect(image)
        n = len(det["keypoints"])
        if self.descriptor is None:
            desc = np.zeros((n, 0), np.float32)
        else:
            desc = self.descriptor.describe(image, det["keypoints"], det["scales"])
        return Features(det["keypoints"], det["scores"], desc, (w, h), scales=det["scales"],
                        orientations=np.zeros(n, np.float32))
