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
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import hub
from ..checkpoints import training_weights
from ..config import ConfigError
from ..io.atomic import torch_save_atomic
from ..ops import image_to_tensor, l2_normalize
from ..types import Features
from ._dkd import AlikeFamily, detect_keypoints

logger = logging.getLogger(__name__)

# c1..c4: channels of the four encoder blocks; dim: descriptor dimension; single_head: no extra 1x1 head.
# Shiaoming/ALIKE, models/ at commit 4e61fc7 (BSD-3-Clause); sha256 computed on the official files.
WEIGHTS = {
    v: hub.WeightSpec(f"{v}.pth", (f"https://github.com/Shiaoming/ALIKE/raw/main/models/{v}.pth",), digest,
                      "BSD-3-Clause")
    for v, digest in (("alike-t", "c0840329a6b88518d914b03af2be956f5607055a389ba17441db02bb94f7d12e"),
                      ("alike-s", "a9c0789ff0a09f576cc24afe4924d3233471499d1ce3b0248d650c8794e99a94"),
                      ("alike-n", "8bd4789272eec779be280f8fc1007608ff604241440a0a3377c1559199412ee3"),
                      ("alike-l", "bed5fbbf352ab1c3e92e2241881f8b84edce949984fa23bc7f2517eab93938a0"))
}

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


class ResBlock(ConvBlock):
    """ResNet basic block (stride 1): ConvBlock's layers with a 1x1 conv (with bias) on the skip path."""

    def __init__(self, cin: int, cout: int, gate: nn.Module, conv: Callable = conv3x3):
        super().__init__(cin, cout, gate, conv)
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

    def branches(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The four aggregation inputs gate(conv_k(x_k)), each (B, dim/4, H/s, W/s), s = 1, 2, 8, 32."""
        x1 = self.block1(image)                           # c1 x H x W
        x2 = self.block2(F.max_pool2d(x1, 2, 2))          # c2 x H/2
        x3 = self.block3(F.max_pool2d(x2, 4, 4))          # c3 x H/8
        x4 = self.block4(F.max_pool2d(x3, 4, 4))          # c4 x H/32
        return [self.gate(self.conv1(x1)), self.gate(self.conv2(x2)), self.gate(self.conv3(x3)),
                self.gate(self.conv4(x4))]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a1, a2, a3, a4 = self.branches(image)
        x = torch.cat([a1, upsample(a2, 2), upsample(a3, 8), upsample(a4, 32)], dim=1)
        if not self.single_head:
            x = self.gate(self.convhead1(x))
        x = self.convhead2(x)
        return torch.sigmoid(x[:, -1:]), x[:, :-1]

    def forward_sparse(self, image: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The score map (B, 1, H, W) and what `descriptors_at` needs, without the dense descriptor map.

        Single-head models: the score logit is w . cat(a1, up(a2), up(a3), up(a4)); the 1x1 head and the
        bilinear upsampling are both linear, so it equals w1 . a1 + up(w2 . a2) + up(w3 . a3) +
        up(w4 . a4), which upsamples 3 one-channel maps instead of 3 x dim/4 channels (equal up to float
        rounding). alike-l has a non-linear layer after the concatenation: its hidden map is kept.
        """
        a = self.branches(image)
        head = self.convhead2.weight[:, :, 0, 0]  # (dim + 1, dim)
        if self.single_head:
            q = head.shape[1] // 4
            w = [head[-1:, k * q:(k + 1) * q, None, None] for k in range(4)]
            logit = F.conv2d(a[0], w[0])
            for k, factor in ((1, 2), (2, 8), (3, 32)):
                logit = logit + upsample(F.conv2d(a[k], w[k]), factor)
            return torch.sigmoid(logit), {"branches": a, "size": image.shape[-2:]}
        x = torch.cat([a[0], upsample(a[1], 2), upsample(a[2], 8), upsample(a[3], 32)], dim=1)
        hidden = self.gate(self.convhead1(x))
        return torch.sigmoid(F.conv2d(hidden, head[-1:, :, None, None])), {"hidden": hidden}

    def descriptors_at(self, ctx: dict, yx: torch.Tensor, i: int = 0) -> torch.Tensor:
        """Raw (not normalised) descriptors (P, dim) of image i of the batch at integer pixels yx (P, 2)
        (row, column) of the network input, from the `forward_sparse` context; equal to the dense
        descriptor map read at those pixels."""
        head = self.convhead2.weight[:-1, :, 0, 0]  # (dim, dim)
        y, x = yx[:, 0], yx[:, 1]
        if "hidden" in ctx:
            return ctx["hidden"][i][:, y, x].t() @ head.t()
        a1, a2, a3, a4 = ctx["branches"]
        h, w = ctx["size"]
        # upsampled maps at integer pixels = bilinear samples with align_corners=True at the same
        # normalised position
        grid = torch.stack([x / max(w - 1, 1) * 2 - 1, y / max(h - 1, 1) * 2 - 1], dim=-1).to(a1.dtype)
        q = a1.shape[1]
        x1234 = torch.empty(len(yx), 4 * q, dtype=a1.dtype, device=a1.device)
        x1234[:, :q] = a1[i].permute(1, 2, 0).reshape(-1, q).index_select(0, y * w + x)  # view if channels-last
        for k, ak in enumerate((a2, a3, a4), start=1):
            x1234[:, k * q:(k + 1) * q] = F.grid_sample(ak[i:i + 1], grid.view(1, 1, -1, 2), mode="bilinear",
                                                        align_corners=True)[0, :, 0].t()
        return x1234 @ head.t()


def pad_to_multiple(image: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Zero-pad the bottom and right of (B, C, H, W) so that H and W are multiples of `multiple`."""
    h, w = image.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(image, (0, pw, 0, ph)) if ph or pw else image


class ALIKE(AlikeFamily):
    """ALIKE keypoints and descriptors (D = 64, 96, 128, 128 for t, s, n, l), official weights.

    Config (names of the original):
      variant:   'alike-t', 'alike-s', 'alike-n' (default) or 'alike-l'.
      weights:   None (find `<variant>.pth` through the weights lookup) or a path to a state dict.
      max_keypoints: at most this many keypoints, the best (default 5000); None = no limit.
      scores_th: keep NMS peaks with score > scores_th (mean of the map if none passes); None = no
                 threshold: the max_keypoints best NMS peaks.
      sub_pixel: soft-argmax refinement and bilinear descriptor sampling (the demo default, True).
      sort:      order keypoints by decreasing score (default False: row-major order of the peaks,
                 or by score when max_keypoints cuts or scores_th is None).
    Aliases (the original's names): n_limit = max_keypoints; top_k=k = max_keypoints=k, scores_th=None.
    Output: keypoints in pixels (pixel-centre origin), scores = score map at the keypoint (0..1).
    """

    name = "alike"
    input_mode = "rgb"
    configs = ALIKE_CONFIGS
    net_class = ALNet
    weight_table = WEIGHTS
    default_conf = {
        "variant": "alike-n",
        "weights": None,
        "max_keypoints": 5000,
        "scores_th": 0.2,
        "sub_pixel": True,
        "sort": False,
    }

    @torch.inference_mode()
    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense maps of an image tensor (B, 3, H, W) in [0, 1], RGB.

        Returns (scores (B, 1, H, W) in [0, 1], descriptors (B, D, H, W) L2-normalised over D),
        the original's `extract_dense_map` with the order of the outputs swapped.
        """
        h, w = image.shape[-2:]
        padded = pad_to_multiple(image.to(self.device), 32).contiguous(memory_format=torch.channels_last)
        scores, desc = self.net(padded)
        return scores[..., :h, :w], l2_normalize(desc[..., :h, :w], dim=1)

    @torch.inference_mode()
    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        c = self.conf
        tensor = pad_to_multiple(image_to_tensor(image, self.device), 32).contiguous(memory_format=torch.channels_last)
        scores_map, ctx = self.net.forward_sparse(tensor)
        scores_map = scores_map[..., :h, :w]
        kpts, scores = detect_keypoints(scores_map, RADIUS, (RADIUS + 1, RADIUS), *self.select_args(),
                                        c["sub_pixel"])
        kpts, scores = kpts[0], scores[0]
        size = kpts.new_tensor([w - 1, h - 1])
        if c["sub_pixel"]:
            desc = sample_normalized_bilinear(lambda yx: self.net.descriptors_at(ctx, yx), kpts, (w, h))
        else:  # the original truncates the pixel position and reads the normalised map
            xy = ((kpts + 1) / 2 * size).long()
            desc = l2_normalize(self.net.descriptors_at(ctx, xy.flip(1)), dim=1)
        desc = l2_normalize(desc, dim=1)
        xy = (kpts + 1) / 2 * size
        if c["sort"]:
            order = torch.argsort(scores, descending=True, stable=True)
            xy, desc, scores = xy[order], desc[order], scores[order]
        return Features(xy.cpu().numpy(), scores.cpu().numpy(), desc.float().cpu().numpy(), (w, h))


def sample_normalized_bilinear(read: Callable, grid: torch.Tensor, size_wh: tuple[int, int]) -> torch.Tensor:
    """Bilinear samples (N, D) at grid points (N, 2) (align_corners=True, inside the map) of the
    L2-normalised version of a map of size (W, H) that is only read at pixels: `read(yx (P, 2))` returns
    the raw vectors (P, D). Equal to `grid_sample(normalize(map), grid, align_corners=True)` without
    computing the dense map: the 4 neighbours of each point are read, normalised and blended.
    """
    w, h = size_wh
    ix = (grid[:, 0] + 1) / 2 * (w - 1)
    iy = (grid[:, 1] + 1) / 2 * (h - 1)
    x0, y0 = torch.floor(ix), torch.floor(iy)
    lx, ly = ix - x0, iy - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)  # weight 0 when clamped
    corners = torch.cat([torch.stack([y0, x0], 1), torch.stack([y0, x1], 1),
                         torch.stack([y1, x0], 1), torch.stack([y1, x1], 1)])
    vec = l2_normalize(read(corners), dim=1)
    vec = vec.view(4, len(grid), vec.shape[-1])
    wgt = torch.stack([(1 - lx) * (1 - ly), lx * (1 - ly), (1 - lx) * ly, lx * ly])[..., None]
    return (vec * wgt).sum(0)


# ------------------------------------------------------------------------------------------ training
TRAIN_DEFAULTS = {"variant": "alike-t", "weights": None}


def train_build(conf: dict) -> ALNet:
    """The ALNet of conf['variant'], from scratch or from conf['weights'] ('official' or a state_dict path)."""
    if conf["variant"] not in ALIKE_CONFIGS:
        raise ConfigError(f"model.variant {conf['variant']!r} is not one of {sorted(ALIKE_CONFIGS)}")
    net = ALNet(**ALIKE_CONFIGS[conf["variant"]])
    path = training_weights(WEIGHTS[conf["variant"]], conf["weights"])
    if path is not None:
        net.load_state_dict(hub.load_torch_checkpoint(path), strict=True)
    return net


def train_dense(net: ALNet, images: torch.Tensor) -> dict:
    """images (B, 3, H, W) RGB in [0, 1] -> 'descriptors' (B, D, H, W) L2-normalised, 'scores' (B, 1, H, W),
    stride 1."""
    h, w = images.shape[-2:]
    scores, desc = net(pad_to_multiple(images, 32))
    return {"descriptors": l2_normalize(desc[..., :h, :w], dim=1), "scores": scores[..., :h, :w], "stride": 1}


def train_save(net: ALNet, conf: dict, path) -> None:
    """The state_dict, as the release (`load_extractor('alike', variant=..., weights=path)` loads it)."""
    torch_save_atomic(net.state_dict(), path)
