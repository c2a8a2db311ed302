"""Multi-level attention features: ResNet features from three depths, each encoded to 64-D, one attention map
per depth; keypoints from the combined attention, descriptors the three normalised 64-D parts concatenated.

Network (`MultiLevelAttentionNet`), for the depths `levels` (default layer1 / layer2 / layer3 = early, middle,
deep; strides 4, 8, 16):
  encoder_l:   1x1 conv C_l -> 64                           (optionally pre-trained as an auto-encoder with
  decoder_l:   1x1 conv 64 -> C_l                            decoder_l reconstructing the backbone features)
  attention_l: 1x1 conv C_l -> 512, batch norm, ReLU, 1x1 conv 512 -> 1, softplus
Dense outputs at input resolution (`dense`): each level's maps are read at every input pixel x from map
coordinate x / stride (a conv cell j of stride s is centred on input pixel s*j for these ResNets):
  attention = mean over levels of attention_l (>= 0);  scores = attention / (1 + attention) in [0, 1);
  descriptors = concat_l(L2-normalise(encoder_l)) / sqrt(n_levels)    (B, 64 * n_levels, H, W), unit norm.
Extraction: NMS (window 2*nms_radius+1) on the combined attention at input resolution, threshold, top-k;
descriptors sampled (bilinear) from the encoded maps at the keypoints, normalised per level, concatenated
and L2-normalised. scores = combined attention.

Weights: none released; `weights` takes a file written by the trainer (`localfeat.train.multilevel_attention`)
or any state_dict of this network; `backbone_weights` a torchvision ImageNet file (or 'imagenet').
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import hub
from ..io.atomic import torch_save_atomic
from ..ops import (IMAGENET_MEAN, IMAGENET_STD, image_to_tensor, iterative_max_pool_nms, l2_normalize,
                   normalize_images, pixel_to_grid, sample_dense, top_k_indices)
from ..registry import ConfigError
from ..types import Features
from ._resnet import LAYER_NAMES, LAYER_STRIDES, ResNet, truncate
from .base import Extractor
from .delf import WEIGHTS as IMAGENET_WEIGHTS
from .delf import backbone_weight_specs, load_backbone_from_conf

logger = logging.getLogger(__name__)


class LevelAttention(nn.Module):
    """1x1 conv C -> hidden, batch norm, ReLU, 1x1 conv hidden -> 1, softplus: (B, C, h, w) -> (B, 1, h, w)."""

    def __init__(self, in_channels: int, hidden: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.conv2(F.relu(self.bn(self.conv1(x)))))


def read_at_pixels(maps: torch.Tensor, stride: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear reading of maps (B, C, h, w) whose cell j is centred on input pixel stride*j, at every input
    pixel of an (H, W) image: (B, C, H, W) (border values repeated outside the cell centres)."""
    b, _, h, w = maps.shape
    H, W = out_hw
    xs = (torch.arange(W, device=maps.device, dtype=maps.dtype) / stride + 0.5) / w * 2 - 1
    ys = (torch.arange(H, device=maps.device, dtype=maps.dtype) / stride + 0.5) / h * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None].expand(b, H, W, 2)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)


class MultiLevelAttentionNet(nn.Module):
    """See the module docstring. forward(x) -> {'features': [backbone maps], 'encoded': [(B, 64, h_l, w_l)],
    'attention': [(B, 1, h_l, w_l)], 'strides': [s_l]}; x ImageNet-normalised RGB (B, 3, H, W)."""

    def __init__(self, arch: str = "resnet50", levels: Sequence[str] = ("layer1", "layer2", "layer3"),
                 dim: int = 64, hidden: int = 512, frozen_bn: bool = True):
        super().__init__()
        bad = [lv for lv in levels if lv not in LAYER_NAMES[1:]]
        if len(levels) != 3 or bad:
            raise ConfigError(f"multilevel_attention: levels must be three of {list(LAYER_NAMES[1:])}, got {levels}")
        self.levels = list(levels)
        deepest = max(self.levels, key=LAYER_NAMES.index)
        self.backbone = truncate(ResNet(arch, num_classes=None, frozen_bn=frozen_bn), deepest)
        chans = [self.backbone.channels[lv] for lv in self.levels]
        self.encoders = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in chans)
        self.decoders = nn.ModuleList(nn.Conv2d(dim, c, 1) for c in chans)
        self.attentions = nn.ModuleList(LevelAttention(c, hidden) for c in chans)
        self.strides = [LAYER_STRIDES[lv] for lv in self.levels]

    def forward(self, x: torch.Tensor) -> dict:
        feats = self.backbone(x, outputs=tuple(self.levels))
        fs = [feats[lv] for lv in self.levels]
        return {"features": fs, "encoded": [e(f) for e, f in zip(self.encoders, fs)],
                "attention": [a(f) for a, f in zip(self.attentions, fs)], "strides": self.strides}

    def reconstruction_loss(self, out: dict) -> torch.Tensor:
        """Auto-encoder pre-training: mean over levels of MSE(decoder(encoder(f)), f), backbone features detached."""
        return torch.stack([F.mse_loss(d(e), f.detach()) for d, e, f in
                            zip(self.decoders, out["encoded"], out["features"])]).mean()

    def dense(self, x: torch.Tensor) -> dict:
        """Dense outputs at input resolution (module docstring): 'attention' (B, 1, H, W), 'scores' (B, 1, H, W),
        'descriptors' (B, 64 * 3, H, W), 'maps' (three (B, 1, H, W) attention maps), 'stride' 1."""
        out = self.forward(x)
        hw = tuple(x.shape[-2:])
        maps = [read_at_pixels(a, s, hw) for a, s in zip(out["attention"], out["strides"])]
        att = torch.stack(maps).mean(0)
        n = len(maps)
        desc = torch.cat([l2_normalize(read_at_pixels(e, s, hw), dim=1)
                          for e, s in zip(out["encoded"], out["strides"])], 1) / math.sqrt(n)
        return {"attention": att, "scores": att / (1 + att), "descriptors": desc, "maps": maps, "stride": 1}


class MultiLevelAttention(Extractor):
    """Config: arch (ResNet variant), levels (three ResNet layers), weights (trained file or None),
    backbone_weights (torchvision ImageNet file, 'imagenet' or None), max_keypoints (None = no limit),
    nms_radius (pixels), score_threshold (minimum combined attention; None = none)."""

    name = "multilevel_attention"
    input_mode = "rgb"
    default_conf = {
        "arch": "resnet50",
        "levels": ["layer1", "layer2", "layer3"],
        "weights": None,
        "backbone_weights": None,
        "max_keypoints": 2048,
        "nms_radius": 4,
        "score_threshold": None,
    }

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        return backbone_weight_specs(conf)

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        self.check_choice("arch", IMAGENET_WEIGHTS)
        self.check_count("max_keypoints")
        self.net = MultiLevelAttentionNet(c["arch"], tuple(c["levels"]))
        if c["weights"] is not None:
            sd = hub.load_torch_checkpoint(c["weights"])
            if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
                sd = sd["model"]
            try:
                self.net.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise ValueError(f"{c['weights']} does not fit multilevel_attention arch={c['arch']} "
                                 f"levels={c['levels']}: {str(exc)[:300]}") from exc
        elif c["backbone_weights"] is not None:
            load_backbone_from_conf(self.net, c)
        else:
            logger.warning("multilevel_attention: no weights given: the network is randomly initialised")
        self.net = self.net.eval().to(self.device)

    @torch.no_grad()
    def dense_maps(self, image: np.ndarray) -> dict:
        """The three attention maps and their combination (H, W), for `localfeat view --heatmaps`."""
        x = image_to_tensor(np.asarray(image), self.device, IMAGENET_MEAN, IMAGENET_STD)
        d = self.net.dense(x)
        out = {f"attention {lv}": m[0, 0].cpu().numpy() for lv, m in zip(self.net.levels, d["maps"])}
        out["combined"] = d["attention"][0, 0].cpu().numpy()
        return out

    @torch.no_grad()
    def _extract(self, image: np.ndarray) -> Features:
        c = self.conf
        h, w = image.shape[:2]
        x = image_to_tensor(image, self.device, IMAGENET_MEAN, IMAGENET_STD)
        out = self.net(x)
        att = torch.stack([read_at_pixels(a, s, (h, w)) for a, s in zip(out["attention"], out["strides"])]).mean(0)
        peaks = iterative_max_pool_nms(att, int(c["nms_radius"]))[0, 0]
        mask = peaks > 0
        # beyond the finest map's last cell centre the maps are constant (border): no peaks there
        e0, s0 = out["encoded"][0], out["strides"][0]
        mask[s0 * (e0.shape[-2] - 1) + 1:] = False
        mask[:, s0 * (e0.shape[-1] - 1) + 1:] = False
        if c["score_threshold"] is not None:
            mask &= att[0, 0] >= float(c["score_threshold"])
        ys, xs = mask.nonzero(as_tuple=True)
        sc = att[0, 0, ys, xs]
        keep = top_k_indices(sc, c["max_keypoints"])
        kp = torch.stack([xs[keep], ys[keep]], -1).float()
        parts = []
        for e, s in zip(out["encoded"], out["strides"]):
            grid = pixel_to_grid(kp[None] / s, (e.shape[-1], e.shape[-2]))
            parts.append(l2_normalize(sample_dense(e, grid)[0], dim=1))
        desc = l2_normalize(torch.cat(parts, 1), dim=1)
        return Features(kp.cpu().numpy(), sc[keep].float().cpu().numpy(), desc.float().cpu().numpy(), (w, h))


# ------------------------------------------------------------------------------------------ training
# `localfeat.train.multilevel_attention` holds the CPU preset and the auto-encoder pre-training.
TRAIN_DEFAULTS = {"arch": "resnet18", "levels": ["layer1", "layer2", "layer3"], "weights": None,
                  "backbone_weights": None}


def train_build(conf: dict) -> MultiLevelAttentionNet:
    """The network of conf['arch'] / conf['levels'], from conf['weights'] (a state_dict file), else with the
    backbone of conf['backbone_weights'] (a torchvision ImageNet file or 'imagenet'), else from scratch."""
    net = MultiLevelAttentionNet(conf["arch"], tuple(conf["levels"]))
    if conf["weights"] is not None:
        net.load_state_dict(hub.load_torch_checkpoint(conf["weights"]), strict=True)
    elif conf["backbone_weights"] is not None:
        load_backbone_from_conf(net, conf)
    return net


def train_dense(net: MultiLevelAttentionNet, images: torch.Tensor) -> dict:
    """images (B, 3, H, W) RGB in [0, 1] -> 'descriptors' (B, 192, H, W), 'scores' (B, 1, H, W)
    = a / (1 + a) of the combined attention a, stride 1."""
    d = net.dense(normalize_images(images))
    return {"descriptors": d["descriptors"], "scores": d["scores"], "stride": 1}


def train_save(net: MultiLevelAttentionNet, conf: dict, path) -> None:
    """The state_dict (the file `load_extractor('multilevel_attention', weights=path)` loads), atomically."""
    torch_save_atomic(net.state_dict(), path)
