"""XFeat* (Potje et al., CVPR 2024): XFeat's semi-dense matching with its learned refinement, as a
detector-free matcher (two images in, `PairMatches` out).

Re-implementation of `XFeat.match_xfeat_star` of verlab/accelerated_features (commit e92685f, Apache-2.0):

1. coarse features of each image: the semi-dense extraction of the `xfeat` extractor
   (`localfeat.extractors.xfeat.detect_and_compute_dense`: the most reliable 1/8-resolution cells at scales 0.6
   and 1.3, 20 % / 80 % of `max_keypoints`), with the RAW (not normalised) 64-D features;
2. mutual nearest neighbours of the raw features by dot product (the original's `batch_match`, no threshold);
3. refinement: the official `fine_matcher` MLP (128 -> 512 x 4 -> 64, BatchNorm without affine) on the
   concatenated features of each match gives logits over the 8 x 8 positions of image 0's cell; the match is
   kept when max softmax(3 logits) > `fine_threshold`, and keypoint 0 moves by the expectation of that softmax
   (positions -4 .. 3 in the cell, in pixels of the extraction scale, i.e. divided by the scale). Keypoint 1
   stays at its cell position. Scores are that fine confidence.

Coordinates: the coarse positions follow the extractor's pixel-centre mapping (see its docstring); the offset is
added as the original adds it (offset / scale).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import load_strict, state_dict_from_file
from ..extractors.xfeat import WEIGHTS as XFEAT_WEIGHTS
from ..extractors.xfeat import XFeatNet, convert_state_dict, detect_and_compute_dense
from ..hub import CheckpointError, find_weights
from ..ops import image_to_tensor
from ..types import PairMatches
from .base import DetectorFreeMatcher

logger = logging.getLogger(__name__)

FINE_CELL = 8  # the refinement predicts a position inside image 0's 8 x 8 cell


def fine_matcher_mlp() -> nn.Sequential:
    """The original's `fine_matcher` (state_dict keys fine_matcher.{0,1,3,4,6,7,9,10,12}.*)."""
    layers = []
    for cin in (128, 512, 512, 512):
        layers += [nn.Linear(cin, 512), nn.BatchNorm1d(512, affine=False), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(512, 64))


def mutual_nearest_by_dot(desc0: torch.Tensor, desc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours of (N0, D) and (N1, D) by dot product; indices (M,), (M,) in image 0's order."""
    sim = desc0 @ desc1.t()
    nn01 = sim.argmax(dim=1)
    nn10 = sim.t().argmax(dim=1)
    idx0 = torch.arange(len(nn01), device=sim.device)
    mutual = nn10[nn01] == idx0
    return idx0[mutual], nn01[mutual]


def soft_argmax_offsets(logits: torch.Tensor, temperature: float = 3.0) -> torch.Tensor:
    """Logits (M, 64) over an 8 x 8 cell (row-major) -> expected (x, y) offsets (M, 2) of softmax(t * logits),
    positions x - 4 and y - 4 (x, y = 0..7), in pixels of the extraction scale."""
    probs = torch.softmax(temperature * logits, dim=-1)
    pos = torch.arange(FINE_CELL, device=logits.device, dtype=logits.dtype) - FINE_CELL // 2
    ys, xs = torch.meshgrid(pos, pos, indexing="ij")
    return torch.stack([(probs * xs.reshape(-1)).sum(-1), (probs * ys.reshape(-1)).sum(-1)], dim=-1)


class XFeatStar(DetectorFreeMatcher):
    """XFeat* semi-dense matching with the official xfeat.pt (the network and its `fine_matcher`).

    Config:
      max_keypoints:  coarse cells kept per image over both scales (4096 as the original's top_k; None = all).
      multiscale:     extract at scales 0.6 and 1.3 (True, as the original) or at 1.0 only.
      fine_threshold: minimum refinement confidence of a kept match (0.25 as the original's `fine_conf`).
      weights:        the official xfeat.pt (None = find it; see `localfeat.hub`). The converted
                      xfeat_from_onnx.pt has no `fine_matcher` and is refused.
      resize_max, device: as every model.
    """

    name = "xfeat_star"
    input_mode = "rgb"
    default_conf = {"max_keypoints": 4096, "multiscale": True, "fine_threshold": 0.25, "weights": None}

    def __init__(self, **conf):
        super().__init__(**conf)
        self.check_count("max_keypoints")
        thr = self.conf["fine_threshold"]
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 <= thr < 1:
            from ..config import ConfigError
            raise ConfigError(f"xfeat_star: fine_threshold must be a number in [0, 1), got {thr!r}")
        spec = XFEAT_WEIGHTS["xfeat"]
        path = find_weights(spec, override=self.conf["weights"])
        state = state_dict_from_file(path, entries=("state_dict", "model"))
        if all(k.startswith("net.") for k in state):
            state = {k[len("net."):]: v for k, v in state.items()}
        fine = {k[len("fine_matcher."):]: v for k, v in state.items() if k.startswith("fine_matcher.")}
        if not fine:
            raise CheckpointError(f"{path}: no fine_matcher.* entries; XFeat* needs the official xfeat.pt "
                                  f"({', '.join(spec.urls)}), not a file converted without the refinement MLP")
        self.net = XFeatNet()
        load_strict(self.net, convert_state_dict(state, path), path, "xfeat")
        self.fine_matcher = fine_matcher_mlp()
        load_strict(self.fine_matcher, fine, path, "xfeat fine_matcher")
        self.weights_path = path
        self.net = self.net.to(self.device).optimize_for_inference()
        self.fine_matcher.to(self.device).eval()

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        return [XFEAT_WEIGHTS["xfeat"]]

    @torch.inference_mode()
    def coarse(self, image: np.ndarray):
        """Semi-dense coarse features of a uint8 RGB image: keypoints (N, 2) original pixels, reliability (N,),
        raw descriptors (N, 64), extraction scale (N,)."""
        x = image_to_tensor(image[..., ::-1], device=self.device)   # BGR / 255 as the original's parse_input
        return detect_and_compute_dense(self.net, x, top_k=self.conf["max_keypoints"],
                                        multiscale=bool(self.conf["multiscale"]))

    @torch.inference_mode()
    def refine(self, kpts0, desc0, scale0, kpts1, desc1) -> PairMatches:
        """Mutual nearest neighbours of the coarse features, then the learned refinement (module docstring)."""
        idx0, idx1 = mutual_nearest_by_dot(desc0, desc1)
        logits = self.fine_matcher(torch.cat([desc0[idx0], desc1[idx1]], dim=-1))
        conf = F.softmax(logits * 3, dim=-1).max(dim=-1)[0]
        k0 = kpts0[idx0] + soft_argmax_offsets(logits) / scale0[idx0, None]
        keep = conf > self.conf["fine_threshold"]
        return PairMatches(k0[keep].cpu(), kpts1[idx1][keep].cpu(), conf[keep].cpu())

    def _match_images(self, image0: np.ndarray, image1: np.ndarray) -> PairMatches:
        k0, _, d0, s0 = self.coarse(image0)
        k1, _, d1, _ = self.coarse(image1)
        return self.refine(k0, d0, s0, k1, d1)
