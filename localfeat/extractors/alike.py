"""ALIKE (Zhao et al., IEEE TMM 2022): a light-weight detector and descriptor with differentiable
keypoint detection, re-implemented from the facts of the official code (Shiaoming/ALIKE) and loading its
official weights `alike-{t,s,n,l}.pth` (BSD-3-Clause).

Pipeline (as the original `ALike.forward`): RGB / 255 -> zero padding of the bottom/right to a multiple
of 32 -> ALNet (score map and descriptor map at full resolution, cropped back) -> descriptor map
L2-normalised -> DKD (`_dkd.detect_keypoints`, border (3, 2)) -> descriptors sampled bilinearly at the
keypoints (nearest when `sub_pixel` is False) and L2-normalised again.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import hub
from ..ops import image_to_tensor, l2_normalize, sample_dense
from ..registry import ConfigError
from ..types import Features
from ._dkd import detect_keypoints
from .base import Extractor

logger = logging.getLogger(__name__)

# c1..c4: channels of the four encoder blocks; dim: descriptor dimension; single_head: no extra 1x1 head.
ALIKE_CONFIGS = {
    "alike-t": {"c1": 8, "c2": 16, "c3": 32, "c4": 64, "dim": 64, "single_head": True},
    "alike-s": {"c1": 8, "c2": 16, "c3": 48, "c4": 96, "dim": 96, "single_head": True},
    "alike-n": {"c1": 16, "c2": 32, "c3": 64, "c4": 128, "dim": 128, "single_head": True},
    "alike-l": {"c1": 32, "c2": 64, "c3": 128, "c4": 128, "dim": 128, "single_head": False},
}
RADIUS = 2  # detection radius of every released ALIKE model (5 x 5 windows)


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False)


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=1, bias=False)


class ConvBlock(nn.Module):
    """Two (conv 3x3 -> BatchNorm -> gate) layers; `conv` builds each 3x3 convolution (cin, cout)."""

    def __init__(self, cin: int, cout: int, gate: nn.Module, conv: Callable = conv3x3):
        super().__init__()
        self.gate = gate
        self.conv1 = conv(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gate(self.bn1(self.conv1(x)))
        return self.gate(self.bn2(self.conv2(x)))


class ResBlock(nn.Module):
    """ResNet basic block (stride 1) with a 1x1 conv (with bias) on the skip path."""

    def __init__(self, cin: int, cout: int, gate: nn.Module, conv: Callable = conv3x3):
        super().__init__()
        self.gate = gate
        self.conv1 = conv(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gate(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.downsample(x)
        return self.gate(out)


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear upsampling by an integer factor with align_corners=True (the original's nn.Upsample)."""
    return F.interpolate(x, size=(x.shape[-2] * factor, x.shape[-1] * factor), mode="bilinear",
                         align_corners=True)


class ALNet(nn.Module):
    """The ALIKE network; parameter names follow the official state dict.

    forward: image (B, 3, H, W), H and W multiples of 32 -> (scores (B, 1, H, W) after sigmoid,
    raw descriptor map (B, dim, H, W), not normalised).
    """

    def __init__(self, c1: int, c2: int, c3: int, c4: int, dim: int, single_head: bool):
        super().__init__()
        gate = nn.ReLU(inplace=True)
        self.gate = gate
        self.block1 = ConvBlock(3, c1, gate)
        self.block2 = ResBlock(c1, c2, gate)
        self.block3 = ResBlock(c2, c3, gate)
        self.block4 = ResBlock(c3, c4, gate)
        self.conv1 = conv1x1(c1, dim // 4)
        self.conv2 = conv1x1(c2, dim // 4)
        self.conv3 = conv1x1(c3, dim // 4)
        self.conv4 = conv1x1(c4, dim // 4)
        self.single_head = single_head
        if not single_head:
            self.convhead1 = conv1x1(dim, dim)
        self.convhead2 = conv1x1(dim, dim + 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = self.block1(image)                           # c1 x H x W
        x2 = self.block2(F.max_pool2d(x1, 2, 2))          # c2 x H/2
        x3 = self.block3(F.max_pool2d(x2, 4, 4))          # c3 x H/8
        x4 = self.block4(F.max_pool2d(x3, 4, 4))          # c4 x H/32
        x = torch.cat([self.gate(self.conv1(x1)),
                       upsample(self.gate(self.conv2(x2)), 2),
                       upsample(self.gate(self.conv3(x3)), 8),
                       upsample(self.gate(self.conv4(x4)), 32)], dim=1)
        if not self.single_head:
            x = self.gate(self.convhead1(x))
        x = self.convhead2(x)
        return torch.sigmoid(x[:, -1:]), x[:, :-1]


def pad_to_multiple(image: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Zero-pad the bottom and right of (B, C, H, W) so that H and W are multiples of `multiple`."""
    h, w = image.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(image, (0, pw, 0, ph)) if ph or pw else image


class ALIKE(Extractor):
    """ALIKE keypoints and descriptors (D = 64, 96, 128, 128 for t, s, n, l), official weights.

    Config (names of the original):
      variant:   'alike-t', 'alike-s', 'alike-n' (default) or 'alike-l'.
      weights:   None (find `<variant>.pth` through the weights lookup) or a path to a state dict.
      top_k:     None = threshold mode (the demo default); k = the k best NMS peaks.
      scores_th: threshold mode: keep NMS peaks with score > scores_th (mean of the map if none passes).
      n_limit:   threshold mode: at most this many keypoints (the best); None = no limit.
      sub_pixel: soft-argmax refinement and bilinear descriptor sampling (the demo default, True).
      sort:      order keypoints by decreasing score (default False: row-major order of the peaks,
                 or by score when top_k / n_limit cut).
    Output: keypoints in pixels (pixel-centre origin), scores = score map at the keypoint (0..1).
    """

    name = "alike"
    input_mode = "rgb"
    default_conf = {
        "variant": "alike-n",
        "weights": None,
        "top_k": None,
        "scores_th": 0.2,
        "n_limit": 5000,
        "sub_pixel": True,
        "sort": False,
    }

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        variant = conf.get("variant", cls.default_conf["variant"])
        if variant not in ALIKE_CONFIGS:
            raise ConfigError(f"alike: variant={variant!r} is not one of {sorted(ALIKE_CONFIGS)}")
        return [hub.weight_spec(variant)]

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        for key in ("top_k", "n_limit"):
            if c[key] is not None and (not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 1):
                raise ConfigError(f"alike: {key} must be None or a positive integer, got {c[key]!r}")
        spec = self.weight_specs(c)[0]
        self.net = ALNet(**ALIKE_CONFIGS[c["variant"]])
        path = hub.find_weights(spec, override=c["weights"])
        state = hub.load_torch_checkpoint(path)
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"alike: {path} is not a {c['variant']} state dict: {exc}") from exc
        self.net.eval().to(self.device)
        logger.info("alike: loaded %s (%s)", c["variant"], path)

    @torch.inference_mode()
    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense maps of an image tensor (B, 3, H, W) in [0, 1], RGB.

        Returns (scores (B, 1, H, W) in [0, 1], descriptors (B, D, H, W) L2-normalised over D),
        the original's `extract_dense_map` with the order of the outputs swapped.
        """
        h, w = image.shape[-2:]
        scores, desc = self.net(pad_to_multiple(image.to(self.device), 32))
        return scores[..., :h, :w], l2_normalize(desc[..., :h, :w], dim=1)

    @torch.inference_mode()
    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        c = self.conf
        scores_map, desc_map = self.dense(image_to_tensor(image, self.device))
        kpts, scores = detect_keypoints(scores_map, RADIUS, (RADIUS + 1, RADIUS), c["top_k"], c["scores_th"],
                                        c["n_limit"], c["sub_pixel"])
        kpts, scores = kpts[0], scores[0]
        if c["sub_pixel"]:
            desc = sample_dense(desc_map, kpts[None], align_corners=True)[0]
        else:  # the original truncates the pixel position and reads the map
            xy = ((kpts + 1) / 2 * kpts.new_tensor([w - 1, h - 1])).long()
            desc = desc_map[0, :, xy[:, 1], xy[:, 0]].t()
        desc = l2_normalize(desc, dim=1)
        xy = (kpts + 1) / 2 * kpts.new_tensor([w - 1, h - 1])
        if c["sort"]:
            order = torch.argsort(scores, descending=True, stable=True)
            xy, desc, scores = xy[order], desc[order], scores[order]
        return Features(xy.cpu().numpy(), scores.cpu().numpy(), desc.cpu().numpy(), (w, h))
