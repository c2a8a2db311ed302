"""DeLF (Noh et al., ICCV 2017): attention-selected local features on ResNet conv4 features.

Network: a ResNet (torchvision keys, see `_resnet`) up to `layer3` (= TF-slim's block3 / "conv4", stride 16,
1024 channels for ResNet-50), and the attention head 1x1 conv 1024->512, ReLU, 1x1 conv 512->1, softplus.
Extraction (as DeLF's `ExtractKeypointDescriptor`):
  for each pyramid scale s (default 0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0): resize the image to
  (round(H*s), round(W*s)) (bilinear), run the network; every conv4 cell (x, y) is a receptive-field box
  centred at (16x, 16y) in the resized image with side `receptive_field` - 1 (DeLF: rf 291, stride 16,
  padding 145), mapped back to the original image (/ s); cells whose attention >= `score_threshold` are
  candidates; then greedy NMS of the boxes by IoU (`iou_threshold`) keeps at most `max_keypoints`.
Output: keypoints = box centres (original pixels, pixel-centre origin: (16x + 0.5) / s - 0.5, DeLF writes
16x / s), scores = attention, scales = box side in original pixels ((rf - 1) / s; the pyramid level is
(rf - 1) / scale), descriptors = conv4 features L2-normalised, then (when `pca` is set) PCA(-whitened) to
`pca_dim` and L2-normalised again.

Weights: DeLF released TF-slim checkpoints only; none is available offline here. `weights` takes a checkpoint
written by `localfeat.train.delf` (backbone + attention); `backbone_weights` takes torchvision's ImageNet
file (path, or 'imagenet' to look it up in the weights table). Without weights the network is randomly
initialised (it runs, but its keypoints and descriptors are meaningless; use score_threshold=None then).
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import hub
from ..ops import IMAGENET_MEAN, IMAGENET_STD, box_iou_nms, image_to_tensor, l2_normalize
from ..registry import ConfigError
from ..types import Features
from ._resnet import ResNet, truncate
from .base import Extractor

logger = logging.getLogger(__name__)

DELF_SCALES = (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
CHECKPOINT_FORMAT = "localfeat-delf-1"
# torchvision ImageNet ResNets (BSD-3-Clause code; ImageNet-trained), by `arch`, loaded unchanged into the
# backbone with backbone_weights='imagenet'. The file names carry the first 8 hex digits of their sha256
# (torchvision's check_hash convention); the full digests were not available offline: not pinned. DeLF itself
# released TF-slim checkpoints only (no PyTorch file to list).
WEIGHTS = {
    arch: hub.WeightSpec(f"{arch}-{tag}.pth", (f"https://download.pytorch.org/models/{arch}-{tag}.pth",), None,
                         "BSD-3-Clause")
    for arch, tag in (("resnet18", "f37072fd"), ("resnet34", "b627a593"), ("resnet50", "0676ba61"),
                      ("resnet101", "63fe2227"), ("resnet152", "394f9c45"))
}


class AttentionHead(nn.Module):
    """DeLF's attention: 1x1 conv C->512, ReLU, 1x1 conv 512->1, softplus. (B, C, h, w) -> (B, 1, h, w) >= 0."""

    def __init__(self, in_channels: int = 1024, hidden: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.conv2(F.relu(self.conv1(features))))


class DelfNet(nn.Module):
    """Backbone up to `layer3` + attention head (+ optional classifier for the keypoint training stage).

    forward(x) -> {'features': (B, C, h, w) conv4, 'attention': (B, 1, h, w), 'logits': (B, num_classes)
    when a classifier exists}. logits = classifier(mean over cells of attention * L2-normalised features)
    (DeLF's attention-weighted pooling).
    """

    def __init__(self, arch: str = "resnet50", num_classes: Optional[int] = None, frozen_bn: bool = True):
        super().__init__()
        self.backbone = truncate(ResNet(arch, num_classes=None, frozen_bn=frozen_bn), "layer3")
        channels = self.backbone.channels["layer3"]
        self.attention = AttentionHead(channels)
        self.classifier = nn.Linear(channels, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor) -> dict:
        feats = self.backbone(x, outputs=("layer3",))["layer3"]
        att = self.attention(feats)
        out = {"features": feats, "attention": att}
        if self.classifier is not None:
            pooled = (att * l2_normalize(feats, dim=1)).mean(dim=(2, 3))
            out["logits"] = self.classifier(pooled)
        return out


def receptive_boxes(h: int, w: int, scale: float, receptive_field: int, stride: int, padding: int) -> np.ndarray:
    """Boxes (h*w, 4) as (x0, y0, x1, y1) in ORIGINAL-image pixels of the conv cells of an (h, w) map
    computed on the image resized by `scale`, row-major (index = y * w + x). DeLF's boxes, divided by scale."""
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    x0 = xs.reshape(-1) * stride - padding
    y0 = ys.reshape(-1) * stride - padding
    side = receptive_field - 1
    return np.stack([x0, y0, x0 + side, y0 + side], 1) / scale


def load_delf_weights(net: DelfNet, path) -> None:
    """Load a localfeat DeLF checkpoint ({'format', 'arch', 'model': state_dict}) into `net` (backbone and
    attention must be complete; a classifier in the file is ignored when `net` has none)."""
    ck = hub.load_torch_checkpoint(path)
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a localfeat DeLF checkpoint (expected format {CHECKPOINT_FORMAT}; "
                         "torchvision ImageNet files go to backbone_weights=)")
    sd = {k: v for k, v in ck["model"].items() if net.classifier is not None or not k.startswith("classifier.")}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise ValueError(f"{path}: DeLF checkpoint does not fit arch {ck.get('arch')!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def load_backbone_weights(net: DelfNet, path) -> None:
    """Load torchvision ImageNet weights (a ResNet state_dict) into the backbone; layer4/fc keys are ignored."""
    sd = hub.load_torch_checkpoint(path)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    own = net.backbone.state_dict()
    kept = {k: v for k, v in sd.items() if k in own}
    missing = [k for k in own if k not in kept]
    if missing:
        raise ValueError(f"{path} is not a torchvision ResNet state_dict of this arch: missing {missing[:5]}")
    net.backbone.load_state_dict(kept, strict=True)


def backbone_weight_specs(conf: dict) -> list:
    """The torchvision ImageNet file named by `backbone_weights='imagenet'`, else nothing (any ResNet model)."""
    if conf.get("backbone_weights") == "imagenet":
        return [WEIGHTS[conf.get("arch", "resnet50")]]
    return []


def load_backbone_from_conf(net, conf: dict) -> None:
    """Load `conf['backbone_weights']` (a path, or 'imagenet' = the official torchvision file) into net.backbone."""
    path = conf["backbone_weights"]
    if path == "imagenet":
        path = hub.find_weights(backbone_weight_specs(conf)[0])
    load_backbone_weights(net, path)


class DELF(Extractor):
    """DeLF keypoints and descriptors (see the module docstring).

    Config:
      arch: ResNet variant ('resnet50' as DeLF); weights: localfeat DeLF checkpoint path or None;
      backbone_weights: None, a torchvision ImageNet file, or 'imagenet' (looked up by file name);
      scales: pyramid scales; score_threshold: minimum attention (None = keep all; DeLF's config: 100);
      iou_threshold: box NMS (1.0 = none); max_keypoints: top-k (None = no limit);
      receptive_field/rf_stride/rf_padding: DeLF's 291/16/145; max_level_size: skip pyramid levels whose
      longer side would exceed N pixels (None = keep all);
      pca: None or a PCA whitening .npz (`localfeat.whitening`); pca_dim: output dim (<= the file's);
      pca_whiten: divide by sqrt(variance).
    """

    name = "delf"
    input_mode = "rgb"
    default_conf = {
        "arch": "resnet50",
        "weights": None,
        "backbone_weights": None,
        "scales": list(DELF_SCALES),
        "score_threshold": 100.0,
        "iou_threshold": 0.92,
        "max_keypoints": 1000,
        "receptive_field": 291,
        "rf_stride": 16,
        "rf_padding": 145,
        "max_level_size": None,
        "pca": None,
        "pca_dim": 40,
        "pca_whiten": True,
    }

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        return backbone_weight_specs(conf)

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        if not c["scales"] or any(float(s) <= 0 for s in c["scales"]):
            raise ConfigError(f"delf: scales must be a non-empty list of positive numbers, got {c['scales']!r}")
        self.check_count("max_keypoints")
        self.check_choice("arch", WEIGHTS)
        self.net = DelfNet(c["arch"])
        if c["weights"] is not None:
            load_delf_weights(self.net, c["weights"])
        elif c["backbone_weights"] is not None:
            load_backbone_from_conf(self.net, c)
        if c["weights"] is None:
            logger.warning("delf: no DeLF weights given (weights=None): the attention head is untrained%s",
                           "" if c["backbone_weights"] else " and so is the backbone")
        self.net = self.net.eval().to(self.device)
        self.pca = None
        if c["pca"] is not None:
            from ..whitening import PCAWhitening

            self.pca = PCAWhitening.load(c["pca"])
            if not 1 <= int(c["pca_dim"]) <= self.pca.dim:
                raise ConfigError(f"delf: pca_dim {c['pca_dim']} must be in 1..{self.pca.dim} for {c['pca']}")

    @torch.no_grad()
    def _levels(self, image: np.ndarray):
        """Yields (scale, features (C, h, w), attention (h, w)) per pyramid level."""
        x = image_to_tensor(image, self.device, IMAGENET_MEAN, IMAGENET_STD)
        h, w = image.shape[:2]
        for s in self.conf["scales"]:
            s = float(s)
            size = (max(1, round(h * s)), max(1, round(w * s)))
            if self.conf["max_level_size"] is not None and max(size) > self.conf["max_level_size"]:
                continue
            xs = x if size == (h, w) else F.interpolate(x, size, mode="bilinear", align_corners=False)
            out = self.net(xs)
            yield s, out["features"][0], out["attention"][0, 0]

    def dense_maps(self, image: np.ndarray) -> dict:
        """Attention map (h, w) at each pyramid scale <= 1 (for `localfeat view --heatmaps`)."""
        img = np.asarray(image)
        return {f"attention s={s:g}": a.cpu().numpy() for s, _, a in self._levels(img) if s <= 1.0}

    def raw_features(self, image: np.ndarray) -> Features:
        """Keypoints with the conv4 descriptors L2-normalised, before PCA (what PCA is fit on)."""
        c = self.conf
        h, w = image.shape[:2]
        boxes, scores, scales, descs = [], [], [], []
        thr = c["score_threshold"]
        for s, feats, att in self._levels(image):
            fh, fw = att.shape
            a = att.reshape(-1)
            sel = torch.arange(a.numel(), device=a.device) if thr is None else (a >= float(thr)).nonzero()[:, 0]
            if sel.numel() == 0:
                continue
            b = receptive_boxes(fh, fw, s, int(c["receptive_field"]), int(c["rf_stride"]), int(c["rf_padding"]))
            sel_np = sel.cpu().numpy()
            boxes.append(b[sel_np])
            scores.append(a[sel].float().cpu().numpy())
            scales.append(np.full(len(sel_np), (int(c["receptive_field"]) - 1) / s, np.float32))
            d = feats.reshape(feats.shape[0], -1)[:, sel].t()
            descs.append(l2_normalize(d.float(), dim=1).cpu().numpy())
        dim = self.net.backbone.channels["layer3"]
        if not boxes:
            if thr is not None:
                logger.warning("delf: no attention value reached score_threshold=%s; lower it (None keeps all)", thr)
            return Features(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros((0, dim), np.float32),
                            (w, h), scales=np.zeros(0, np.float32))
        boxes, scores = np.concatenate(boxes), np.concatenate(scores)
        scales, descs = np.concatenate(scales), np.concatenate(descs)
        keep = box_iou_nms(boxes, scores, float(c["iou_threshold"]), c["max_keypoints"])
        b = boxes[keep]
        level = (int(c["receptive_field"]) - 1) / scales[keep]
        # DeLF's centre is (x0 + x1) / 2 = 16x / s; in pixel-centre coordinates it is (16x + 0.5) / s - 0.5.
        kpts = (b[:, :2] + b[:, 2:]) / 2 + 0.5 / level[:, None] - 0.5
        return Features(kpts.astype(np.float32), scores[keep], descs[keep], (w, h), scales=scales[keep])

    def boxes_of(self, features: Features) -> np.ndarray:
        """The receptive-field boxes (N, 4) (x0, y0, x1, y1), original pixels, of DeLF features."""
        half = features.scales.astype(np.float64)[:, None] / 2
        level = (int(self.conf["receptive_field"]) - 1) / features.scales.astype(np.float64)[:, None]
        centre = features.keypoints.astype(np.float64) + 0.5 - 0.5 / level
        return np.concatenate([centre - half, centre + half], 1)

    def _extract(self, image: np.ndarray) -> Features:
        feats = self.raw_features(image)
        if self.pca is not None:
            d = int(self.conf["pca_dim"])
            desc = self.pca.apply(feats.descriptors, whiten=bool(self.conf["pca_whiten"]), normalize=False)[:, :d]
            desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
            feats = Features(feats.keypoints, feats.scores, desc.astype(np.float32), feats.image_size,
                             scales=feats.scales)
        return feats


def fit_pca(extractor: DELF, images, output, dim: int = 40, max_per_image: Optional[int] = None):
    """Fit DeLF's PCA whitening on the raw (L2-normalised conv4) descriptors of `images` (paths or arrays)
    with `extractor` (its own `pca` is ignored) and save it to `output` (.npz). Returns the `PCAWhitening`."""
    from tqdm import tqdm

    from ..io.images import as_image_array, resize_max
    from ..whitening import PCAWhitening

    rng = np.random.default_rng(0)
    chunks = []
    for image in tqdm(list(images), desc="delf pca", disable=None):
        img, _ = resize_max(as_image_array(image, "rgb"), extractor.conf["resize_max"])
        d = extractor.raw_features(img).descriptors
        if max_per_image is not None and len(d) > max_per_image:
            d = d[rng.choice(len(d), max_per_image, replace=False)]
        chunks.append(d)
    data = np.concatenate(chunks) if chunks else np.zeros((0, 0))
    pca = PCAWhitening.fit(data, dim=dim)
    pca.save(output)
    logger.info("delf: PCA %d -> %d fit on %d descriptors, saved to %s", pca.input_dim, dim, len(data), output)
    return pca
