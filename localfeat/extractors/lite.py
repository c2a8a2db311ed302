"""lite: localfeat's own small learned extractor, trained by `localfeat train` (presets `lite_zoom`, then
`lite_zoom_reproj`), shipped in the package (weights under the project's licence, no lookup or download) and the
default learned model.

Network (`LiteNet`, 0.38 M parameters as shipped, grayscale input). No layer runs at full resolution: on a CPU a
convolution over a few channels at full resolution costs more than the whole 1/8 trunk (memory bound).

    gray (B, 1, H, W) in [0, 1] -> InstanceNorm -> x
    block2   3x3 s2 conv           8 ch  at 1/2
    block4   3x3 s2, 3x3          32 ch  at 1/4   -> f4
    block8   3x3 s2, 3x3          64 ch  at 1/8   -> f8
    block16  3x3 s2, 3x3         128 ch  at 1/16  -> f16
    (each: Conv2d without bias, BatchNorm2d, ReLU; BatchNorm is folded into the conv for inference)
    coarse descriptors  g8 = desc8(f8) + up(desc16(f16)) [+ context8(f8)]   (B, D, H/8, W/8), 1x1 convs, D = 64
                        from scratch (the shipped weights: 96, widened by `LiteNet.widen`); context8 (optional): 3x3
    descriptor at pixel p = normalise(desc4(f4 sampled at p) + g8 sampled at p [+ context4(f4) sampled at p]
                        [+ fine2(f2) sampled at p]) (bilinear, border-clamped); context4 (optional): a 3x3 conv
                        (32 -> D) over the 1/4 features; fine2 (optional): a 3x3 conv (8 -> D) over the 1/2 features
    score head at 1/4   h = head4([unshuffle4(x), f4]) + up(head8(g8))   head4: 3x3 (16 + 32 -> 32), head8: 1x1
                          (D -> 32); unshuffle4 = the 16 pixels of each 4x4 cell as channels
    scores = sigmoid(shuffle4(head_out(h)))    head_out: ReLU, 1x1 (32 -> 32), ReLU, 1x1 (32 -> 16);
                          shuffle4 = pixel shuffle: each 1/4 cell predicts its 16 pixels. head4's 3x3 sees the
                          neighbouring cells' pixels, so the map is continuous across cell borders (with 1x1
                          layers only, peaks piled up on the cell borders: 40% of them at x = 3 mod 4)

desc4, context4 and fine2 are linear, so sampling f4 and then applying desc4 equals sampling desc4(f4), and
context4(f4) (fine2(f2)) at p is the layer's weights applied to f4 (f2) sampled at p and its 8 neighbours one map
pixel away (zero outside the map, as the conv's padding): the extractor samples the 32-channel f4 and the 8-channel
f2 at the keypoints only and never builds a
descriptor map finer than 1/8; training builds the full-resolution map (`dense_descriptors`), equal to the
extractor's descriptors at every pixel.

Keypoints: ALIKE's DKD on the score map (`_dkd.detect_keypoints`: iterative NMS of radius `nms_radius`,
border, the `max_keypoints` best or the peaks above `detection_threshold`, soft-argmax sub-pixel
refinement). The input is replicate-padded to a multiple of 16 and the maps cropped back.

Training (see docs/lite.md): the `lite_zoom` preset distils ALIKED-n16's score map and the similarity structure of
its descriptors (`losses.distill`) and adds R2D2's AP loss and ALIKE's neural reprojection error in a window
(`losses.nre`) on homography pairs of real photos (zoom up to 2x); `lite_zoom_reproj` continues from its weights
with ALIKE's keypoint reprojection loss added (`losses.reprojection`).
`train_*` below are what the trainer needs: build the net, its dense outputs, save it in the format this extractor
loads.
"""
from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import load_strict, state_dict_from_file
from ..config import ConfigError
from ..io.atomic import torch_save_atomic
from ..ops import fold_batchnorm, image_to_tensor, l2_normalize, l2_normalize_map, sample_at_pixels
from ..types import Features
from ._dkd import detect_keypoints
from .base import Extractor

logger = logging.getLogger(__name__)

MULTIPLE = 16
WIDTHS = (8, 32, 64, 128)   # channels at 1/2, 1/4, 1/8, 1/16


def packaged_weights() -> Path:
    """The weights trained by localfeat and shipped inside the package."""
    return Path(str(resources.files("localfeat").joinpath("weights", "lite.pt")))


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _conv3x3_at(layer: nn.Conv2d, fmap: torch.Tensor, stride: int, xy: torch.Tensor) -> torch.Tensor:
    """layer(fmap) (a 3x3 conv with zero padding over a map of `stride` input pixels per map pixel) sampled
    bilinearly (border-clamped) at input pixels xy (B, N, 2) -> (B, N, out), from 9 samples of fmap: the points
    are clamped to the map's first and last pixel centres (border clamping), then fmap is read at them and one map
    pixel (`stride` input pixels) around, zero outside the map (the conv's padding); exact by linearity."""
    h, w = fmap.shape[-2:]
    c = (stride - 1) / 2                                                   # input coordinate of map pixel 0
    lo, hi = c, xy.new_tensor([stride * (w - 1) + c, stride * (h - 1) + c])
    xy = torch.minimum(xy.clamp(min=lo), hi)
    offsets = float(stride) * torch.stack(torch.meshgrid(torch.arange(-1, 2), torch.arange(-1, 2), indexing="ij"), -1)
    offsets = offsets.flip(-1).reshape(9, 2).to(xy)                       # (ky, kx) order, as (dx, dy)
    b, n = xy.shape[:2]
    taps = sample_at_pixels(fmap, (xy[:, :, None] + offsets).reshape(b, n * 9, 2), stride, "zeros")
    taps = taps.reshape(b, n, 9, -1).transpose(2, 3).reshape(b, n, -1)   # (B, N, C * 9), C-major as the weight
    return F.linear(taps, layer.weight.reshape(layer.out_channels, -1), layer.bias)


class LiteNet(nn.Module):
    """The lite network (module docstring).

    forward: gray (B, 1, H, W) in [0, 1], H and W multiples of 16 -> (scores (B, 1, H, W) in [0, 1],
    maps = (f2 (B, 8, H/2, W/2), f4 (B, 32, H/4, W/4), g8 (B, dim, H/8, W/8))); `describe` and
    `dense_descriptors` turn the maps into descriptors.

    context: the 3x3 layer over the 1/8 features (`add_context`); context4: the 3x3 layer over the 1/4 features
    (`add_context4`); fine: the 3x3 layer over the 1/2 features (`add_fine`). They are optional so that weights
    trained without them load and grow them at zero."""

    def __init__(self, dim: int = 64, context: bool = False, fine: bool = False, context4: bool = False):
        super().__init__()
        c2, c4, c8, c16 = WIDTHS
        self.dim = dim
        self.norm = nn.InstanceNorm2d(1)
        self.block2 = _conv(1, c2, 2)
        self.block4 = nn.Sequential(_conv(c2, c4, 2), _conv(c4, c4))
        self.block8 = nn.Sequential(_conv(c4, c8, 2), _conv(c8, c8))
        self.block16 = nn.Sequential(_conv(c8, c16, 2), _conv(c16, c16))
        self.desc4 = nn.Conv2d(c4, dim, 1)
        self.desc8 = nn.Conv2d(c8, dim, 1)
        self.desc16 = nn.Conv2d(c16, dim, 1)
        self.context8 = None
        self.context4 = None
        self.fine2 = None
        if context:
            self.add_context()
        if context4:
            self.add_context4()
        if fine:
            self.add_fine()
        self.head4 = nn.Conv2d(16 + c4, 32, 3, 1, 1)
        self.head8 = nn.Conv2d(dim, 32, 1)
        self.head_out = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(32, 32, 1), nn.ReLU(inplace=True),
                                      nn.Conv2d(32, 16, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        x = self.norm(image)
        f2 = self.block2(x)
        f4 = self.block4(f2)
        f8 = self.block8(f4)
        f16 = self.block16(f8)
        g8 = self.desc8(f8) + _upsample(self.desc16(f16), f8.shape[-2:])
        if self.context8 is not None:
            g8 = g8 + self.context8(f8)
        h = self.head4(torch.cat([F.pixel_unshuffle(x, 4), f4], 1)) + _upsample(self.head8(g8), f4.shape[-2:])
        return torch.sigmoid(F.pixel_shuffle(self.head_out(h), 4)), (f2, f4, g8)

    def _zero_layer(self, cin: int) -> nn.Conv2d:
        layer = nn.Conv2d(cin, self.dim, 3, 1, 1).to(self.desc8.weight.device)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    def add_context(self) -> "LiteNet":
        """Add the optional 3x3 context of the 1/8 features to the coarse descriptors, at zero, so that a
        network trained without it continues from the same outputs (preset lite_context)."""
        self.context8 = self._zero_layer(WIDTHS[2])
        return self

    def add_context4(self) -> "LiteNet":
        """Add the optional 3x3 layer over the 1/4 features to the descriptors, at zero (same outputs as before):
        each 1/4 cell's descriptor then sees its neighbours' features, to tell apart points a few pixels apart."""
        self.context4 = self._zero_layer(WIDTHS[1])
        return self

    def add_fine(self) -> "LiteNet":
        """Add the optional 3x3 layer over the 1/2 features to the descriptors, at zero (same outputs as
        before; preset lite_fine): detail finer than the 1/4 features carry, for precise matches."""
        self.fine2 = self._zero_layer(WIDTHS[0])
        return self

    def widen(self, dim: int, scale: float = 0.1, seed: int = 0) -> "LiteNet":
        """Grow the descriptor from self.dim to `dim` dimensions, keeping what the network computes (preset
        lite_wide). The score map is unchanged exactly (head8's new input columns are zero). The new
        dimensions are not zero, since the losses' gradient through a dimension is proportional to its
        value: desc4, desc8 and desc16 get new rows drawn like their trained ones (same per-layer standard
        deviation) times `scale`; context8, context4 and fine2 get zero rows. The descriptors' first self.dim entries
        then shrink by the renormalisation only (0.1: their cosine with the old descriptors is about 0.99)."""
        if dim < self.dim:
            raise ValueError(f"widen: dim={dim} is below the network's {self.dim}")
        extra = dim - self.dim
        if extra == 0:
            return self
        gen = torch.Generator().manual_seed(seed)

        def grown(layer: nn.Conv2d, random_rows: bool) -> nn.Conv2d:
            w = layer.weight.detach()
            rows = (torch.randn((extra, *w.shape[1:]), generator=gen) * (scale * float(w.std()))
                    if random_rows else torch.zeros((extra, *w.shape[1:])))
            new = nn.Conv2d(w.shape[1], dim, w.shape[2], 1, w.shape[2] // 2).to(w.device)
            with torch.no_grad():
                new.weight.copy_(torch.cat([w, rows.to(w)]))
                new.bias.copy_(torch.cat([layer.bias.detach(), layer.bias.new_zeros(extra)]))
            return new

        self.desc4, self.desc8, self.desc16 = (grown(layer, True) for layer in (self.desc4, self.desc8, self.desc16))
        if self.context8 is not None:
            self.context8 = grown(self.context8, False)
        if self.context4 is not None:
            self.context4 = grown(self.context4, False)
        if self.fine2 is not None:
            self.fine2 = grown(self.fine2, False)
        head8 = nn.Conv2d(dim, self.head8.out_channels, 1).to(self.head8.weight.device)
        with torch.no_grad():
            head8.weight.copy_(F.pad(self.head8.weight.detach(), (0, 0, 0, 0, 0, extra)))
            head8.bias.copy_(self.head8.bias.detach())
        self.head8 = head8
        self.dim = dim
        return self

    def describe(self, maps: tuple, xy: torch.Tensor) -> torch.Tensor:
        """L2-normalised descriptors (B, N, dim) at input pixels xy (B, N, 2) (pixel-centre convention);
        maps: forward's (f2, f4, g8)."""
        f2, f4, g8 = maps
        w = self.desc4.weight[:, :, 0, 0]
        desc = F.linear(sample_at_pixels(f4, xy, 4, "border"), w, self.desc4.bias)
        desc = desc + sample_at_pixels(g8, xy, 8, "border")
        if self.context4 is not None:
            desc = desc + _conv3x3_at(self.context4, f4, 4, xy)
        if self.fine2 is not None:
            desc = desc + _conv3x3_at(self.fine2, f2, 2, xy)
        return l2_normalize(desc, dim=-1)

    def dense_descriptors(self, maps: tuple) -> torch.Tensor:
        """L2-normalised descriptors (B, dim, H, W) at every input pixel (what `describe` gives there);
        maps: forward's (f2, f4, g8)."""
        f2, f4, g8 = maps
        size = (f4.shape[-2] * 4, f4.shape[-1] * 4)
        d4 = self.desc4(f4) if self.context4 is None else self.desc4(f4) + self.context4(f4)
        # Channels-last: the upsampling and the normalisation run over contiguous D-vectors, and the losses'
        # gathers (`train.losses._sampling.gather`) read whole pixels (the map's layout only, not its values).
        last = torch.channels_last
        desc = _upsample(d4.contiguous(memory_format=last), size) + _upsample(g8.contiguous(memory_format=last), size)
        if self.fine2 is not None:
            desc = desc + _upsample(self.fine2(f2).contiguous(memory_format=last), size)
        return l2_normalize_map(desc)

    def fold_batchnorm(self) -> "LiteNet":
        """Fold every eval-mode BatchNorm into its conv (inference only; same outputs up to rounding)."""
        for block in (self.block2, *self.block4, *self.block8, *self.block16):
            if isinstance(block[1], nn.BatchNorm2d):
                block[0] = fold_batchnorm(block[0], block[1])
                block[1] = nn.Identity()
        return self


def pad_to_multiple(image: torch.Tensor, multiple: int = MULTIPLE) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) at the bottom/right to multiples of `multiple`."""
    h, w = image.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(image, (0, pw, 0, ph), mode="replicate") if ph or pw else image


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) luminance (ITU-R BT.601, as cv2's RGB2GRAY); (B, 1, ...) as is."""
    if images.shape[1] == 1:
        return images
    w = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True)


def load_net(weights: Optional[str | Path] = None, fold: bool = False) -> tuple[LiteNet, Path]:
    """LiteNet with `weights` (a file written by `train_save`; None = the packaged weights), eval mode;
    fold: BatchNorm folded into the convs (inference)."""
    path = Path(weights) if weights is not None else packaged_weights()
    if not path.is_file():
        raise FileNotFoundError(f"lite: weights file {path} does not exist" + (
            "" if weights is not None else " (the package is incomplete: reinstall localfeat)"))
    state = state_dict_from_file(path, entries=("lite",))
    dim = int(state["desc8.weight"].shape[0]) if "desc8.weight" in state else 64
    net = LiteNet(dim, context="context8.weight" in state, fine="fine2.weight" in state,
                  context4="context4.weight" in state)
    load_strict(net, state, path, "lite")
    net.eval()
    return (net.fold_batchnorm() if fold else net), path


class Lite(Extractor):
    """localfeat's own learned extractor (module docstring): float descriptors of the weights' width (the
    shipped weights: 96-D).

    Config:
      max_keypoints:       the best keypoints kept (None = every peak above detection_threshold).
      detection_threshold: minimum score of a peak when max_keypoints is None (and of every peak kept).
      nms_radius:          NMS radius in pixels (window 2r + 1).
      subpixel_temperature: temperature of the sub-pixel soft-argmax over the (2r + 1)^2 window of score
                           differences (ALIKE's DKD uses 0.1); 0 = integer peaks.
      weights:             None = the weights shipped in the package, or a file written by `localfeat train`.
    The detection defaults (radius 1, temperature 0.05) were chosen by benchmarks/tune_lite_detection.py on
    synthetic sequences of photos that are neither training nor validation images (docs/lite.md).
    Activations are channels-last (oneDNN's convolutions run ~1.4x faster on a CPU; same outputs up to rounding).
    """

    name = "lite"
    input_mode = "gray"
    default_conf = {"max_keypoints": 2048, "detection_threshold": 0.0, "nms_radius": 1, "subpixel_temperature": 0.05,
                    "weights": None}

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        self.check_count("max_keypoints")
        self.check_count("nms_radius", allow_none=False)
        if isinstance(c["detection_threshold"], bool) or not isinstance(c["detection_threshold"], (int, float)):
            raise ConfigError(f"lite: detection_threshold must be a number, got {c['detection_threshold']!r}")
        t = c["subpixel_temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
            raise ConfigError(f"lite: subpixel_temperature must be a number >= 0 (0 = integer peaks), got {t!r}")
        net, self.weights_path = load_net(c["weights"], fold=True)
        self.net = net.to(self.device).to(memory_format=torch.channels_last)

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        return []  # shipped in the package

    @torch.inference_mode()
    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        c = self.conf
        x = image_to_tensor(image, self.device)                    # (1, 1, H, W) in [0, 1]
        scores_map, maps = self.net(pad_to_multiple(x).contiguous(memory_format=torch.channels_last))
        scores_map = scores_map[..., :h, :w].contiguous()
        r, t = int(c["nms_radius"]), float(c["subpixel_temperature"])
        kpts, scores = detect_keypoints(scores_map, r, (r + 1, r + 1), c["max_keypoints"],
                                        float(c["detection_threshold"]), None, sub_pixel=t > 0, temperature=t)
        kpts, scores = kpts[0], scores[0]
        if c["detection_threshold"] > 0:  # also after the sub-pixel refinement moved the score
            keep = scores > c["detection_threshold"]
            kpts, scores = kpts[keep], scores[keep]
        order = torch.argsort(scores, descending=True, stable=True)  # best first
        kpts, scores = kpts[order], scores[order]
        xy = (kpts + 1) / 2 * kpts.new_tensor([w - 1, h - 1])      # pixels, pixel-centre origin
        desc = self.net.describe(maps, xy[None])[0]
        return Features(xy.cpu().numpy(), scores.float().cpu().numpy(), desc.float().cpu().numpy(), (w, h))


# ------------------------------------------------------------------------------------------ training
TRAIN_DEFAULTS = {"dim": 64, "weights": None, "context": None, "fine": None, "context4": None}
_OPTIONAL_LAYERS = (("context", "context8", "add_context"), ("fine", "fine2", "add_fine"),
                    ("context4", "context4", "add_context4"))


def train_build(conf: dict) -> LiteNet:
    """A LiteNet from scratch (conf['weights'] None), or from a weights file ('packaged' = the shipped one).

    conf['context'] (the 1/8 context layer), conf['context4'] (the 1/4 layer) and conf['fine'] (the 1/2 layer):
    None: as the weights hold it
    (none from scratch); true: added at zero to weights without it (the network's outputs are those of the
    weights); false: without it."""
    if conf["weights"] is None:
        return LiteNet(int(conf["dim"]), context=bool(conf.get("context")), fine=bool(conf.get("fine")),
                       context4=bool(conf.get("context4")))
    net, _ = load_net(None if conf["weights"] == "packaged" else conf["weights"])
    dim = int(conf["dim"])
    if net.dim > dim:
        raise ConfigError(f"model.weights {conf['weights']} hold dim={net.dim}, the config asks for {dim} "
                          "(a descriptor can be widened, not narrowed)")
    if net.dim < dim:
        logger.info("lite: descriptor widened from %d to %d dimensions (LiteNet.widen)", net.dim, dim)
        net.widen(dim)
    for key, attr, add in _OPTIONAL_LAYERS:
        wanted, held = conf.get(key), getattr(net, attr) is not None
        if wanted and not held:
            getattr(net, add)()
        elif wanted is not None and not wanted and held:
            raise ConfigError(f"model.weights {conf['weights']} hold the {key} layer ({attr}); set model.{key}: "
                              "true (or leave it out)")
    return net.train()


def train_dense(net: LiteNet, images: torch.Tensor) -> dict:
    """Dense outputs for the losses: images (B, 3, H, W) RGB in [0, 1] -> 'scores' (B, 1, H, W) and
    'descriptors' (B, D, H, W) (`LiteNet.dense_descriptors`, L2-normalised), stride 1."""
    h, w = images.shape[-2:]
    scores, maps = net(pad_to_multiple(to_gray(images)))
    desc = net.dense_descriptors(maps)
    return {"scores": scores[..., :h, :w], "descriptors": desc[..., :h, :w], "stride": 1}


def train_save(net: LiteNet, conf: dict, path) -> None:
    """Write {'lite': state_dict} (the file `Lite(weights=path)` loads), atomically."""
    torch_save_atomic({"lite": net.state_dict()}, path)
