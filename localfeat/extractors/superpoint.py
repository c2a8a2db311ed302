"""SuperPoint (DeTone et al., CVPRW 2018), the network of Magic Leap's release `superpoint_v1.pth`.

Network (`SuperPointNet` of magicleap/SuperPointPretrainedNetwork, same layer names in cvg/LightGlue's
`superpoint.py`, so one file loads into both): a VGG-style encoder of 3x3 convs
conv1a/b (1->64->64), pool, conv2a/b (64), pool, conv3a/b (128), pool, conv4a/b (128), then
    detector head   convPa 3x3 128->256, ReLU, convPb 1x1 256->65  -> `semi` (B, 65, H/8, W/8), channel 64 = dustbin
    descriptor head convDa 3x3 128->256, ReLU, convDb 1x1 256->256 -> L2-normalised over channels.

Post-processing, `style`:
  'magicleap' (default, `SuperPointFrontend` of the demo): heatmap = exp(semi) / (sum + 1e-5), dustbin
      dropped, cells to pixels; candidates >= detection_threshold; greedy box NMS (+-nms_radius px) by
      decreasing confidence; points within remove_borders px of the input border dropped; sorted by
      decreasing score; descriptors sampled bilinearly (grid x/(W/2)-1, align_corners=False, i.e. the
      map at (x/8 - 0.5, y/8 - 0.5)) and re-normalised.
  'lightglue' (cvg/LightGlue `superpoint.py`): softmax heatmap; `simple_nms` (max-pool, 2 rounds);
      border scores set to -1; scores > detection_threshold (raster order, or top-k sorted when
      max_keypoints is set); descriptors sampled at ((x - 3.5)/(8w - 4.5), ...) with align_corners=True.
      LightGlue's own default threshold is 0.0005 (set detection_threshold=0.0005 for its output).
Keypoints are integer pixel positions of the input image (pixel-centre convention, no offset).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import hub
from ..ops import greedy_box_nms, image_to_tensor, iterative_max_pool_nms, l2_normalize, sample_dense
from ..registry import ConfigError
from ..checkpoints import load_weights
from ..types import Features
from .base import Extractor

logger = logging.getLogger(__name__)

# Magic Leap SuperPointPretrainedNetwork (academic/non-profit NON-COMMERCIAL licence; never packaged).
# sha256 of the official superpoint_v1.pth as established in issue 14 (the same file on both URLs).
WEIGHTS = {
    "v1": hub.WeightSpec(
        "superpoint_v1.pth",
        ("https://github.com/magicleap/SuperPointPretrainedNetwork/raw/master/superpoint_v1.pth",
         "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/superpoint_v1.pth"),
        "52b6708629640ca883673b5d5c097c4ddad37d8048b33f09c8ca0d69db12c40e",
        "Magic Leap SuperPoint licence (academic or non-profit non-commercial research use only)", True),
}
# LightGlue trained on SuperPoint features (cvg/LightGlue release v0.1_arxiv, Apache-2.0); sha256 as
# established in issue 14.
LIGHTGLUE = {
    "weights": hub.WeightSpec(
        "superpoint_lightglue.pth",
        ("https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/superpoint_lightglue.pth",),
        "6ff7040d0a497fc6639337946d7538dae07428c18f77a067a0b5a960e7cc551a", "Apache-2.0"),
    "input_dim": 256,
}

CELL = 8
STYLES = ("magicleap", "lightglue")


class SuperPointNet(nn.Module):
    """(B, 1, H, W) gray in [0, 1] -> semi (B, 65, H/8, W/8) logits, desc (B, 256, H/8, W/8) unit-norm."""

    def __init__(self):
        super().__init__()
        c1, c2, c3, c4, c5, d1 = 64, 64, 128, 128, 256, 256
        conv = nn.Conv2d
        self.conv1a, self.conv1b = conv(1, c1, 3, padding=1), conv(c1, c1, 3, padding=1)
        self.conv2a, self.conv2b = conv(c1, c2, 3, padding=1), conv(c2, c2, 3, padding=1)
        self.conv3a, self.conv3b = conv(c2, c3, 3, padding=1), conv(c3, c3, 3, padding=1)
        self.conv4a, self.conv4b = conv(c3, c4, 3, padding=1), conv(c4, c4, 3, padding=1)
        self.convPa, self.convPb = conv(c4, c5, 3, padding=1), conv(c5, 65, 1)
        self.convDa, self.convDb = conv(c4, c5, 3, padding=1), conv(c5, d1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        relu, pool = F.relu, lambda t: F.max_pool2d(t, 2, 2)
        x = pool(relu(self.conv1b(relu(self.conv1a(x)))))
        x = pool(relu(self.conv2b(relu(self.conv2a(x)))))
        x = pool(relu(self.conv3b(relu(self.conv3a(x)))))
        x = relu(self.conv4b(relu(self.conv4a(x))))
        semi = self.convPb(relu(self.convPa(x)))
        desc = self.convDb(relu(self.convDa(x)))
        desc = desc / torch.linalg.vector_norm(desc, dim=1, keepdim=True)  # the release divides, no eps
        return semi, desc


def semi_to_heatmap(semi: torch.Tensor, style: str = "magicleap") -> torch.Tensor:
    """semi (B, 65, Hc, Wc) -> per-pixel probability (B, 8*Hc, 8*Wc), dustbin dropped.

    'magicleap': exp(semi) / (sum_c exp(semi) + 1e-5), computed in numpy float32 as the demo does (numpy's
    exp and its channel-by-channel sum round differently from torch's; this keeps the scores bit-exact);
    'lightglue': torch softmax.
    """
    if style == "magicleap":
        e = np.exp(semi.detach().cpu().numpy())
        prob = torch.from_numpy(e / (np.sum(e, axis=1, keepdims=True) + np.float32(1e-5))).to(semi.device)
    else:
        prob = torch.softmax(semi, dim=1)
    return F.pixel_shuffle(prob[:, :-1], CELL)[:, 0]  # heat[8r+i, 8c+j] = prob[8i+j, r, c]


def _magicleap_keypoints(heat: torch.Tensor, conf: dict, size_wh: tuple[int, int]):
    """Demo post-processing on one heatmap (h8, w8) -> xy long (N, 2), scores (N,), best first."""
    w, h = size_wh
    yx = (heat >= conf["detection_threshold"]).nonzero()
    scores = heat[yx[:, 0], yx[:, 1]]
    xy_np = yx.flip(1).cpu().numpy()
    keep = greedy_box_nms(xy_np, scores.cpu().numpy(), int(conf["nms_radius"]), (w, h))
    keep = torch.from_numpy(keep).to(heat.device)
    xy, scores = yx.flip(1)[keep], scores[keep]
    b = int(conf["remove_borders"])
    if b:
        inside = (xy[:, 0] >= b) & (xy[:, 0] < w - b) & (xy[:, 1] >= b) & (xy[:, 1] < h - b)
        xy, scores = xy[inside], scores[inside]
    if conf["max_keypoints"] is not None:
        xy, scores = xy[: conf["max_keypoints"]], scores[: conf["max_keypoints"]]
    return xy, scores


def _lightglue_keypoints(heat: torch.Tensor, conf: dict):
    """LightGlue-style post-processing on one heatmap (h8, w8) -> xy long (N, 2), scores (N,)."""
    heat = iterative_max_pool_nms(heat[None], int(conf["nms_radius"]))[0]
    b = int(conf["remove_borders"])
    if b:
        heat[:b] = -1
        heat[:, :b] = -1
        heat[-b:] = -1
        heat[:, -b:] = -1
    yx = (heat > conf["detection_threshold"]).nonzero()
    scores = heat[yx[:, 0], yx[:, 1]]
    k = conf["max_keypoints"]
    if k is not None and k < len(scores):
        scores, idx = torch.topk(scores, k, dim=0, sorted=True)
        yx = yx[idx]
    return yx.flip(1), scores


def sample_descriptors(desc: torch.Tensor, xy: torch.Tensor, size_wh: tuple[int, int], style: str) -> torch.Tensor:
    """Bilinear descriptors (N, D), L2-normalised, of the map desc (1, D, Hc, Wc) at pixel positions xy (N, 2)."""
    xy = xy.float()
    if style == "magicleap":
        w, h = size_wh
        grid = xy / xy.new_tensor([w / 2.0, h / 2.0]) - 1
        out = sample_dense(desc, grid[None], align_corners=False)[0]
    else:
        hc, wc = desc.shape[-2:]
        s = CELL
        grid = (xy - s / 2 + 0.5) / xy.new_tensor([wc * s - s / 2 - 0.5, hc * s - s / 2 - 0.5]) * 2 - 1
        out = sample_dense(desc, grid[None], align_corners=True)[0]
    return l2_normalize(out)


class SuperPoint(Extractor):
    """SuperPoint keypoints and 256-D descriptors (see module docstring).

    Config:
      weights:  None (official superpoint_v1.pth, NON-COMMERCIAL Magic Leap licence) or a path to a
                compatible state_dict (the release's and LightGlue's key names are the same).
      style:    'magicleap' (demo post-processing, default) or 'lightglue'.
      nms_radius: 4 (px); detection_threshold: 0.015; remove_borders: 4 (px);
      max_keypoints: None (no limit) or the number of best keypoints kept.
    Input: grayscale uint8, scaled to [0, 1]; H and W are cropped to multiples of 8 by the network.
    """

    name = "superpoint"
    lightglue = LIGHTGLUE
    input_mode = "gray"
    default_conf = {
        "weights": None,
        "style": "magicleap",
        "nms_radius": 4,
        "detection_threshold": 0.015,
        "remove_borders": 4,
        "max_keypoints": None,
    }

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        self.check_choice("style", STYLES)
        self.check_count("max_keypoints")
        if not isinstance(c["nms_radius"], int) or c["nms_radius"] < 0:
            raise ConfigError(f"superpoint: nms_radius must be a non-negative integer, got {c['nms_radius']!r}")
        self.net = SuperPointNet()
        self.weights_path = load_weights(self.net, WEIGHTS["v1"], c["weights"], model="SuperPoint",
                                         entries=("state_dict", "model"))
        self.net.to(self.device)

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        return [WEIGHTS["v1"]]

    @torch.no_grad()
    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        if h < CELL or w < CELL:
            raise ValueError(f"superpoint: image is {w}x{h}, needs at least {CELL}x{CELL} pixels")
        semi, desc = self.net(image_to_tensor(image, device=self.device))
        style = self.conf["style"]
        heat = semi_to_heatmap(semi, style)[0]
        if style == "magicleap":
            xy, scores = _magicleap_keypoints(heat, self.conf, (w, h))
        else:
            xy, scores = _lightglue_keypoints(heat, self.conf)
        d = sample_descriptors(desc, xy, (w, h), style)
        return Features(xy.float().cpu().numpy(), scores.cpu().numpy(), d.cpu().numpy(), (w, h))
