"""EfficientLoFTR: Semi-Dense Local Feature Matching with Sparse-Like Speed (Wang et al., CVPR 2024).

Re-implementation in plain PyTorch of zju3dv/EfficientLoFTR (commit ffd4a46, Apache-2.0 at that commit) that
loads its official checkpoint (`eloftr_outdoor.ckpt`, training layout: RepVGG branches not fused) strictly:

- `backbone`: RepVGG stages `layer0` (one stride-2 block), `layer1`, `layer2`, `layer3` (the first block of
  layers 2 and 3 strided) giving 1/2, 1/4 and 1/8 maps. Each block is relu(3x3 conv-BN + 1x1 conv-BN
  [+ BN identity when the shape allows]). The original hard-codes [2, 4, 14] blocks; here the widths come from
  `backbone.block_dims` and the block counts from `backbone.num_blocks` (or, when absent, from the weights file).
  `reparameterize()` fuses the branches into one 3x3 conv (faster; float rounding changes slightly).
- `loftr_coarse`: aggregated attention. The query map is aggregated by a depthwise conv (`agg_size0`), the
  source by max-pooling (`agg_size1`); `norm1` applies to both, then q/k/v projections, 2-D RoPE on q and k in
  the self layers only (sin/cos tables in float16 as the original), full attention over the aggregated tokens,
  `merge`, x`agg_size0` bilinear upsampling (align_corners=False), then x + norm2(mlp([x, message])).
- coarse matching: dual softmax over features / sqrt(C) (temperature 0.1), conf > thr, borders, mutual NN.
- `fine_preprocess`: FPN from the transformer output / sqrt(C) down to full resolution (bilinear,
  align_corners=False); 8x8 windows of image 0 and 10x10 windows (padding 1) of image 1 per match.
- fine matching, stage 1: dual softmax between the two windows on the first C - 8 channels; its argmax in
  image 1's inner 8x8 places both keypoints at cell origin + (index - 3.5). Stage 2: a 3x3 patch of the
  last-8-channel correlation, read at padded indices (iy - 1 .. iy + 1, ix - 1 .. ix + 1) exactly as the
  original (an index -1 wraps to 9), softmax(/10), and its expectation (at most 1 px) is added to keypoints1.

Input rules: grayscale (B, 1, H, W) in [0, 1], H and W multiples of 32, optional coarse padding masks (batch
size 1). `match_images` pads to a multiple of 32 and passes the masks. Keypoints are the original's raw
output coordinates (no shift). On CPU everything runs in float32 (the original's CUDA autocast of the fine
stage does not apply).
"""
from __future__ import annotations

import logging
import math
import re
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import hub
from ..checkpoints import load_weights, state_dict_from_file
from ..config import ConfigError
from ._semidense import (PaddedPairMatcher, DENSE_CONF_MAX_ENTRIES, MASKED, blockwise_dual_softmax_matches, border_mask,
                         cell_centres, check_size, checkpoint_state_dict, chunked_concat, dual_softmax, gather_windows,
                         merge_nested, mutual_matches, spatial_expectation)

logger = logging.getLogger(__name__)

# src/loftr/utils/full_config.py `full_default_cfg` of the original, plus `backbone.num_blocks` (None = the
# original's [2, 4, 14] when no weights file says otherwise).
DEFAULT_CONFIG = {
    "backbone_type": "RepVGG",
    "align_corner": False,
    "resolution": (8, 1),
    "fine_window_size": 8,
    "mp": False,
    "replace_nan": True,
    "half": False,
    "eval_times": 1,
    "backbone": {"block_dims": [64, 128, 256], "num_blocks": None},
    "coarse": {"d_model": 256, "d_ffn": 256, "nhead": 8, "layer_names": ["self", "cross"] * 4,
               "agg_size0": 4, "agg_size1": 4, "no_flash": False, "rope": True, "npe": [832, 832, 832, 832]},
    "match_coarse": {"thr": 0.2, "border_rm": 2, "dsmax_temperature": 0.1, "skip_softmax": False,
                     "fp16matmul": False, "train_coarse_percent": 0.2, "train_pad_num_gt_min": 200,
                     "sparse_spvs": True},
    "match_fine": {"local_regress_temperature": 10.0, "local_regress_slicedim": 8, "sparse_spvs": True},
    "loss": {},
}
OFFICIAL_NUM_BLOCKS = (2, 4, 14)

# The official weights: the README's Google Drive link (no direct URL); sha256 not established offline.
WEIGHTS = {
    "outdoor": hub.WeightSpec(
        "eloftr_outdoor.ckpt", (), None,
        "Apache-2.0 (zju3dv/EfficientLoFTR at ffd4a46; download from the Google Drive link in its README)"),
}


# ------------------------------------------------------------------------------------------------ backbone
def _conv_bn(cin: int, cout: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    return seq


def _fuse(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv kernel followed by eval-mode BatchNorm -> (kernel * gamma / std, beta - mean * gamma / std)."""
    std = (bn.running_var + bn.eps).sqrt()
    return kernel * (bn.weight / std).reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * bn.weight / std


class RepVGGBlock(nn.Module):
    """relu(rbr_dense(x) + rbr_1x1(x) [+ rbr_identity(x)]), keys of the original; after `reparameterize`,
    relu(rbr_reparam(x)) (one 3x3 conv with bias)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_dense = _conv_bn(cin, cout, 3, stride, 1)
        self.rbr_1x1 = _conv_bn(cin, cout, 1, stride, 0)
        self.rbr_reparam = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rbr_reparam is not None:
            return F.relu(self.rbr_reparam(x))
        identity = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return F.relu(self.rbr_dense(x) + self.rbr_1x1(x) + identity)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fuse the branches into `rbr_reparam` (exact up to float rounding) and drop them."""
        if self.rbr_reparam is not None:
            return
        conv = self.rbr_dense.conv
        k3, b3 = _fuse(conv.weight, self.rbr_dense.bn)
        k1, b1 = _fuse(F.pad(self.rbr_1x1.conv.weight, [1, 1, 1, 1]), self.rbr_1x1.bn)
        kernel, bias = k3 + k1, b3 + b1
        if self.rbr_identity is not None:
            eye = torch.zeros_like(conv.weight)
            eye[torch.arange(conv.in_channels), torch.arange(conv.in_channels), 1, 1] = 1
            ki, bi = _fuse(eye, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=conv.stride, padding=1, bias=True)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        self.rbr_reparam = fused.to(conv.weight.device)
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity
        self.rbr_dense = self.rbr_1x1 = self.rbr_identity = None


class RepVGGBackbone(nn.Module):
    """x (B, 1, H, W) -> (1/2 map (B, d0), 1/4 map (B, d1), 1/8 map (B, d2)) with d = block_dims and
    num_blocks = blocks of layer1..layer3 (layer0 is one stride-2 block 1 -> d0)."""

    def __init__(self, block_dims, num_blocks):
        super().__init__()
        d0, d1, d2 = block_dims
        self.layer0 = RepVGGBlock(1, d0, 2)
        self.layer1 = self._stage(d0, d0, num_blocks[0], 1)
        self.layer2 = self._stage(d0, d1, num_blocks[1], 2)
        self.layer3 = self._stage(d1, d2, num_blocks[2], 2)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int) -> nn.ModuleList:
        return nn.ModuleList(RepVGGBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n))

    def forward(self, x: torch.Tensor):
        x = self.layer0(x)
        for block in self.layer1:
            x = block(x)
        x1 = x
        for block in self.layer2:
            x = block(x)
        x2 = x
        for block in self.layer3:
            x = block(x)
        return x1, x2, x


# ------------------------------------------------------------------------------------------- transformer
def rope_tables(d_model: int, h: int, w: int, npe, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's RoPE sin/cos tables (1, h, w, d_model), float16 values (`ropefp16=True`).

    Positions start at 1 and are scaled by npe[0] / npe[2] (rows) and npe[1] / npe[3] (columns); the
    frequencies are exp(-k ln(10000) / (d/4)), k < d/4; in the d/2 table even entries use the row and odd
    entries the column; each entry is then repeated twice (channel pairs (2k, 2k+1) rotate together).
    """
    rows = torch.ones(h, w, device=device).cumsum(0).float()[..., None] * npe[0] / npe[2]
    cols = torch.ones(h, w, device=device).cumsum(1).float()[..., None] * npe[1] / npe[3]
    div = torch.exp(torch.arange(0, d_model // 4, 1, device=device).float()
                    * (-math.log(10000.0) / (d_model // 4)))[None, None]
    sin = torch.zeros(h, w, d_model // 2, dtype=torch.float16, device=device)
    cos = torch.zeros(h, w, d_model // 2, dtype=torch.float16, device=device)
    sin[..., 0::2] = torch.sin(rows * div).half()
    sin[..., 1::2] = torch.sin(cols * div).half()
    cos[..., 0::2] = torch.cos(rows * div).half()
    cos[..., 1::2] = torch.cos(cols * div).half()
    return sin.repeat_interleave(2, dim=-1)[None], cos.repeat_interleave(2, dim=-1)[None]


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """x (B, h, w, C) rotated by the tables: x cos + rot(x) sin, rot((a, b)) = (-b, a) per channel pair."""
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack((-b, a), dim=-1).flatten(-2)
    return x * cos + rotated * sin


class AggregatedAttentionLayer(nn.Module):
    """One EfficientLoFTR encoder layer on maps x (B, C, H0, W0), source (B, C, H1, W1) -> (B, C, H0, W0)."""

    def __init__(self, d_model: int, nhead: int, agg0: int, agg1: int, rope: bool, npe, flash: bool):
        super().__init__()
        self.nhead, self.dim, self.agg0, self.agg1 = nhead, d_model // nhead, agg0, agg1
        self.rope, self.npe, self.flash = rope, npe, flash
        self.aggregate = (nn.Conv2d(d_model, d_model, agg0, stride=agg0, padding=0, bias=False, groups=d_model)
                          if agg0 != 1 else nn.Identity())
        self.max_pool = nn.MaxPool2d(agg1, stride=agg1) if agg1 != 1 else nn.Identity()
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, 2 * d_model, bias=False), nn.LeakyReLU(inplace=True),
                                 nn.Linear(2 * d_model, d_model, bias=False))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        b, c, h0, w0 = x.shape
        query = self.norm1(self.aggregate(x).permute(0, 2, 3, 1))
        source = self.norm1(self.max_pool(source).permute(0, 2, 3, 1))
        q, k, v = self.q_proj(query), self.k_proj(source), self.v_proj(source)
        if self.rope:  # self layers: q and k share the aggregated grid
            sin, cos = rope_tables(c, q.shape[1], q.shape[2], self.npe, q.device)
            q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
        hq, wq = q.shape[1:3]
        if self.flash:
            q, k, v = (t.reshape(b, -1, self.nhead, self.dim).transpose(1, 2) for t in (q, k, v))
            m = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        else:
            q, k, v = (t.reshape(b, -1, self.nhead, self.dim) for t in (q, k, v))
            a = torch.softmax(torch.einsum("nlhd,nshd->nlsh", q, k) / q.size(3) ** .5, dim=2)
            m = torch.einsum("nlsh,nshd->nlhd", a, v)
        m = self.merge(m.reshape(b, -1, self.nhead * self.dim))
        m = m.transpose(1, 2).reshape(b, c, hq, wq)
        if self.agg0 != 1:
            m = F.interpolate(m, scale_factor=self.agg0, mode="bilinear", align_corners=False)
        m = self.norm2(self.mlp(torch.cat([x, m], dim=1).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x + m


class AggregatedTransformer(nn.Module):
    """Self / cross layers (RoPE in the self layers only); the cross layers update image 1 with the updated
    image 0. With padding masks (batch size 1) the maps are cropped to the valid region (rounded down to the
    aggregation size), transformed, and zero-padded back, as the original."""

    def __init__(self, conf: dict):
        super().__init__()
        self.layer_names = list(conf["layer_names"])
        bad = sorted(set(self.layer_names) - {"self", "cross"})
        if bad:
            raise ConfigError(f"efficientloftr: layer_names may hold 'self' and 'cross' only, got {bad}")
        npe = conf["npe"] if conf["npe"] is not None else [832, 832, 832, 832]
        self.agg0, self.agg1 = conf["agg_size0"], conf["agg_size1"]
        flash = not conf["no_flash"]
        self.layers = nn.ModuleList(
            AggregatedAttentionLayer(conf["d_model"], conf["nhead"], self.agg0, self.agg1,
                                     bool(conf["rope"]) and name == "self", npe, flash)
            for name in self.layer_names)

    def forward(self, feat0, feat1, mask0=None, mask1=None):
        full0, full1 = feat0.shape, feat1.shape
        if mask0 is not None:
            if feat0.shape[0] != 1:
                raise ValueError("efficientloftr: padding masks are supported for batch size 1 only")
            h0 = int(mask0[0].sum(-2)[0]) // self.agg0 * self.agg0
            w0 = int(mask0[0].sum(-1)[0]) // self.agg0 * self.agg0
            h1 = int(mask1[0].sum(-2)[0]) // self.agg1 * self.agg1
            w1 = int(mask1[0].sum(-1)[0]) // self.agg1 * self.agg1
            feat0, feat1 = feat0[:, :, :h0, :w0], feat1[:, :, :h1, :w1]
        for layer, name in zip(self.layers, self.layer_names):
            if name == "self":
                feat0, feat1 = layer(feat0, feat0), layer(feat1, feat1)
            else:
                feat0 = layer(feat0, feat1)
                feat1 = layer(feat1, feat0)
        if mask0 is not None:
            feat0 = F.pad(feat0, (0, full0[3] - feat0.shape[3], 0, full0[2] - feat0.shape[2]))
            feat1 = F.pad(feat1, (0, full1[3] - feat1.shape[3], 0, full1[2] - feat1.shape[2]))
        return feat0, feat1


# ------------------------------------------------------------------------------------------------- fine
def _conv1x1(cin, cout):
    return nn.Conv2d(cin, cout, 1, padding=0, bias=False)


def _conv3x3(cin, cout):
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class FinePreprocess(nn.Module):
    """FPN from the coarse transformer output (/ sqrt(C)) and the backbone's 1/4 and 1/2 maps to a full-
    resolution fine map (B, d0, H, W); bilinear x2 upsampling with align_corners=False."""

    def __init__(self, block_dims):
        super().__init__()
        d0, d1, d2 = block_dims
        self.layer3_outconv = _conv1x1(d2, d2)
        self.layer2_outconv = _conv1x1(d1, d2)
        self.layer2_outconv2 = nn.Sequential(_conv3x3(d2, d2), nn.BatchNorm2d(d2), nn.LeakyReLU(), _conv3x3(d2, d1))
        self.layer1_outconv = _conv1x1(d0, d1)
        self.layer1_outconv2 = nn.Sequential(_conv3x3(d1, d1), nn.BatchNorm2d(d1), nn.LeakyReLU(), _conv3x3(d1, d0))

    def forward(self, feat_c: torch.Tensor, x2: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.layer3_outconv(feat_c), scale_factor=2., mode="bilinear", align_corners=False)
        x2 = self.layer2_outconv2(self.layer2_outconv(x2) + up)
        up = F.interpolate(x2, scale_factor=2., mode="bilinear", align_corners=False)
        x1 = self.layer1_outconv2(self.layer1_outconv(x1) + up)
        return F.interpolate(x1, scale_factor=2., mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------------- model
class EfficientLoFTRNet(nn.Module):
    """The EfficientLoFTR network; state_dict keys equal the original's (training layout)."""

    def __init__(self, config: dict):
        super().__init__()
        c = config
        if c["backbone_type"] != "RepVGG" or c["align_corner"] or tuple(c["resolution"]) != (8, 1):
            raise ConfigError("efficientloftr: only backbone_type 'RepVGG', align_corner False, resolution (8, 1) "
                              f"exist in the original; got {c['backbone_type']!r}, {c['align_corner']!r}, "
                              f"{tuple(c['resolution'])}")
        dims = list(c["backbone"]["block_dims"])
        if c["coarse"]["d_model"] != dims[2]:
            raise ConfigError(f"efficientloftr: coarse.d_model ({c['coarse']['d_model']}) must equal "
                              f"backbone.block_dims[2] ({dims[2]})")
        if c["fine_window_size"] != 8:
            raise ConfigError(f"efficientloftr: fine_window_size must be 8 (= the coarse stride at resolution "
                              f"(8, 1)), got {c['fine_window_size']}")
        if c["match_fine"]["local_regress_slicedim"] >= dims[0]:
            raise ConfigError("efficientloftr: match_fine.local_regress_slicedim must be below block_dims[0]")
        num_blocks = c["backbone"]["num_blocks"] or OFFICIAL_NUM_BLOCKS
        self.config = c
        self.fine_chunk = 8192   # matches per fine-stage chunk (bounds memory; chunking changes float rounding only)
        self.backbone = RepVGGBackbone(dims, list(num_blocks)[:3])
        self.loftr_coarse = AggregatedTransformer(c["coarse"])
        self.fine_preprocess = FinePreprocess(dims)

    def reparameterize(self) -> "EfficientLoFTRNet":
        """Fuse every RepVGG block (the original's `reparameter`); inference only."""
        for module in self.modules():
            if isinstance(module, RepVGGBlock):
                module.reparameterize()
        return self

    def forward(self, image0: torch.Tensor, image1: torch.Tensor, mask0: Optional[torch.Tensor] = None,
                mask1: Optional[torch.Tensor] = None) -> dict:
        """image0/1 (B, 1, H, W) float in [0, 1], H and W multiples of 32; mask0/1 optional COARSE padding masks
        (1, H/8, W/8) bool (True = real), both or neither.

        Returns a dict: keypoints0, keypoints1 (M, 2) in input pixels; confidence (M,); b_ids, i_ids, j_ids (M,);
        intermediates feat_c0/1_backbone and feat_c0/1_transformer (B, C, h, w), conf (B, L, S), mkpts0_c,
        mkpts1_c (M, 2) (8 * (col, row)), idx_l, idx_r (M,) (stage-1 argmax), mkpts0_stage1, mkpts1_stage1,
        fine_stage2_heatmap (M, 3, 3), fine_stage2_offset (M, 2), fine_win0 (M, 64, d0), fine_win1 (M, 100, d0).
        """
        for name, img in (("image0", image0), ("image1", image1)):
            check_size(img, 32, f"efficientloftr {name}")
        if (mask0 is None) != (mask1 is None):
            raise ValueError("efficientloftr: give both padding masks (mask0 and mask1) or neither")
        cfg = self.config
        bs = image0.size(0)
        out = {}
        same = image0.shape[2:] == image1.shape[2:]
        if same:
            x1, x2, c = self.backbone(torch.cat([image0, image1], 0))
            c0, c1 = c.split(bs)
        else:
            (x1_0, x2_0, c0), (x1_1, x2_1, c1) = self.backbone(image0), self.backbone(image1)
        out["feat_c0_backbone"], out["feat_c1_backbone"] = c0, c1
        hw0c, hw1c = c0.shape[2:], c1.shape[2:]
        c0, c1 = self.loftr_coarse(c0, c1, mask0, mask1)
        out["feat_c0_transformer"], out["feat_c1_transformer"] = c0, c1
        f0, f1 = c0.flatten(2).transpose(1, 2), c1.flatten(2).transpose(1, 2)   # (B, L, C)

        mc = cfg["match_coarse"]
        dim = f0.shape[-1]
        ok0, ok1 = border_mask(tuple(hw0c), tuple(hw1c), mc["border_rm"], mask0, mask1, device=f0.device)
        v0 = v1 = None
        if mask0 is not None:
            v0, v1 = mask0.flatten(1), mask1.flatten(1)
        if not mc["skip_softmax"] and bs * f0.shape[1] * f1.shape[1] > DENSE_CONF_MAX_ENTRIES:
            b_ids, i_ids, j_ids, mconf = blockwise_dual_softmax_matches(   # large images: memory-bounded
                f0 / dim ** .5, f1 / dim ** .5, mc["dsmax_temperature"], mc["thr"], ok0, ok1, v0, v1)
        else:
            sim = torch.einsum("nlc,nsc->nls", f0 / dim ** .5, f1 / dim ** .5) / mc["dsmax_temperature"]
            if mask0 is not None:
                sim = sim.masked_fill(~(v0[:, :, None] & v1[:, None, :]), MASKED)
            conf = sim if mc["skip_softmax"] else dual_softmax(sim)
            out["conf"] = conf
            b_ids, i_ids, j_ids, mconf = mutual_matches(conf, mc["thr"], ok0, ok1)
        scale_c = image0.shape[2] / hw0c[0]
        mk0 = cell_centres(i_ids, hw0c[1], scale_c)
        mk1 = cell_centres(j_ids, hw1c[1], scale_c)
        out.update(b_ids=b_ids, i_ids=i_ids, j_ids=j_ids, confidence=mconf, mkpts0_c=mk0, mkpts1_c=mk1)
        if len(b_ids) == 0:
            out.update(keypoints0=mk0, keypoints1=mk1)
            return out

        # the original divides the transformer output by sqrt(C) before the fine FPN ("prevent fp16 overflow")
        w = cfg["fine_window_size"]
        stride = w  # fine map at full resolution: one coarse cell = `w` fine pixels
        if same:
            fine = self.fine_preprocess(torch.cat([c0, c1], 0) / dim ** .5, x2, x1)
            fine0, fine1 = fine.chunk(2, dim=0)
        else:
            fine0 = self.fine_preprocess(c0 / dim ** .5, x2_0, x1_0)
            fine1 = self.fine_preprocess(c1 / dim ** .5, x2_1, x1_1)
        scale_f = image0.shape[2] / (hw0c[0] * w)
        sd = cfg["match_fine"]["local_regress_slicedim"]
        temp = cfg["match_fine"]["local_regress_temperature"]

        def fine(a: int, z: int) -> dict:
            """Both fine stages for matches a..z (independent per match, so they can run in chunks)."""
            win0 = gather_windows(fine0, b_ids[a:z], i_ids[a:z], hw0c[1], stride, w, 0)
            win1 = gather_windows(fine1, b_ids[a:z], j_ids[a:z], hw1c[1], stride, w + 2, 1)
            res = {"fine_win0": win0, "fine_win1": win1}
            # stage 1: dual softmax between the windows, argmax in image 1's inner w x w
            m, ww, cf = win0.shape
            conf_f = torch.einsum("mlc,mrc->mlr", win0[..., :-sd] / cf ** .5, win1[..., :-sd] / cf ** .5)
            conf_ff = torch.einsum("mlc,mrc->mlr", win0[..., -sd:], win1[..., -sd:] / sd ** .5)
            soft = dual_softmax(conf_f).reshape(m, ww, w + 2, w + 2)[..., 1:-1, 1:-1].reshape(m, ww * ww)
            idx = soft.argmax(dim=-1)
            idx_l, idx_r = torch.div(idx, ww, rounding_mode="floor"), idx % ww
            delta_l = torch.stack([idx_l % w, torch.div(idx_l, w, rounding_mode="floor")], -1).float() - w // 2 + 0.5
            delta_r = torch.stack([idx_r % w, torch.div(idx_r, w, rounding_mode="floor")], -1).float() - w // 2 + 0.5
            mk0_s1 = mk0[a:z] + delta_l * scale_f
            mk1_s1 = mk1[a:z] + delta_r * scale_f
            res.update(idx_l=idx_l, idx_r=idx_r, mkpts0_stage1=mk0_s1, mkpts1_stage1=mk1_s1)
            # stage 2: 3x3 patch of the slice correlation at padded indices (iy-1..iy+1, ix-1..ix+1); the
            # original's index -1 wraps to the window's last row / column, kept as is
            iy = torch.div(idx_r, w, rounding_mode="floor")
            ix = idx_r % w
            d = torch.arange(-1, 2, device=idx.device)
            rows = iy[:, None, None] + d[None, :, None]
            cols = ix[:, None, None] + d[None, None, :]
            ffm = conf_ff.reshape(m, ww, w + 2, w + 2)
            patch = ffm[torch.arange(m, device=idx.device)[:, None, None], idx_l[:, None, None], rows, cols]
            heat = F.softmax(patch.reshape(m, 9) / temp, -1).reshape(m, 3, 3)
            offset = spatial_expectation(heat)
            res.update(fine_stage2_heatmap=heat, fine_stage2_offset=offset, keypoints0=mk0_s1,
                       keypoints1=mk1_s1 + offset * (3 // 2) * scale_f)
            return res

        out.update(chunked_concat(fine, len(b_ids), self.fine_chunk))
        return out


def infer_num_blocks(state: dict) -> Optional[list]:
    """Blocks per backbone stage (layer1..3) from the keys of a state_dict, or None when there are none."""
    counts = []
    for stage in (1, 2, 3):
        ids = {int(m.group(1)) for k in state for m in [re.match(rf"backbone\.layer{stage}\.(\d+)\.", k)] if m}
        if not ids:
            return None
        counts.append(max(ids) + 1)
    return counts


class EfficientLoFTR(PaddedPairMatcher):
    """EfficientLoFTR matcher: two images -> `PairMatches` (see the module docstring).

    Config:
      config:         the original's nested config dict (as `full_default_cfg` / `opt_default_cfg`), merged over
                      `full_default_cfg`; `backbone.num_blocks` (blocks of layer1..3, e.g. [2, 4, 14]) is ours:
                      None = read from the weights file (else the original's [2, 4, 14]).
      weights:        checkpoint path (Lightning `state_dict` with `matcher.` prefixes, or a bare state_dict in
                      the training layout), loaded strictly; None = the official eloftr_outdoor.ckpt.
      reparameterize: fuse the RepVGG branches after loading (the original README's "essential" speed step;
                      outputs change by float rounding only). Default False, which reproduces the original's
                      unfused outputs bit for bit in the tests.
      precision:      'fp32' (default) or 'bf16' (torch autocast of the network, softmaxes in float32).
      resize_max, device: as every model.
    """

    name = "efficientloftr"
    input_mode = "gray"
    default_conf = {"config": None, "weights": None, "reparameterize": False, "precision": "fp32"}
    multiple = 32

    def __init__(self, **conf):
        super().__init__(**conf)
        self.check_choice("precision", ("fp32", "bf16"))
        config = merge_nested(DEFAULT_CONFIG, self.conf["config"], self.name)
        spec = WEIGHTS["outdoor"]
        path = hub.find_weights(spec, override=self.conf["weights"])
        if config["backbone"]["num_blocks"] is None:
            state = checkpoint_state_dict(state_dict_from_file(path, entries=("state_dict",)), path)
            found = infer_num_blocks(state)
            if found is not None and tuple(found) != OFFICIAL_NUM_BLOCKS:
                logger.info("efficientloftr: %s has %s backbone blocks per stage", path, found)
            config["backbone"]["num_blocks"] = found or list(OFFICIAL_NUM_BLOCKS)
        self.config = config
        self.net = EfficientLoFTRNet(config)
        self.weights_path = load_weights(self.net, spec, path, model=self.name, entries=("state_dict",),
                                         convert=checkpoint_state_dict)
        if self.conf["reparameterize"]:
            self.net.reparameterize()
        self.net.to(self.device).eval()

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        return [WEIGHTS["outdoor"]]
