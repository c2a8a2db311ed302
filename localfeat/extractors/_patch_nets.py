"""Patch networks: descriptors (TFeat, HardNet, SOSNet, SIFT on patches' keypoints) and local
shape/orientation estimators (AffNet, OriNet), re-implemented from the facts of the official code
(vbalnt/tfeat, DagnyT/hardnet, yuruntian/SOSNet, ducha-aiki/affnet). Private to the extractor family:
they are reached through `compose` (and `keynet`'s descriptor).

All take 32 x 32 grey patches (N, 1, 32, 32) sampled by `localfeat.patches` (values 0..255; each
network normalises its input per patch, so the range does not matter).

- TFeat (TNet): InstanceNorm -> conv7 (32) tanh -> maxpool2 -> conv6 (64) tanh -> linear 4096->128 tanh.
  The original does not normalise the output; localfeat L2-normalises it (data contract).
- HardNet: per-patch standardisation (mean, unbiased std + 1e-7); 7 conv3x3 layers without bias, each
  BatchNorm(affine=False) + ReLU (32, 32, 64/2, 64, 128/2, 128), dropout, conv8x8 (128) + BatchNorm
  (affine=False); L2 normalisation.
- SOSNet (32x32): InstanceNorm(affine=False) first, then HardNet's layers; L2 normalisation.
- AffNet (AffNetFast): HardNet-style standardisation; conv3x3 16,16,32/2,32,64/2,64 (no bias, BN
  affine=False, ReLU), dropout, conv8x8 -> 3, tanh, global average -> (a, b, c): A = [[1 + a, 0],
  [b, 1 + c]], made upright and rescaled to det 1 (the shape keeps the detector's scale).
- OriNet (OriNetFast): the same trunk, conv8x8 (padding 1) -> 2, tanh, global average -> (s, c):
  angle = atan2(s, c) (radians, added to the keypoint's orientation).
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
from torch import nn

from .. import hub
from ..ops import l2_normalize
from ..patches import extract_patches_pyramid
from ..registry import ConfigError

logger = logging.getLogger(__name__)

PATCH_SIZE = 32


def _standardise(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """(x - mean) / (std + eps) per patch (unbiased std), as HardNet's `input_norm`."""
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(1).view(-1, 1, 1, 1)
    std = flat.std(1).view(-1, 1, 1, 1) + eps
    return (x - mean) / std


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout, affine=False),
            nn.ReLU()]


class TFeatNet(nn.Module):
    """TFeat (TNet): (N, 1, 32, 32) -> (N, 128) tanh outputs (not normalised). Official parameter names."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.InstanceNorm2d(1, affine=False), nn.Conv2d(1, 32, 7), nn.Tanh(),
                                      nn.MaxPool2d(2, 2), nn.Conv2d(32, 64, 6), nn.Tanh())
        self.descr = nn.Sequential(nn.Linear(64 * 8 * 8, 128), nn.Tanh())

    def forward(self, x):
        return self.descr(self.features(x).reshape(x.shape[0], -1))


class HardNetNet(nn.Module):
    """HardNet: (N, 1, 32, 32) -> (N, 128) L2-normalised. Official parameter names (`features.*`)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(1, 32), *_conv_bn_relu(32, 32), *_conv_bn_relu(32, 64, 2), *_conv_bn_relu(64, 64),
            *_conv_bn_relu(64, 128, 2), *_conv_bn_relu(128, 128), nn.Dropout(0.3),
            nn.Conv2d(128, 128, 8, bias=False), nn.BatchNorm2d(128, affine=False))

    def forward(self, x):
        return l2_normalize(self.features(_standardise(x)).reshape(x.shape[0], -1))


class SOSNetNet(nn.Module):
    """SOSNet 32x32: (N, 1, 32, 32) -> (N, 128) L2-normalised. Official parameter names (`layers.*`)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.InstanceNorm2d(1, affine=False),
            *_conv_bn_relu(1, 32), *_conv_bn_relu(32, 32), *_conv_bn_relu(32, 64, 2), *_conv_bn_relu(64, 64),
            *_conv_bn_relu(64, 128, 2), *_conv_bn_relu(128, 128), nn.Dropout(0.1),
            nn.Conv2d(128, 128, 8, bias=False), nn.BatchNorm2d(128, affine=False))

    def forward(self, x):
        return l2_normalize(self.layers(x).reshape(x.shape[0], -1))


def _shape_trunk() -> list:
    return [*_conv_bn_relu(1, 16), *_conv_bn_relu(16, 16), *_conv_bn_relu(16, 32, 2), *_conv_bn_relu(32, 32),
            *_conv_bn_relu(32, 64, 2), *_conv_bn_relu(64, 64), nn.Dropout(0.25)]


class AffNetNet(nn.Module):
    """AffNet (AffNetFast): (N, 1, 32, 32) -> (N, 2, 2) affine shapes with det 1, upright
    (upper-right entry 0, positive diagonal)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*_shape_trunk(), nn.Conv2d(64, 3, 8, bias=True), nn.Tanh(),
                                      nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        abc = self.features(_standardise(x, 1e-6)).reshape(-1, 3)
        return affine_from_abc(abc)


def affine_from_abc(abc: torch.Tensor) -> torch.Tensor:
    """(N, 3) network outputs (a, b, c) -> (N, 2, 2) [[1 + a, 0], [b, 1 + c]] / sqrt(det)."""
    a11, a21, a22 = 1 + abc[:, 0], abc[:, 1], 1 + abc[:, 2]
    A = torch.stack([torch.stack([a11, torch.zeros_like(a11)], -1), torch.stack([a21, a22], -1)], -2)
    det = (a11 * a22).abs().clamp(min=1e-8)
    return A / det.sqrt()[:, None, None]


class OriNetNet(nn.Module):
    """OriNet (OriNetFast, 32 x 32): (N, 1, 32, 32) -> (N,) angles, radians."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*_shape_trunk(), nn.Conv2d(64, 2, 8, padding=1, bias=True), nn.Tanh(),
                                      nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        sc = self.features(_standardise(x, 1e-6)).reshape(-1, 2)
        return torch.atan2(sc[:, 0] + 1e-8, sc[:, 1] + 1e-8)


# Official files of the patch networks, by network name.
# TFeat: vbalnt/tfeat pretrained-models/ at commit 9434ffa (MIT); sha256 of the official file.
# HardNet (DagnyT/hardnet, MIT), SOSNet (scape-research/SOSNet, formerly yuruntian/SOSNet; no licence file
# seen), AffNet / OriNet (ducha-aiki/affnet, MIT): the URLs kornia downloads from. No sha256 is published and
# the files were not available offline to hash: not pinned (loaded with a warning).
WEIGHTS = {
    "tfeat": hub.WeightSpec(
        "tfeat-liberty.params",
        ("https://github.com/vbalnt/tfeat/raw/9434ffaade966efee9ee89304f59b6c224d3b039/pretrained-models/tfeat-liberty.params",
         "https://github.com/vbalnt/tfeat/raw/master/pretrained-models/tfeat-liberty.params"),
        "1f2e9516b03c45876161da006ce8047e0a66ef08cc91d3fbf96a75f1a80f445a", "MIT"),
    "hardnet": hub.WeightSpec(
        "checkpoint_liberty_with_aug.pth",
        ("https://github.com/DagnyT/hardnet/raw/master/pretrained/train_liberty_with_aug/checkpoint_liberty_with_aug.pth",),
        None, "MIT"),
    "sosnet": hub.WeightSpec(
        "sosnet-32x32-liberty.pth",
        ("https://github.com/scape-research/SOSNet/raw/master/sosnet-weights/sosnet-32x32-liberty.pth",
         "https://github.com/yuruntian/SOSNet/raw/master/sosnet-weights/sosnet-32x32-liberty.pth"),
        None, "unknown (no licence file in the repository)"),
    "affnet": hub.WeightSpec(
        "AffNet.pth", ("https://github.com/ducha-aiki/affnet/raw/master/pretrained/AffNet.pth",), None, "MIT"),
    "orinet": hub.WeightSpec(
        "OriNet.pth", ("https://github.com/ducha-aiki/affnet/raw/master/pretrained/OriNet.pth",), None, "MIT"),
}
# name -> (network class, descriptor dimension or None)
NETWORKS = {
    "tfeat": (TFeatNet, 128),
    "hardnet": (HardNetNet, 128),
    "sosnet": (SOSNetNet, 128),
    "affnet": (AffNetNet, None),
    "orinet": (OriNetNet, None),
}
DESCRIPTORS = ("tfeat", "hardnet", "sosnet", "sift")


def descriptor_weight_specs(name: Optional[str]) -> list:
    """The `hub.WeightSpec`s needed by patch network `name` ([] for SIFT or None)."""
    if name is None or name == "sift":
        return []
    if name not in NETWORKS:
        raise ConfigError(f"unknown patch network {name!r}; available: {sorted(NETWORKS) + ['sift']}")
    return [WEIGHTS[name]]


def load_network(name: str, weights=None, device="cpu") -> nn.Module:
    """The patch network `name` in eval mode on `device` with its official weights (or `weights`=PATH)."""
    if name not in NETWORKS:
        raise ConfigError(f"unknown patch network {name!r}; available: {sorted(NETWORKS)}")
    cls, _ = NETWORKS[name]
    net = cls()
    path = hub.find_weights(WEIGHTS[name], override=weights)
    ckpt = hub.load_torch_checkpoint(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    try:
        net.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{name}: {path} is not a {cls.__name__} state dict: {exc}") from exc
    return net.eval().to(device)


class PatchDescriptor:
    """Describe keypoints of a grey image with a patch network (or SIFT's descriptor).

    `describe(image, keypoints, diameters, orientations, affine)`: image uint8 (H, W); keypoints (N, 2)
    pixels; diameters (N,) support in pixels; orientations (N,) radians or None; affine (N, 2, 2) or
    None. Returns float32 (N, D) L2-normalised.
    """

    def __init__(self, name: str, weights=None, device="cpu", batch_size: int = 1024):
        if name not in DESCRIPTORS:
            raise ConfigError(f"unknown patch descriptor {name!r}; available: {list(DESCRIPTORS)}")
        self.name, self.device, self.batch_size = name, torch.device(device), batch_size
        self.net = None if name == "sift" else load_network(name, weights, self.device)
        self.dim = 128

    @torch.no_grad()
    def run(self, patches: torch.Tensor) -> torch.Tensor:
        """Descriptors (N, D) of patches (N, 1, 32, 32), L2-normalised, on the CPU."""
        out = [self.net(patches[i:i + self.batch_size].to(self.device)).float().cpu()
               for i in range(0, len(patches), self.batch_size)]
        return l2_normalize(torch.cat(out) if out else torch.zeros((0, self.dim)))

    def describe(self, image: np.ndarray, keypoints, diameters, orientations=None, affine=None) -> np.ndarray:
        n = len(keypoints)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.name == "sift":
            return sift_descriptors(image, keypoints, diameters, orientations)
        patches = extract_patches_pyramid(image, keypoints, diameters, PATCH_SIZE,
                                          0.0 if orientations is None else orientations, affine, self.device)
        return self.run(patches).numpy().astype(np.float32)


def sift_descriptors(image: np.ndarray, keypoints, diameters, orientations=None) -> np.ndarray:
    """OpenCV SIFT descriptors (N, 128) float32 L2-normalised at given keypoints.

    diameters are the support (pixels); OpenCV's keypoint `size` is support / 6 (its descriptor covers
    about 6 x size across, the same support convention as `compose`'s magnification 6).
    """
    import cv2

    kp = np.asarray(keypoints, np.float64)
    size = np.broadcast_to(np.asarray(diameters, np.float64), (len(kp),)) / 6.0
    ang = np.zeros(len(kp)) if orientations is None else np.rad2deg(np.asarray(orientations, np.float64)) % 360
    cv_kp = [cv2.KeyPoint(float(x), float(y), float(max(s, 1e-3)), float(a)) for (x, y), s, a in zip(kp, size, ang)]
    sift = cv2.SIFT_create()
    cv_kp2, desc = sift.compute(np.ascontiguousarray(image), cv_kp)
    if desc is None or len(cv_kp2) != len(kp):
        raise RuntimeError(f"OpenCV SIFT dropped keypoints ({len(kp)} in, {len(cv_kp2)} out)")
    desc = desc.astype(np.float32)
    return desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)


def load_patch_descriptor(name: str, weights=None, device="cpu") -> PatchDescriptor:
    return PatchDescriptor(name, weights=weights, device=device)


class ShapeEstimator:
    """AffNet affine shapes (N, 2, 2) and OriNet orientations (N,) of keypoints of a grey image."""

    def __init__(self, name: str, weights=None, device="cpu"):
        if name not in ("affnet", "orinet"):
            raise ConfigError(f"unknown shape estimator {name!r}; use 'affnet' or 'orinet'")
        self.name, self.device = name, torch.device(device)
        self.net = load_network(name, weights, self.device)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, keypoints, diameters, orientations=None, affine=None) -> np.ndarray:
        if len(keypoints) == 0:
            return np.zeros((0, 2, 2) if self.name == "affnet" else (0,), np.float32)
        patches = extract_patches_pyramid(image, keypoints, diameters, PATCH_SIZE,
                                          0.0 if orientations is None else orientations, affine, self.device)
        out = [self.net(patches[i:i + 1024].to(self.device)).float().cpu() for i in range(0, len(patches), 1024)]
        return torch.cat(out).numpy()
