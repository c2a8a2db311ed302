"""LoFTR: Detector-Free Local Feature Matching with Transformers (Sun et al., CVPR 2021), in plain PyTorch.

Re-implementation of zju3dv/LoFTR (commit df7ca80; Apache-2.0) that loads its official checkpoints and
kornia's re-saved files strictly by key (the state_dict names are the original's):

- `backbone`: ResNet-FPN (stride-2 7x7 conv, three stages of two BasicBlocks) giving a 1/8 coarse map
  (`layer3_outconv`) and a 1/2 fine map (FPN with bilinear align_corners=True upsampling);
- sinusoidal positional encoding added to the coarse map (`temp_bug_fix=False` reproduces the frequencies
  of the outdoor/indoor "buggy_pos_enc" weights);
- `loftr_coarse`: self/cross layers of linear attention (elu + 1 feature map); the cross layers update
  image 0 first and image 1 with the UPDATED image 0, with one set of weights;
- `coarse_matching`: dual softmax (temperature `dsmax_temperature`) or optimal transport with a dustbin
  (`bin_score`, log-domain Sinkhorn written from the SuperGlue paper), then conf > thr, border removal and
  mutual nearest neighbours;
- `fine_preprocess` + `loftr_fine`: 5x5 windows of the 1/2 map around each match, merged with the
  projected coarse feature, one self + one cross layer;
- fine matching: heatmap softmax(<f0[centre], f1> / sqrt(C)) of image 1's window, its expectation moves
  keypoints1 by up to (W // 2) fine pixels; keypoints0 stay the coarse cell positions 8 * (col, row).

Input rules of the original: grayscale (B, 1, H, W) in [0, 1], H and W multiples of 8, optional coarse
padding masks. `match_images` converts any uint8 image (RGB is converted to gray), zero-pads to a multiple
of 8 and passes the padding masks. Keypoints are the original's raw coordinates (a cell (c, r) sits at pixel
(8c, 8r), the centre of its receptive field in the pixel-centre convention); no half-pixel shift is applied.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import hub
from ..checkpoints import load_weights
from ..config import ConfigError
from ._semidense import (PaddedPairMatcher, DENSE_CONF_MAX_ENTRIES, MASKED, blockwise_dual_softmax_matches, border_mask,
                         cell_centres, check_size, checkpoint_state_dict, chunked_concat, dual_softmax, gather_windows,
                         log_optimal_transport, merge_nested, mutual_matches, normalized_grid, spatial_expectation)

logger = logging.getLogger(__name__)

# The original's src/config/default.py LOFTR section merged with configs/loftr/outdoor/buggy_pos_enc/loftr_ds.py
# (what its test scripts run with outdoor_ds.ckpt); training-only keys are accepted and unused.
DEFAULT_CONFIG = {
    "backbone_type": "ResNetFPN",
    "resolution": (8, 2),
    "fine_window_size": 5,
    "fine_concat_coarse_feat": True,
    "resnetfpn": {"initial_dim": 128, "block_dims": [128, 196, 256]},
    "coarse": {"d_model": 256, "d_ffn": 256, "nhead": 8, "layer_names": ["self", "cross"] * 4,
               "attention": "linear", "temp_bug_fix": False},
    "match_coarse": {"thr": 0.2, "border_rm": 2, "match_type": "dual_softmax", "dsmax_temperature": 0.1,
                     "skh_iters": 3, "skh_init_bin_score": 1.0, "skh_prefilter": False,
                     "train_coarse_percent": 0.3, "train_pad_num_gt_min": 200, "sparse_spvs": True},
    "fine": {"d_model": 128, "d_ffn": 128, "nhead": 8, "layer_names": ["self", "cross"], "attention": "linear"},
    "loss": {"coarse_type": "focal", "coarse_weight": 1.0, "focal_alpha": 0.25, "focal_gamma": 2.0,
             "pos_weight": 1.0, "neg_weight": 1.0, "fine_type": "l2_with_std", "fine_weight": 1.0,
             "fine_correct_thr": 1.0},
}

# pretrained name -> (config changes, official file). The zju3dv files are on Google Drive only (folder
# https://drive.google.com/drive/folders/1DOcOPZb3-5cWxLqn256AhwUVjBPifhuf), so no direct URL; kornia's
# re-saved files have URLs. sha256: not published and the files were not available offline, so None.
_DRIVE = "Apache-2.0 (zju3dv/LoFTR; download from the Google Drive folder linked in its README)"
_KORNIA = "https://huggingface.co/kornia/loftr/resolve/main/", "https://cmp.felk.cvut.cz/~mishkdmy/models/"
WEIGHTS = {
    "outdoor_ds": hub.WeightSpec("outdoor_ds.ckpt", (), None, _DRIVE),
    "outdoor_ot": hub.WeightSpec("outdoor_ot.ckpt", (), None, _DRIVE),
    "indoor_ds": hub.WeightSpec("indoor_ds.ckpt", (), None, _DRIVE),
    "indoor_ot": hub.WeightSpec("indoor_ot.ckpt", (), None, _DRIVE),
    "indoor_ds_new": hub.WeightSpec("indoor_ds_new.ckpt", (), None, _DRIVE),
    "kornia_outdoor": hub.WeightSpec("loftr_outdoor.ckpt", tuple(u + "loftr_outdoor.ckpt" for u in _KORNIA),
                                     None, "Apache-2.0"),
    "kornia_indoor": hub.WeightSpec("loftr_indoor.ckpt", tuple(u + "loftr_indoor.ckpt" for u in _KORNIA),
                                    None, "Apache-2.0"),
    "kornia_indoor_new": hub.WeightSpec("loftr_indoor_ds_new.ckpt",
                                        tuple(u + "loftr_indoor_ds_new.ckpt" for u in _KORNIA), None, "Apache-2.0"),
}
PRETRAINED_CONFIG = {
    "outdoor_ds": {},
    "outdoor_ot": {"match_coarse": {"match_type": "sinkhorn"}},
    "indoor_ds": {},
    "indoor_ot": {"match_coarse": {"match_type": "sinkhorn"}},
    "indoor_ds_new": {"coarse": {"temp_bug_fix": True}},
    "kornia_outdoor": {},
    "kornia_indoor": {},
    "kornia_indoor_new": {"coarse": {"temp_bug_fix": True}},
}


# ------------------------------------------------------------------------------------------------ backbone
def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=False)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv + BN when strided), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.conv2 = _conv3x3(cout, cout)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 else nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


def _fpn_head(cin: int, cmid: int, cout: int) -> nn.Sequential:
    # keys .0 / .1 / .3 of the original
    return nn.Sequential(_conv3x3(cin, cmid), nn.BatchNorm2d(cmid), nn.LeakyReLU(), _conv3x3(cmid, cout))


class ResNetFPN82(nn.Module):
    """ResNet-FPN of LoFTR: x (B, 1, H, W) -> coarse (B, d2, H/8, W/8), fine (B, d0, H/2, W/2), d = block_dims."""

    def __init__(self, initial_dim: int, block_dims):
        super().__init__()
        d0, d1, d2 = block_dims
        self.conv1 = nn.Conv2d(1, initial_dim, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(initial_dim)
        self.layer1 = nn.Sequential(BasicBlock(initial_dim, d0, 1), BasicBlock(d0, d0))
        self.layer2 = nn.Sequential(BasicBlock(d0, d1, 2), BasicBlock(d1, d1))
        self.layer3 = nn.Sequential(BasicBlock(d1, d2, 2), BasicBlock(d2, d2))
        self.layer3_outconv = _conv1x1(d2, d2)
        self.layer2_outconv = _conv1x1(d1, d2)
        self.layer2_outconv2 = _fpn_head(d2, d2, d1)
        self.layer1_outconv = _conv1x1(d0, d1)
        self.layer1_outconv2 = _fpn_head(d1, d1, d0)

    def forward(self, x: torch.Tensor):
        x1 = self.layer1(F.relu(self.bn1(self.conv1(x))))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        coarse = self.layer3_outconv(x3)
        up = F.interpolate(coarse, scale_factor=2., mode="bilinear", align_corners=True)
        x2_out = self.layer2_outconv2(self.layer2_outconv(x2) + up)
        up = F.interpolate(x2_out, scale_factor=2., mode="bilinear", align_corners=True)
        fine = self.layer1_outconv2(self.layer1_outconv(x1) + up)
        return coarse, fine


# ------------------------------------------------------------------------------------------- transformer
def sine_position_encoding(d_model: int, h: int, w: int, temp_bug_fix: bool, device=None) -> torch.Tensor:
    """LoFTR's 2-D sinusoidal encoding (1, d_model, h, w): channels [sin x, cos x, sin y, cos y] interleaved
    with stride 4, positions starting at 1. `temp_bug_fix=False` keeps the original's frequency exponent
    `(-log(10000) / d) // 2` (= -1), which its buggy_pos_enc weights were trained with."""
    if temp_bug_fix:
        factor = -math.log(10000.0) / (d_model // 2)
    else:
        factor = -math.log(10000.0) / d_model // 2
    div = torch.exp(torch.arange(0, d_model // 2, 2, device=device).float() * factor)[:, None, None]
    y = torch.ones(h, w, device=device).cumsum(0).float()[None]
    x = torch.ones(h, w, device=device).cumsum(1).float()[None]
    pe = torch.zeros(d_model, h, w, device=device)
    pe[0::4] = torch.sin(x * div)
    pe[1::4] = torch.cos(x * div)
    pe[2::4] = torch.sin(y * div)
    pe[3::4] = torch.cos(y * div)
    return pe[None]


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_mask: Optional[torch.Tensor] = None,
                     kv_mask: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention ("Transformers are RNNs"), feature map elu + 1: q (B, L, H, D), k, v (B, S, H, D),
    masks (B, L) / (B, S) (True = real token). Returns (B, L, H, D). Values are divided by S and the result
    multiplied back (the original's guard against fp16 overflow)."""
    q = F.elu(q) + 1
    k = F.elu(k) + 1
    if q_mask is not None:
        q = q * q_mask[:, :, None, None]
    if kv_mask is not None:
        k = k * kv_mask[:, :, None, None]
        v = v * kv_mask[:, :, None, None]
    s = v.size(1)
    v = v / s
    kv = torch.einsum("nshd,nshv->nhdv", k, v)
    z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * s


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_mask: Optional[torch.Tensor] = None,
                   kv_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention with temperature 1 / sqrt(D): q (B, L, H, D), k, v (B, S, H, D) -> (B, L, H, D)."""
    qk = torch.einsum("nlhd,nshd->nlsh", q, k)
    if kv_mask is not None:
        qk = qk.masked_fill(~(q_mask[:, :, None, None] & kv_mask[:, None, :, None]), float("-inf"))
    a = torch.softmax(qk / q.size(3) ** .5, dim=2)
    return torch.einsum("nlsh,nshd->nlhd", a, v)


class EncoderLayer(nn.Module):
    """x + norm2(mlp([x, norm1(merge(attention(q(x), k(src), v(src))))])), MLP 2C -> 2C -> C, no biases."""

    def __init__(self, d_model: int, nhead: int, attention: str):
        super().__init__()
        self.nhead, self.dim = nhead, d_model // nhead
        self.attention = linear_attention if attention == "linear" else full_attention
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, 2 * d_model, bias=False), nn.ReLU(True),
                                 nn.Linear(2 * d_model, d_model, bias=False))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, source, x_mask=None, source_mask=None):
        b = x.size(0)
        q = self.q_proj(x).view(b, -1, self.nhead, self.dim)
        k = self.k_proj(source).view(b, -1, self.nhead, self.dim)
        v = self.v_proj(source).view(b, -1, self.nhead, self.dim)
        message = self.attention(q, k, v, x_mask, source_mask)
        message = self.norm1(self.merge(message.reshape(b, -1, self.nhead * self.dim)))
        return x + self.norm2(self.mlp(torch.cat([x, message], dim=2)))


class LocalFeatureTransformer(nn.Module):
    """Self / cross layers named by `layer_names`; feat0 (B, L, C), feat1 (B, S, C) -> same shapes."""

    def __init__(self, conf: dict):
        super().__init__()
        self.layer_names = list(conf["layer_names"])
        bad = sorted(set(self.layer_names) - {"self", "cross"})
        if bad:
            raise ConfigError(f"loftr: layer_names may hold 'self' and 'cross' only, got {bad}")
        if conf["attention"] not in ("linear", "full"):
            raise ConfigError(f"loftr: attention must be 'linear' or 'full', got {conf['attention']!r}")
        self.layers = nn.ModuleList(EncoderLayer(conf["d_model"], conf["nhead"], conf["attention"])
                                    for _ in self.layer_names)

    def forward(self, feat0, feat1, mask0=None, mask1=None):
        for layer, name in zip(self.layers, self.layer_names):
            if name == "self":
                feat0 = layer(feat0, feat0, mask0, mask0)
                feat1 = layer(feat1, feat1, mask1, mask1)
            else:  # sequential: image 1 attends to the already updated image 0
                feat0 = layer(feat0, feat1, mask0, mask1)
                feat1 = layer(feat1, feat0, mask1, mask0)
        return feat0, feat1


# ---------------------------------------------------------------------------------------- coarse matching
class CoarseMatching(nn.Module):
    """Confidence matrix (B, L, S) by dual softmax or optimal transport; holds `bin_score` for the latter."""

    def __init__(self, conf: dict):
        super().__init__()
        self.conf = conf
        self.match_type = conf["match_type"]
        if self.match_type == "sinkhorn":
            self.bin_score = nn.Parameter(torch.tensor(float(conf["skh_init_bin_score"])))
        elif self.match_type != "dual_softmax":
            raise ConfigError(f"loftr: match_coarse.match_type must be 'dual_softmax' or 'sinkhorn', "
                              f"got {self.match_type!r}")

    def forward(self, feat0: torch.Tensor, feat1: torch.Tensor, mask0=None, mask1=None) -> dict:
        """feat0 (B, L, C), feat1 (B, S, C), masks (B, L) / (B, S) bool. Returns {'conf' (B, L, S)} and, for
        OT, {'conf_with_bin' (B, L + 1, S + 1)} (the exp of the log assignment)."""
        c = feat0.shape[-1]
        feat0, feat1 = feat0 / c ** .5, feat1 / c ** .5
        sim = torch.einsum("nlc,nsc->nls", feat0, feat1)
        valid = None if mask0 is None else mask0[:, :, None] & mask1[:, None, :]
        if self.match_type == "dual_softmax":
            sim = sim / self.conf["dsmax_temperature"]
            if valid is not None:
                sim = sim.masked_fill(~valid, MASKED)
            return {"conf": dual_softmax(sim)}
        if valid is not None:
            sim = sim.masked_fill(~valid, MASKED)
        assign = log_optimal_transport(sim, self.bin_score, self.conf["skh_iters"]).exp()
        conf = assign[:, :-1, :-1]
        if self.conf["skh_prefilter"] and not self.training:
            l, s = conf.shape[1:]
            to_bin0 = (assign.max(dim=2)[1] == s)[:, :-1]
            to_bin1 = (assign.max(dim=1)[1] == l)[:, :-1]
            conf = conf.masked_fill(to_bin0[:, :, None] | to_bin1[:, None, :], 0)
        return {"conf": conf, "conf_with_bin": assign}


# ------------------------------------------------------------------------------------------------- model
class LoFTRNet(nn.Module):
    """The LoFTR network; state_dict keys equal the original's. See the module docstring."""

    def __init__(self, config: dict):
        super().__init__()
        c = config
        if c["backbone_type"] != "ResNetFPN" or tuple(c["resolution"]) != (8, 2):
            raise ConfigError(f"loftr: only backbone_type 'ResNetFPN' at resolution (8, 2) is implemented (the "
                              f"released weights), got {c['backbone_type']!r} {tuple(c['resolution'])}")
        dims = list(c["resnetfpn"]["block_dims"])
        if c["coarse"]["d_model"] != dims[2] or c["fine"]["d_model"] != dims[0]:
            raise ConfigError(f"loftr: coarse.d_model must equal resnetfpn.block_dims[2] and fine.d_model "
                              f"block_dims[0]; got {c['coarse']['d_model']}, {c['fine']['d_model']} for {dims}")
        if not c["fine_concat_coarse_feat"]:
            raise ConfigError("loftr: fine_concat_coarse_feat=False is not implemented (no released weights use it)")
        self.config = c
        self.window = int(c["fine_window_size"])
        self.fine_chunk = 8192   # matches per fine-stage chunk (bounds memory; chunking changes float rounding only)
        self.backbone = ResNetFPN82(c["resnetfpn"]["initial_dim"], dims)
        self.loftr_coarse = LocalFeatureTransformer(c["coarse"])
        self.coarse_matching = CoarseMatching(c["match_coarse"])
        self.fine_preprocess = nn.Module()
        self.fine_preprocess.down_proj = nn.Linear(dims[2], dims[0], bias=True)
        self.fine_preprocess.merge_feat = nn.Linear(2 * dims[0], dims[0], bias=True)
        self.loftr_fine = LocalFeatureTransformer(c["fine"])

    def forward(self, image0: torch.Tensor, image1: torch.Tensor, mask0: Optional[torch.Tensor] = None,
                mask1: Optional[torch.Tensor] = None) -> dict:
        """image0/1 (B, 1, H, W) float in [0, 1], H and W multiples of 8 (the two sizes may differ);
        mask0/1 optional COARSE padding masks (B, H/8, W/8) bool (True = real), both or neither.

        Returns a dict: keypoints0, keypoints1 (M, 2) in input pixels; confidence (M,); b_ids, i_ids, j_ids
        (M,) coarse matches; and the intermediates feat_c0/1_backbone (B, C, h, w), feat_c0/1 (B, L, C)
        (transformer outputs), conf (B, L, S), expec_f (M, 3), fine_heatmap (M, W, W), mkpts0_c, mkpts1_c.
        """
        for name, img in (("image0", image0), ("image1", image1)):
            check_size(img, 8, f"loftr {name}")
        if (mask0 is None) != (mask1 is None):
            raise ValueError("loftr: give both padding masks (mask0 and mask1) or neither")
        out = {}
        bs = image0.size(0)
        if image0.shape[2:] == image1.shape[2:]:  # one batch: same numerics as the original
            coarse, fine = self.backbone(torch.cat([image0, image1], 0))
            (c0, c1), (f0, f1) = coarse.split(bs), fine.split(bs)
        else:
            (c0, f0), (c1, f1) = self.backbone(image0), self.backbone(image1)
        out["feat_c0_backbone"], out["feat_c1_backbone"] = c0, c1
        hw0c, hw1c, hw0f = c0.shape[2:], c1.shape[2:], f0.shape[2:]
        temp_bug_fix = self.config["coarse"]["temp_bug_fix"]
        c0 = (c0 + sine_position_encoding(c0.shape[1], *hw0c, temp_bug_fix, c0.device)).flatten(2).transpose(1, 2)
        c1 = (c1 + sine_position_encoding(c1.shape[1], *hw1c, temp_bug_fix, c1.device)).flatten(2).transpose(1, 2)
        m0 = m1 = None
        if mask0 is not None:
            m0, m1 = mask0.flatten(1).bool(), mask1.flatten(1).bool()
            c0, c1 = self.loftr_coarse(c0, c1, m0.to(c0.dtype), m1.to(c1.dtype))
        else:
            c0, c1 = self.loftr_coarse(c0, c1)
        out["feat_c0"], out["feat_c1"] = c0, c1

        mc = self.config["match_coarse"]
        ok0, ok1 = border_mask(tuple(hw0c), tuple(hw1c), mc["border_rm"], mask0, mask1, device=c0.device)
        big = bs * c0.shape[1] * c1.shape[1] > DENSE_CONF_MAX_ENTRIES
        if self.coarse_matching.match_type == "dual_softmax" and big:
            d = c0.shape[-1] ** .5   # large images: matches without the (L, S) matrices (memory-bounded)
            b_ids, i_ids, j_ids, mconf = blockwise_dual_softmax_matches(
                c0 / d, c1 / d, mc["dsmax_temperature"], mc["thr"], ok0, ok1, m0, m1)
        else:
            cm = self.coarse_matching(c0, c1, m0, m1)
            out.update(cm)
            b_ids, i_ids, j_ids, mconf = mutual_matches(cm["conf"], mc["thr"], ok0, ok1)
        scale_c = image0.shape[2] / hw0c[0]
        mk0 = cell_centres(i_ids, hw0c[1], scale_c)
        mk1 = cell_centres(j_ids, hw1c[1], scale_c)
        out.update(b_ids=b_ids, i_ids=i_ids, j_ids=j_ids, confidence=mconf, mkpts0_c=mk0, mkpts1_c=mk1)

        w = self.window
        if len(b_ids) == 0:
            out.update(keypoints0=mk0, keypoints1=mk1, expec_f=c0.new_zeros(0, 3),
                       fine_heatmap=c0.new_zeros(0, w, w))
            return out
        stride = hw0f[0] // hw0c[0]
        scale_f = image0.shape[2] / hw0f[0]

        def fine(a: int, z: int) -> dict:
            """The fine stage of matches a..z (independent per match, so it can run in chunks)."""
            bi, ii, jj = b_ids[a:z], i_ids[a:z], j_ids[a:z]
            win0 = gather_windows(f0, bi, ii, hw0c[1], stride, w, w // 2)
            win1 = gather_windows(f1, bi, jj, hw1c[1], stride, w, w // 2)
            res = {"fine_win_raw0": win0, "fine_win_raw1": win1}
            fp = self.fine_preprocess
            down = fp.down_proj(torch.cat([c0[bi, ii], c1[bi, jj]], 0))
            merged = fp.merge_feat(torch.cat([torch.cat([win0, win1], 0),
                                              down[:, None, :].expand(-1, w * w, -1)], -1))
            win0, win1 = merged.chunk(2, dim=0)
            res["fine_feat0_preprocessed"], res["fine_feat1_preprocessed"] = win0, win1
            win0, win1 = self.loftr_fine(win0, win1)
            res["fine_feat0_transformed"], res["fine_feat1_transformed"] = win0, win1
            c = win0.shape[-1]
            sim = torch.einsum("mc,mrc->mr", win0[:, (w * w) // 2, :], win1)
            heatmap = torch.softmax((1. / c ** .5) * sim, dim=1).view(-1, w, w)
            coords = spatial_expectation(heatmap)
            grid = normalized_grid(w, heatmap.device)
            var = (grid[None] ** 2 * heatmap.view(-1, w * w, 1)).sum(1) - coords ** 2
            std = torch.sqrt(torch.clamp(var, min=1e-10)).sum(-1)
            res.update(expec_f=torch.cat([coords, std[:, None]], -1), fine_heatmap=heatmap,
                       keypoints1=mk1[a:z] + coords * (w // 2) * scale_f)
            return res

        out.update(chunked_concat(fine, len(b_ids), self.fine_chunk))
        out["keypoints0"] = mk0
        return out


def resolve_config(pretrained: str, config: Optional[dict], where: str = "loftr") -> dict:
    """The full nested config: the original's defaults, the changes of the `pretrained` file, then `config`."""
    base = merge_nested(DEFAULT_CONFIG, PRETRAINED_CONFIG[pretrained], where)
    return merge_nested(base, config, where)


class LoFTR(PaddedPairMatcher):
    """LoFTR matcher: two images -> `PairMatches` (see the module docstring).

    Config:
      pretrained: which official file (and its config changes): 'outdoor_ds' (default), 'outdoor_ot',
                  'indoor_ds', 'indoor_ot', 'indoor_ds_new', or kornia's 'kornia_outdoor', 'kornia_indoor',
                  'kornia_indoor_new'.
      config:     the original's nested config dict (lower-case keys, as `lower_config(cfg.LOFTR)` or kornia's
                  `default_cfg`), merged over the defaults; e.g. {'match_coarse': {'thr': 0.3}}. Unknown keys
                  are errors.
      weights:    a checkpoint path (Lightning `state_dict` with `matcher.` prefixes, or a bare state_dict),
                  loaded strictly; None = the official file of `pretrained` (see `localfeat.hub`).
      precision:  'fp32' (default; the parity tests) or 'bf16' (torch autocast of the network: convolutions,
                  linear layers and matmuls in bfloat16, softmaxes in float32; faster on CPUs with AVX512-BF16/AMX
                  and on GPUs, coarser keypoints).
      resize_max, device: as every model.
    """

    name = "loftr"
    input_mode = "gray"
    default_conf = {"pretrained": "outdoor_ds", "config": None, "weights": None, "precision": "fp32"}
    multiple = 8

    def __init__(self, **conf):
        super().__init__(**conf)
        self.check_choice("pretrained", WEIGHTS)
        self.check_choice("precision", ("fp32", "bf16"))
        self.config = resolve_config(self.conf["pretrained"], self.conf["config"], self.name)
        self.net = LoFTRNet(self.config)
        self.weights_path = load_weights(self.net, WEIGHTS[self.conf["pretrained"]], self.conf["weights"],
                                         model=self.name, entries=("state_dict",), convert=checkpoint_state_dict)
        self.net.to(self.device).eval()

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        return [WEIGHTS[conf.get("pretrained", cls.default_conf["pretrained"])]]
