"""D2-Net (Dusmanu et al., CVPR 2019): describe-and-detect on a truncated VGG16, as released
(mihaidusmanu/d2-net `lib/model_test.py`, `lib/pyramid.py`, `extract_features.py`).

Trunk: VGG16 `features[0:22]` (conv1_1 ... conv4_3), keys `dense_feature_extraction.model.{0,2,5,...,21}`
so that `d2_tf.pth['model']` loads unchanged. Two layouts share these keys:
  'test'  (extraction): pool1/pool2 max 2x2, pool3 replaced by AvgPool2d(2, stride 1), conv4_x dilated
          by 2 (padding 2), ReLU after conv4_3 -> (B, 512, H//4 - 1, W//4 - 1);
  'train' (training):   plain VGG16 features[:22] (max pools, no dilation, no final ReLU) -> (B, 512, H/8, W/8).
Detection (`HardDetectionModule`): (c, i, j) is a keypoint when f[c, i, j] is the max over channels and
over its 3x3 neighbourhood and passes the edge test tr^2/det <= (5+1)^2/5, det > 0 (finite-difference
Hessian). Localisation: one Newton step -H^-1 grad, kept when both |steps| < 0.5. Position in image
pixels: p -> 2p + 0.5 twice (4i + 1.5), times the level's size ratio. Score: the feature value divided
by (level index + 1). Descriptor: bilinear interpolation of the (summed) dense features, L2-normalised;
points without 4 valid neighbours are dropped.
Multi-scale (`multiscale=True`, scales 0.5, 1, 2): bilinear (align_corners=True) image pyramid, coarser
features upsampled and added, detections of coarser levels banned (nearest resize of the mask).
Soft detection (`soft_detection_scores`) is the training-time score map.
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import hub
from ..io.images import map_keypoints_to_original
from ..registry import ConfigError
from ..checkpoints import load_strict, load_weights, state_dict_from_file, training_weights
from ..io.atomic import torch_save_atomic
from ..ops import l2_normalize
from ..types import Features
from .base import Extractor

logger = logging.getLogger(__name__)

# mihaidusmanu/d2-net, the README's wget lines (Clear BSD). No sha256 is published and the files are not
# available offline to hash: not pinned (loaded with a warning).
WEIGHTS = {
    "d2_tf": hub.WeightSpec("d2_tf.pth", ("https://dusmanu.com/files/d2-net/d2_tf.pth",), None, "Clear BSD"),
    "d2_tf_no_phototourism": hub.WeightSpec(
        "d2_tf_no_phototourism.pth", ("https://dusmanu.com/files/d2-net/d2_tf_no_phototourism.pth",), None,
        "Clear BSD"),
}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MULTISCALE = (0.5, 1.0, 2.0)
EDGE_THRESHOLD = 5.0


class D2Trunk(nn.Module):
    """Truncated VGG16 under the attribute `model` (indices = VGG16 `features` indices)."""

    num_channels = 512

    def __init__(self, mode: str = "test", use_relu: bool = True):
        super().__init__()
        if mode not in ("test", "train"):
            raise ValueError(f"D2Trunk mode must be 'test' or 'train', got {mode!r}")
        test = mode == "test"
        d = 2 if test else 1

        def conv(a, b, dil=1):
            return nn.Conv2d(a, b, 3, padding=dil, dilation=dil)

        relu = nn.ReLU  # parameter-free, so in-place or not does not change the keys or the values
        self.model = nn.Sequential(
            conv(3, 64), relu(), conv(64, 64), relu(), nn.MaxPool2d(2, 2),
            conv(64, 128), relu(), conv(128, 128), relu(), nn.MaxPool2d(2, 2),
            conv(128, 256), relu(), conv(256, 256), relu(), conv(256, 256), relu(),
            nn.AvgPool2d(2, stride=1) if test else nn.MaxPool2d(2, 2),
            conv(256, 512, d), relu(), conv(512, 512, d), relu(), conv(512, 512, d),
        )
        self.mode = mode
        self.use_relu = use_relu and test  # the training trunk has no final ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) preprocessed image -> dense features (B, 512, h, w)."""
        out = self.model(x)
        return F.relu(out) if self.use_relu else out


class D2NetModel(nn.Module):
    """Holds the trunk as `dense_feature_extraction` (the checkpoint's key prefix)."""

    def __init__(self, mode: str = "test", use_relu: bool = True):
        super().__init__()
        self.dense_feature_extraction = D2Trunk(mode, use_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_feature_extraction(x)


def _derivatives_at(features: torch.Tensor, index: tuple) -> dict:
    """Finite differences of features (B, C, h, w) at the points index = (b, c, i, j) (each (N,)).

    The release's 3x3 filters with zero padding, evaluated only where needed (the full-map convolutions
    over 512 channels cost more than the rest of the post-processing):
    dii = f[i-1] - 2f + f[i+1], djj likewise in j, dij = (f[i-1,j-1] - f[i-1,j+1] - f[i+1,j-1] + f[i+1,j+1]) / 4,
    di = (f[i+1] - f[i-1]) / 2, dj = (f[j+1] - f[j-1]) / 2.
    """
    b, c, i, j = index
    h, w = features.shape[-2:]
    zero = features.new_zeros(())

    def at(di: int, dj: int) -> torch.Tensor:
        ii, jj = i + di, j + dj
        inside = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
        return torch.where(inside, features[b, c, ii.clamp(0, h - 1), jj.clamp(0, w - 1)], zero)

    centre, up, down, left, right = at(0, 0), at(-1, 0), at(1, 0), at(0, -1), at(0, 1)
    return {
        "dii": up - 2 * centre + down,
        "djj": left - 2 * centre + right,
        "dij": 0.25 * (at(-1, -1) - at(-1, 1) - at(1, -1) + at(1, 1)),
        "di": 0.5 * (down - up),
        "dj": 0.5 * (right - left),
    }


def hard_detection(features: torch.Tensor, edge_threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """Boolean (B, C, h, w): channel-wise max, 3x3 spatial max and not on an edge (see module docstring)."""
    candidates = (features == features.max(dim=1, keepdim=True).values)
    candidates &= features == F.max_pool2d(features, 3, stride=1, padding=1)
    index = candidates.nonzero(as_tuple=True)
    d = _derivatives_at(features, index)
    det = d["dii"] * d["djj"] - d["dij"] * d["dij"]
    tr = d["dii"] + d["djj"]
    not_edge = (tr * tr / det <= (edge_threshold + 1) ** 2 / edge_threshold) & (det > 0)
    detected = torch.zeros_like(candidates)
    detected[tuple(t[not_edge] for t in index)] = True
    return detected


def localization_steps(features: torch.Tensor, index: tuple) -> torch.Tensor:
    """Newton step -H^-1 grad at the points index = (b, c, i, j) of features (B, C, h, w): (2, N) (step_i, step_j)."""
    d = _derivatives_at(features, index)
    det = d["dii"] * d["djj"] - d["dij"] * d["dij"]
    inv00, inv01, inv11 = d["djj"] / det, -d["dij"] / det, d["dii"] / det
    step_i = -(inv00 * d["di"] + inv01 * d["dj"])
    step_j = -(inv01 * d["di"] + inv11 * d["dj"])
    return torch.stack([step_i, step_j])


def soft_detection_scores(features: torch.Tensor, soft_local_max_size: int = 3) -> torch.Tensor:
    """Training-time soft detection: features (B, C, h, w) -> scores (B, h, w) summing to 1 per sample.

    x = relu(f); local = e / (k^2 avg_pool_k(pad(e, value=1))) with e = exp(x / max(x));
    depth = x / max_c(x); score = max_c(local * depth), normalised over h x w.
    A pixel whose channels are all 0 gives NaN, as in the release.
    """
    b = features.shape[0]
    pad = soft_local_max_size // 2
    x = F.relu(features)
    e = torch.exp(x / x.reshape(b, -1).max(dim=1).values.view(b, 1, 1, 1))
    sum_e = soft_local_max_size ** 2 * F.avg_pool2d(
        F.pad(e, [pad] * 4, mode="constant", value=1.0), soft_local_max_size, stride=1)
    local = e / sum_e
    depth = x / x.max(dim=1, keepdim=True).values
    score = (local * depth).max(dim=1).values
    return score / score.reshape(b, -1).sum(dim=1).view(b, 1, 1)


def interpolate_dense(positions: torch.Tensor, dense: torch.Tensor):
    """Bilinear features at float (i, j) positions (2, N) of dense (C, h, w), keeping only positions whose
    4 neighbours lie inside the map. Returns (descriptors (C, M), kept ids (M,))."""
    _, h, w = dense.shape
    i, j = positions[0], positions[1]
    i0, j0 = torch.floor(i).long(), torch.floor(j).long()
    i1, j1 = torch.ceil(i).long(), torch.ceil(j).long()
    valid = (i0 >= 0) & (j0 >= 0) & (i1 < h) & (j1 < w)
    ids = valid.nonzero()[:, 0]
    i, j, i0, j0, i1, j1 = i[ids], j[ids], i0[ids], j0[ids], i1[ids], j1[ids]
    di, dj = i - i0.float(), j - j0.float()
    desc = ((1 - di) * (1 - dj) * dense[:, i0, j0] + (1 - di) * dj * dense[:, i0, j1]
            + di * (1 - dj) * dense[:, i1, j0] + di * dj * dense[:, i1, j1])
    return desc, ids


@torch.no_grad()
def process_multiscale(image: torch.Tensor, trunk: D2Trunk, scales: Sequence[float] = MULTISCALE):
    """The release's `process_multiscale` on a preprocessed image (1, 3, H, W).

    Returns keypoints (N, 3) float32 columns (x, y, 1/scale) in input pixels, scores (N,), descriptors
    (N, 512) L2-normalised, levels concatenated in `scales` order, (channel, i, j) raster order within a level.
    """
    _, _, h_init, w_init = image.shape
    all_kp, all_desc, all_scores = [], [], []
    previous, banned = None, None
    for idx, scale in enumerate(scales):
        level = F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=True)
        h_level, w_level = level.shape[-2:]
        dense = trunk(level)
        h, w = dense.shape[-2:]
        if previous is not None:
            dense = dense + F.interpolate(previous, size=[h, w], mode="bilinear", align_corners=True)
        detections = hard_detection(dense)
        if banned is not None:
            banned = F.interpolate(banned.float(), size=[h, w]).bool()  # nearest
            detections = detections & ~banned
            banned = detections.any(dim=1, keepdim=True) | banned
        else:
            banned = detections.any(dim=1, keepdim=True)
        pos = detections[0].nonzero().t()  # (3, n): channel, i, j
        step_i, step_j = localization_steps(dense, (torch.zeros_like(pos[0]), pos[0], pos[1], pos[2]))
        ok = (step_i.abs() < 0.5) & (step_j.abs() < 0.5)
        pos = pos[:, ok]
        fmap_kp = pos[1:].float() + torch.stack([step_i[ok], step_j[ok]])
        desc, ids = interpolate_dense(fmap_kp, dense[0])
        if len(ids) == 0:
            # The release skips the level (`continue`) without keeping its features for the next one.
            previous = None
            continue
        pos, fmap_kp = pos[:, ids], fmap_kp[:, ids]
        kp = fmap_kp
        for _ in range(2):  # two 2x2 poolings: p -> 2p + 0.5
            kp = kp * 2 + 0.5
        kp[0] *= h_init / h_level
        kp[1] *= w_init / w_level
        kp = torch.cat([kp, torch.full((1, kp.shape[1]), 1 / scale, device=kp.device)])
        all_kp.append(kp[[1, 0, 2]].t().cpu())
        all_desc.append(F.normalize(desc, dim=0).t().cpu())
        all_scores.append((dense[0, pos[0], pos[1], pos[2]] / (idx + 1)).cpu())
        previous = dense
    if not all_kp:
        return np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros((0, trunk.num_channels), np.float32)
    return (torch.cat(all_kp).numpy(), torch.cat(all_scores).numpy(), torch.cat(all_desc).numpy())


def preprocess(image: np.ndarray, mode: str = "caffe") -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W) as `lib/utils.preprocess_image`.

    'caffe': RGB->BGR, minus the BGR mean (no scaling); 'torch': /255, ImageNet mean/std (RGB).
    The arithmetic is done in float64 and cast once to float32, as numpy does in the release.
    """
    x = np.transpose(image.astype(np.float32), (2, 0, 1))
    if mode == "caffe":
        x = x[::-1] - np.array(CAFFE_MEAN_BGR).reshape(3, 1, 1)
    elif mode == "torch":
        x = (x / np.float32(255.0) - np.array(TORCH_MEAN).reshape(3, 1, 1)) / np.array(TORCH_STD).reshape(3, 1, 1)
    else:
        raise ConfigError(f"d2net: preprocessing must be 'caffe' or 'torch', got {mode!r}")
    return np.ascontiguousarray(x, dtype=np.float32)


def fit_size(h: int, w: int, max_edge: Optional[int], max_sum_edges: Optional[int]) -> tuple[int, int]:
    """(h, w) after extract_features.py's two downscalings (max edge, then max sum of edges)."""
    f = 1.0
    if max_edge is not None and max(h, w) > max_edge:
        f = max_edge / max(h, w)
    if max_sum_edges is not None and (h + w) * f > max_sum_edges:
        f *= max_sum_edges / ((h + w) * f)
    return (max(1, int(round(h * f))), max(1, int(round(w * f)))) if f != 1.0 else (h, w)


class D2Net(Extractor):
    """D2-Net keypoints and 512-D descriptors (see module docstring).

    Config:
      variant:    'd2_tf' (default, d2_tf.pth) or 'd2_tf_no_phototourism'.
      weights:    None (official file of the variant) or a path to a compatible checkpoint (the release's
                  {'model': state_dict, 'args': ...} dict, or a bare state_dict).
      multiscale: False (scale 1 only) or True (scales 0.5, 1, 2).
      preprocessing: 'caffe' (default, as d2_tf.pth was trained) or 'torch'.
      use_relu:   ReLU after conv4_3 (True, extract_features.py's default; --no-relu sets False).
      max_edge, max_sum_edges: downscale the image first so that max(H, W) <= 1600 and H + W <= 2800
                  (the release's defaults; None disables); keypoints are mapped back to original pixels.
      max_keypoints: None (all, in the release's order) or the number of best-scoring keypoints kept.
    """

    name = "d2net"
    input_mode = "rgb"
    default_conf = {
        "variant": "d2_tf",
        "weights": None,
        "multiscale": False,
        "preprocessing": "caffe",
        "use_relu": True,
        "max_edge": 1600,
        "max_sum_edges": 2800,
        "max_keypoints": None,
    }

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        self.check_choice("variant", WEIGHTS)
        self.check_choice("preprocessing", ("caffe", "torch"))
        self.check_count("max_keypoints")
        self.net = D2NetModel("test", use_relu=bool(c["use_relu"]))
        # The release's checkpoints pickle the training arguments (argparse.Namespace) beside the weights.
        self.weights_path = load_weights(self.net, WEIGHTS[c["variant"]], c["weights"], model="D2-Net",
                                         entries=("model",), allowed_globals=[argparse.Namespace])
        self.net.to(self.device)

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        return [WEIGHTS[conf.get("variant", "d2_tf")]]

    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        nh, nw = fit_size(h, w, self.conf["max_edge"], self.conf["max_sum_edges"])
        small = image if (nh, nw) == (h, w) else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(preprocess(small, self.conf["preprocessing"]))[None].to(self.device)
        scales = MULTISCALE if self.conf["multiscale"] else (1.0,)
        kp, scores, desc = process_multiscale(x, self.net.dense_feature_extraction, scales)
        xy = kp[:, :2]
        if (nh, nw) != (h, w):
            xy = map_keypoints_to_original(xy, (w / nw, h / nh))
        if self.conf["max_keypoints"] is not None:
            order = np.argsort(-scores, kind="stable")[: self.conf["max_keypoints"]]
            xy, scores, desc = xy[order], scores[order], desc[order]
        return Features(xy, scores, desc, (w, h))


# ------------------------------------------------------------------------------------------ training
TRAIN_DEFAULTS = {"weights": None}


def train_build(conf: dict) -> D2NetModel:
    """The stride-8 VGG trunk without the final ReLU (as D2-Net trains), from scratch or from conf['weights']
    ('official' = d2_tf, or a path); the weights load in the test-time trunk."""
    net = D2NetModel("train", use_relu=False)
    path = training_weights(WEIGHTS["d2_tf"], conf["weights"])
    if path is not None:
        load_strict(net, state_dict_from_file(path, entries=("model",), allowed_globals=[argparse.Namespace]),
                    path, "D2-Net")
    return net


def train_dense(net: D2NetModel, images: torch.Tensor) -> dict:
    """images (B, 3, H, W) RGB in [0, 1] -> caffe preprocessing -> 'descriptors' (B, 512, h, w) L2-normalised,
    'features' (B, 512, h, w) raw (soft detection), stride 8."""
    x = images.flip(1) * 255.0 - images.new_tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    feats = net(x)
    return {"descriptors": l2_normalize(feats, dim=1), "features": feats, "stride": 8}


def train_save(net: D2NetModel, conf: dict, path) -> None:
    """{'model': state_dict}, the release's layout."""
    torch_save_atomic({"model": net.state_dict()}, path)
