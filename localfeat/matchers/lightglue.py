"""LightGlue (Lindenberger, Sarlin, Pollefeys, ICCV 2023): a transformer matcher with adaptive
depth (early stopping) and width (point pruning), compatible with the official weights of
cvg/LightGlue for SuperPoint, DISK and ALIKED features.

Architecture, as in the release (the state_dict key names are those of the official files):

- keypoints (x, y) in pixels -> (kpts - size / 2) / (max(W, H) / 2), size = (W, H) of the image;
- descriptors (N, input_dim) -> `input_proj` Linear to 256-D (Identity when input_dim is 256);
- rotary positional encoding: `posenc.Wr` Linear(2 -> 32), [cos, sin] each repeated twice -> 64 = head dim;
- n_layers x (self-attention block with rotary q/k, bidirectional cross-attention block with a
  shared q/k projection), each block adding FFN([x, message]) to x;
- per layer: `log_assignment` (similarity + matchability -> log assignment (M+1, N+1) with dustbins)
  and `token_confidence` (for early stopping and pruning);
- matches: mutual argmax of the log assignment whose exp exceeds `filter_threshold`.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import hub
from ..checkpoints import state_dict_from_file
from ..hub import CheckpointError
from ..registry import ConfigError, model_classes
from ..types import Features, Matches
from .base import Matcher

logger = logging.getLogger(__name__)


def paired_features() -> dict:
    """extractor name -> its LightGlue pairing {'weights': WeightSpec, 'input_dim': D}: the `lightglue`
    class attribute of every registered extractor that has official LightGlue weights (the table is
    declared by the extractors, in their own modules)."""
    return {name: cls.lightglue for name, cls in model_classes("extractor").items()
            if getattr(cls, "lightglue", None)}


DESCRIPTOR_DIM = 256
NUM_HEADS = 4
# Pruning costs a gather; the original prunes only above this many keypoints per image
# (CPU: always; CUDA: 1536, its threshold with its default flash=True).
PRUNING_MIN_KEYPOINTS = {"cpu": -1, "mps": -1, "cuda": 1536}


# ------------------------------------------------------------------------------------ network
def normalize_keypoints(kpts: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Pixel keypoints (B, N, 2) of images of size (B, 2) = (W, H) -> centred coordinates,
    (kpts - size / 2) / (max(W, H) / 2): the longer side spans [-1, 1]."""
    size = size.to(kpts)
    shift = size / 2
    scale = size.max(-1).values / 2
    return (kpts - shift[..., None, :]) / scale[..., None, None]


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(..., 2k) -> (..., 2k) with each consecutive pair (a, b) replaced by (-b, a)."""
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-b, a), -1).flatten(-2)


def apply_rotary(encoding: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Rotary embedding: encoding (2, B, 1, N, d) = [cos, sin], x (B, heads, N, d)."""
    return x * encoding[0] + _rotate_pairs(x) * encoding[1]


def _ffn(dim: int) -> nn.Sequential:
    # Key names ffn.0 / ffn.1 / ffn.3 of the release.
    return nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


class FourierPositionalEncoding(nn.Module):
    """Learnable Fourier features: (B, N, 2) -> (2, B, 1, N, head_dim) = [cos, sin]."""

    def __init__(self, in_dim: int, head_dim: int):
        super().__init__()
        self.Wr = nn.Linear(in_dim, head_dim // 2, bias=False)
        nn.init.normal_(self.Wr.weight, mean=0.0, std=1.0)

    def forward(self, kpts: torch.Tensor) -> torch.Tensor:
        projected = self.Wr(kpts)
        emb = torch.stack([torch.cos(projected), torch.sin(projected)], 0).unsqueeze(-3)
        return emb.repeat_interleave(2, dim=-1)


class SelfBlock(nn.Module):
    """Self-attention with rotary encoding; q, k, v interleaved per head in `Wqkv`'s output."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.Wqkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.ffn = _ffn(dim)

    def forward(self, x: torch.Tensor, encoding: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), encoding (2, B, 1, N, D / heads) -> (B, N, D)."""
        qkv = self.Wqkv(x).unflatten(-1, (self.heads, -1, 3)).transpose(1, 2)  # (B, h, N, d, 3)
        q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
        q, k = apply_rotary(encoding, q), apply_rotary(encoding, k)
        if q.shape[-2] == 0:
            context = q.new_zeros(q.shape)
        else:
            context = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        message = self.out_proj(context.transpose(1, 2).flatten(-2))
        return x + self.ffn(torch.cat([x, message], -1))


class CrossBlock(nn.Module):
    """Bidirectional cross-attention: one similarity matrix, softmax over each of its two axes."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.to_qk = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.ffn = _ffn(dim)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 (B, M, D), x1 (B, N, D) -> updated (x0, x1)."""
        def heads(t):
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, h, n, d)

        qk0, qk1 = heads(self.to_qk(x0)), heads(self.to_qk(x1))
        v0, v1 = heads(self.to_v(x0)), heads(self.to_v(x1))
        # Both sides scaled by d^-1/4, so that sim carries d^-1/2 as in the release.
        qk0, qk1 = qk0 * self.scale ** 0.5, qk1 * self.scale ** 0.5
        sim = qk0 @ qk1.transpose(-1, -2)  # (B, h, M, N)
        m0 = F.softmax(sim, -1) @ v1
        # Softmax over M in place of the original's transposed copy of sim (B x h x N x M floats per layer):
        # the same values (~5e-7), and the cross block runs ~1.2x faster on CPU.
        m1 = F.softmax(sim, -2).transpose(-1, -2) @ v0
        m0 = self.to_out(m0.transpose(1, 2).flatten(-2))
        m1 = self.to_out(m1.transpose(1, 2).flatten(-2))
        return x0 + self.ffn(torch.cat([x0, m0], -1)), x1 + self.ffn(torch.cat([x1, m1], -1))


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = SelfBlock(dim, heads)
        self.cross_attn = CrossBlock(dim, heads)

    def forward(self, desc0, desc1, encoding0, encoding1):
        return self.cross_attn(self.self_attn(desc0, encoding0), self.self_attn(desc1, encoding1))


def log_double_softmax(sim: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Log assignment (B, M+1, N+1) from similarity (B, M, N) and matchability logits z0 (B, M, 1),
    z1 (B, N, 1): log_softmax over rows + over columns + logsigmoid(z0) + logsigmoid(z1); the dustbin
    column/row hold logsigmoid(-z)."""
    b, m, n = sim.shape
    certainties = F.logsigmoid(z0) + F.logsigmoid(z1).transpose(1, 2)
    scores0 = F.log_softmax(sim, 2)
    scores1 = F.log_softmax(sim, 1)  # over rows, without the original's transposed copy (~1.9x faster)
    out = sim.new_zeros((b, m + 1, n + 1))
    out[:, :m, :n] = scores0 + scores1 + certainties
    out[:, :-1, -1] = F.logsigmoid(-z0.squeeze(-1))
    out[:, -1, :-1] = F.logsigmoid(-z1.squeeze(-1))
    return out


class MatchAssignment(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.matchability = nn.Linear(dim, 1)
        self.final_proj = nn.Linear(dim, dim)

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """desc0 (B, M, D), desc1 (B, N, D) -> (log assignment (B, M+1, N+1), similarity (B, M, N))."""
        md0, md1 = self.final_proj(desc0), self.final_proj(desc1)
        d = md0.shape[-1]
        md0, md1 = md0 / d ** 0.25, md1 / d ** 0.25
        sim = md0 @ md1.transpose(-1, -2)
        return log_double_softmax(sim, self.matchability(desc0), self.matchability(desc1)), sim

    def matchability_probability(self, desc: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N) probability that each point has a match."""
        return torch.sigmoid(self.matchability(desc)).squeeze(-1)


class TokenConfidence(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.token = nn.Sequential(nn.Linear(dim, 1), nn.Sigmoid())

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M, D), (B, N, D) -> confidences (B, M), (B, N) that a point's assignment is final."""
        return self.token(desc0.detach()).squeeze(-1), self.token(desc1.detach()).squeeze(-1)


def mutual_assignment(log_assignment: torch.Tensor, threshold: Optional[float]):
    """Matches from a log assignment (B, M+1, N+1): mutual argmax over the non-dustbin block.

    Returns matches0 (B, M) / matches1 (B, N) int64 (-1 = unmatched), and scores0 (B, M) / scores1 (B, N)
    = exp of the mutual entries (0 where not mutual). A mutual pair is a match when its score > threshold
    (None: every mutual pair).
    """
    block = log_assignment[:, :-1, :-1]
    max0, max1 = block.max(2), block.max(1)
    m0, m1 = max0.indices, max1.indices
    idx0 = torch.arange(m0.shape[1], device=m0.device)[None]
    idx1 = torch.arange(m1.shape[1], device=m1.device)[None]
    mutual0 = idx0 == m1.gather(1, m0)
    mutual1 = idx1 == m0.gather(1, m1)
    best = max0.values.exp()
    zero = best.new_tensor(0)
    scores0 = torch.where(mutual0, best, zero)
    scores1 = torch.where(mutual1, scores0.gather(1, m1), zero)
    valid0 = mutual0 if threshold is None else mutual0 & (scores0 > threshold)
    valid1 = mutual1 & valid0.gather(1, m1)
    return torch.where(valid0, m0, -1), torch.where(valid1, m1, -1), scores0, scores1


class LightGlueNet(nn.Module):
    """The LightGlue network, module names as in the official state_dicts.

    input_dim: descriptor dimension of the features (256 SuperPoint, 128 DISK / ALIKED).
    depth_confidence / width_confidence: None = no early stopping / no pruning.
    """

    def __init__(self, input_dim: int = 256, n_layers: int = 9, depth_confidence: Optional[float] = 0.95,
                 width_confidence: Optional[float] = 0.99, filter_threshold: Optional[float] = 0.1,
                 descriptor_dim: int = DESCRIPTOR_DIM, num_heads: int = NUM_HEADS):
        super().__init__()
        self.n_layers = n_layers
        self.depth_confidence = depth_confidence
        self.width_confidence = width_confidence
        self.filter_threshold = filter_threshold
        d = descriptor_dim
        self.input_proj = nn.Linear(input_dim, d) if input_dim != d else nn.Identity()
        self.posenc = FourierPositionalEncoding(2, d // num_heads)
        self.transformers = nn.ModuleList([TransformerLayer(d, num_heads) for _ in range(n_layers)])
        self.log_assignment = nn.ModuleList([MatchAssignment(d) for _ in range(n_layers)])
        self.token_confidence = nn.ModuleList([TokenConfidence(d) for _ in range(n_layers - 1)])
        # Stricter confidence asked of early layers: 0.8 + 0.1 exp(-4 i / L), clipped to [0, 1].
        thresholds = [float(np.clip(0.8 + 0.1 * np.exp(-4.0 * i / n_layers), 0, 1)) for i in range(n_layers)]
        self.register_buffer("confidence_thresholds", torch.tensor(thresholds, dtype=torch.float32))

    def _stop(self, token0: torch.Tensor, token1: torch.Tensor, layer: int, num_points: int) -> bool:
        # num_points counts all input points, also those pruned earlier (as the release does).
        threshold = self.confidence_thresholds[layer]
        unconfident = (torch.cat([token0, token1], -1) < threshold).float().sum()
        return bool(1.0 - unconfident / num_points > self.depth_confidence)

    def _keep(self, confidence: Optional[torch.Tensor], matchability: torch.Tensor, layer: int) -> torch.Tensor:
        # Keep points that may still match; never prune a point whose assignment is not yet confident.
        keep = matchability > (1 - self.width_confidence)
        if confidence is not None:
            keep |= confidence <= self.confidence_thresholds[layer]
        return keep

    def forward(self, kpts0: torch.Tensor, kpts1: torch.Tensor, desc0: torch.Tensor, desc1: torch.Tensor,
                size0: torch.Tensor, size1: torch.Tensor, intermediates: bool = False) -> dict:
        """Match one batch of image pairs.

        kpts0 (B, M, 2), kpts1 (B, N, 2): pixel coordinates (x, y); desc0 (B, M, input_dim),
        desc1 (B, N, input_dim); size0, size1 (B, 2) = (W, H) in pixels.
        Returns a dict:
          matches0 (B, M), matches1 (B, N) int64, -1 = unmatched;
          matching_scores0 (B, M), matching_scores1 (B, N) float, 0 where not mutual;
          matches: list of (S_b, 2) int64 [idx0, idx1]; scores: list of (S_b,);
          stop: number of layers run; prune0 (B, M), prune1 (B, N): layer at which each point was pruned
          (n_layers everywhere when pruning is off);
          log_assignment (B, M'+1, N'+1), similarity (B, M', N') of the last layer run, over the points
          left after pruning (M' = M, N' = N without pruning);
          kept0 (B, M'), kept1 (B, N'): input indices of the points left after pruning (absent when an
          image has no keypoints);
          with `intermediates`: encoding0/1 (2, B, 1, M or N, 64) and desc0/1_after_layer{i} (B, ., 256),
          the states after each layer run (over the points left at that layer).
        Point pruning selects points of batch element 0 only, as the original: use B = 1 with pruning.
        Computation stays in float32 on every device (the original switches to half precision inside
        flash attention on CUDA), so GPU results equal CPU ones up to float32 rounding.
        """
        b, m, _ = kpts0.shape
        n = kpts1.shape[1]
        device = kpts0.device
        kpts0, kpts1 = normalize_keypoints(kpts0, size0), normalize_keypoints(kpts1, size1)
        desc0 = self.input_proj(desc0.detach().contiguous())
        desc1 = self.input_proj(desc1.detach().contiguous())
        encoding0, encoding1 = self.posenc(kpts0), self.posenc(kpts1)
        extra = {"encoding0": encoding0, "encoding1": encoding1} if intermediates else {}

        early_stop = self.depth_confidence is not None
        prune = self.width_confidence is not None
        prune_min = PRUNING_MIN_KEYPOINTS.get(device.type, 1024)
        ind0 = torch.arange(m, device=device)[None]
        ind1 = torch.arange(n, device=device)[None]
        prune0 = torch.ones_like(ind0)
        prune1 = torch.ones_like(ind1)
        token0 = token1 = None
        layer = 0
        for layer in range(self.n_layers):
            if desc0.shape[1] == 0 or desc1.shape[1] == 0:
                break
            desc0, desc1 = self.transformers[layer](desc0, desc1, encoding0, encoding1)
            if intermediates:
                extra[f"desc0_after_layer{layer}"] = desc0
                extra[f"desc1_after_layer{layer}"] = desc1
            if layer == self.n_layers - 1:
                continue  # the last layer neither stops nor prunes
            if early_stop:
                token0, token1 = self.token_confidence[layer](desc0, desc1)
                if self._stop(token0, token1, layer, m + n):
                    break
            if prune and desc0.shape[-2] > prune_min:
                keep = torch.where(self._keep(token0, self.log_assignment[layer].matchability_probability(desc0),
                                              layer))[1]
                ind0, desc0 = ind0.index_select(1, keep), desc0.index_select(1, keep)
                encoding0 = encoding0.index_select(-2, keep)
                prune0[:, ind0] += 1
            if prune and desc1.shape[-2] > prune_min:
                keep = torch.where(self._keep(token1, self.log_assignment[layer].matchability_probability(desc1),
                                              layer))[1]
                ind1, desc1 = ind1.index_select(1, keep), desc1.index_select(1, keep)
                encoding1 = encoding1.index_select(-2, keep)
                prune1[:, ind1] += 1
        stop = layer + 1
        if not prune:
            prune0 = torch.full((b, m), float(self.n_layers), device=device)
            prune1 = torch.full((b, n), float(self.n_layers), device=device)

        if desc0.shape[1] == 0 or desc1.shape[1] == 0:
            return {"matches0": torch.full((b, m), -1, dtype=torch.long, device=device),
                    "matches1": torch.full((b, n), -1, dtype=torch.long, device=device),
                    "matching_scores0": desc0.new_zeros((b, m)), "matching_scores1": desc1.new_zeros((b, n)),
                    "matches": [torch.zeros((0, 2), dtype=torch.long, device=device) for _ in range(b)],
                    "scores": [desc0.new_zeros((0,)) for _ in range(b)], "stop": stop,
                    "prune0": prune0, "prune1": prune1, "log_assignment": None, "similarity": None, **extra}

        log_assignment, similarity = self.log_assignment[layer](desc0, desc1)
        m0, m1, s0, s1 = mutual_assignment(log_assignment, self.filter_threshold)
        matches, scores = [], []
        for k in range(b):
            valid = m0[k] > -1
            i0, i1 = torch.where(valid)[0], m0[k][valid]
            if prune:
                i0, i1 = ind0[k, i0], ind1[k, i1]
            matches.append(torch.stack([i0, i1], -1))
            scores.append(s0[k][valid])
        if prune:  # back to the indices of the input points
            full_m0 = torch.full((b, m), -1, device=device, dtype=m0.dtype)
            full_m1 = torch.full((b, n), -1, device=device, dtype=m1.dtype)
            full_m0[:, ind0] = torch.where(m0 == -1, -1, ind1.gather(1, m0.clamp(min=0)))
            full_m1[:, ind1] = torch.where(m1 == -1, -1, ind0.gather(1, m1.clamp(min=0)))
            full_s0 = s0.new_zeros((b, m))
            full_s1 = s1.new_zeros((b, n))
            full_s0[:, ind0] = s0
            full_s1[:, ind1] = s1
            m0, m1, s0, s1 = full_m0, full_m1, full_s0, full_s1
        return {"matches0": m0, "matches1": m1, "matching_scores0": s0, "matching_scores1": s1,
                "matches": matches, "scores": scores, "stop": stop, "prune0": prune0, "prune1": prune1,
                "log_assignment": log_assignment, "similarity": similarity,
                "kept0": ind0, "kept1": ind1, **extra}


# ------------------------------------------------------------------------------------ weights
_FLAT_NAME = re.compile(r"^(self_attn|cross_attn)\.(\d+)\.")
_LAYER_KEY = re.compile(r"^(transformers|log_assignment|token_confidence)\.(\d+)\.")
_UNUSED_SCALE = re.compile(r"^log_assignment\.\d+\.r$")


def convert_state_dict(state: dict, n_layers: int, where: str) -> dict:
    """Official LightGlue state_dict -> the keys of `LightGlueNet(n_layers)`.

    What the official files hold beyond the model, each handled explicitly:
    - the early release names `self_attn.{i}.*` / `cross_attn.{i}.*` (disk_lightglue.pth) are renamed to
      `transformers.{i}.*`, as the original's constructor does;
    - disk_lightglue.pth carries 9 scalars `log_assignment.{i}.r` = 1.0 that no model uses (the original
      ignores them through strict=False); they are dropped after checking they are exactly that;
    - layers >= n_layers are dropped (running fewer layers than trained, as the original allows).
    A file with fewer layers than n_layers raises `ConfigError`; a LighterGlue file (`matcher.*` keys)
    raises `CheckpointError` pointing to the `lighterglue` matcher.
    """
    if any(k.startswith("matcher.") for k in state):
        raise CheckpointError(f"{where}: this is a LighterGlue file (its keys start with 'matcher.', e.g. "
                              "xfeat-lighterglue.pt); load it with the matcher 'lighterglue' (XFeat features)")
    scales = [k for k in state if _UNUSED_SCALE.match(k)]
    bad = [k for k in scales if state[k].numel() != 1 or float(state[k]) != 1.0]
    if bad:
        raise CheckpointError(f"{where}: unexpected values in {bad[:3]} (the release's unused scalars are 1.0)")
    state = {k: v for k, v in state.items() if k not in scales}
    renamed = {_FLAT_NAME.sub(lambda mt: f"transformers.{mt.group(2)}.{mt.group(1)}.", k): v
               for k, v in state.items()}
    layers = {int(mt.group(2)) for k in renamed if (mt := _LAYER_KEY.match(k)) and mt.group(1) == "transformers"}
    available = max(layers) + 1 if layers else 0
    if available < n_layers:
        raise ConfigError(f"{where}: the file holds {available} transformer layer(s) but n_layers={n_layers}; "
                          f"pass n_layers={available} (or fewer)")
    out = {}
    for k, v in renamed.items():
        mt = _LAYER_KEY.match(k)
        if mt and int(mt.group(2)) >= (n_layers - 1 if mt.group(1) == "token_confidence" else n_layers):
            continue
        if k == "confidence_thresholds" and tuple(v.shape) != (n_layers,):
            continue  # computed from n_layers; a truncated model recomputes it
        out[k] = v
    if available > n_layers:
        logger.info("%s: using the first %d of %d layers", where, n_layers, available)
    return out


def load_state_dict_checked(net: LightGlueNet, state: dict, where: str) -> None:
    """Load `state` into `net` strictly. `confidence_thresholds`, which the official files do not store
    (it is computed from n_layers), is taken from `net` when absent. Errors name the file and the
    offending keys or shapes."""
    if "confidence_thresholds" not in state:
        state = {**state, "confidence_thresholds": net.confidence_thresholds.clone()}
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        hint = ""
        if "input_proj.weight" in unexpected:
            hint = " (the file has an input projection: weights for 128-D features, features=disk or aliked?)"
        elif "input_proj.weight" in missing:
            hint = " (the file has no input projection: weights for 256-D features, features=superpoint?)"
        shapes = ", ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:3])
        raise ValueError(f"{where}: not a compatible LightGlue state_dict{hint}; missing keys "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
                         f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
                         + (f", shape mismatch {shapes}" if wrong else ""))
    net.load_state_dict(state, strict=True)


def _torch_hub_copy(spec: hub.WeightSpec) -> Optional[Path]:
    """The copy that the original package downloaded through torch.hub, when present."""
    name = spec.filename.replace(".pth", "_v0-1_arxiv.pth")
    root = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    for d in hub.search_dirs() + [root / "hub" / "checkpoints"]:
        if (d / name).is_file():
            return d / name
    return None


# ------------------------------------------------------------------------------------ matcher
class GlueMatcher(Matcher):
    """What LightGlue and LighterGlue share: the adaptive-depth/width config checks, the inputs from two
    `Features`, `run` (every network output) and `_match`. Subclasses build `self.net` (a `LightGlueNet`)
    and set `self.input_dim`."""

    net: LightGlueNet
    input_dim: int

    def check_confidences(self) -> None:
        """n_layers a positive integer; depth/width_confidence in (0, 1] or None; filter_threshold a number or None."""
        c = self.conf
        self.check_count("n_layers", allow_none=False)
        for key in ("depth_confidence", "width_confidence"):
            value = c[key]
            if value is not None and not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise ConfigError(f"{self.name}: {key}={value!r}, expected a number in (0, 1], or None to "
                                  "switch it off (LightGlue's -1)")
        if c["filter_threshold"] is not None and not isinstance(c["filter_threshold"], (int, float)):
            raise ConfigError(f"{self.name}: filter_threshold={c['filter_threshold']!r}, expected a number or None")
        self.check_choice("precision", ("fp32", "bf16"))

    def expects(self) -> str:
        """What the matcher expects, for the message about a descriptor dimension mismatch."""
        return f"it expects {self.input_dim}-D"

    def _inputs(self, features0: Features, features1: Features):
        tensors = []
        for k, f in enumerate((features0, features1)):
            if f.descriptors.dtype == np.uint8:
                raise ValueError(f"{self.name}: features{k} has binary (uint8) descriptors; LightGlue needs "
                                 f"float {self.input_dim}-D descriptors")
            if f.dim != self.input_dim:
                raise ValueError(f"{self.name}: features{k} has {f.dim}-D descriptors but {self.expects()}")
            tensors.append((torch.from_numpy(f.keypoints)[None].to(self.device),
                            torch.from_numpy(f.descriptors)[None].to(self.device),
                            torch.tensor([f.image_size], dtype=torch.float32, device=self.device)))
        (k0, d0, s0), (k1, d1, s1) = tensors
        return k0, k1, d0, d1, s0, s1

    def run(self, features0: Features, features1: Features, intermediates: bool = False) -> dict:
        """Every output of the network for one pair (see `LightGlueNet.forward`), batch dimension 1,
        as torch tensors on the CPU. `matches`/`scores` are those of the pair (no list)."""
        bf16 = self.conf["precision"] == "bf16"
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.net(*self._inputs(features0, features1), intermediates=intermediates)
        result = {}
        for key, value in out.items():
            if key in ("matches", "scores"):
                value = value[0]
            if isinstance(value, torch.Tensor):
                value = (value.float() if value.is_floating_point() else value).cpu()
            result[key] = value
        return result

    def _match(self, features0: Features, features1: Features) -> Matches:
        if len(features0) == 0 or len(features1) == 0:
            return Matches(np.zeros((0, 2), np.int64), np.zeros(0, np.float32))
        out = self.run(features0, features1)
        return Matches(out["matches"].numpy().astype(np.int64), out["scores"].numpy().astype(np.float32))


class LightGlue(GlueMatcher):
    """LightGlue matcher for SuperPoint (256-D), DISK or ALIKED (128-D) features.

    Config:
      features:         'superpoint', 'disk' or 'aliked': which official weights, and the descriptor
                        dimension expected (256 / 128 / 128).
      n_layers:         transformer layers to run (9 in the release; fewer = faster, less accurate).
      depth_confidence: early stopping: stop when more than this fraction of points is confident
                        (0.95 as the release; None = off).
      width_confidence: point pruning: drop confident points whose matchability < 1 - this
                        (0.99 as the release; None = off).
      filter_threshold: minimum match probability (0.1; None = every mutual best pair).
      weights:          path of a compatible state_dict (default: the official file of `features`).
      precision:        'fp32' (default: the original's outputs) or 'bf16' (torch.autocast bfloat16: linear
                        layers and attention in bf16; faster on CPUs with AVX-512 BF16 / AMX and on GPUs,
                        the matches differ slightly: docs/lightglue.md gives the agreement).
    Scores of the matches are LightGlue's match probabilities in [0, 1].
    """

    name = "lightglue"
    default_conf = {"features": "superpoint", "n_layers": 9, "depth_confidence": 0.95,
                    "width_confidence": 0.99, "filter_threshold": 0.1, "weights": None, "precision": "fp32"}

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        pairings = paired_features()
        if c["features"] not in pairings:
            hint = "; for XFeat features use the matcher 'lighterglue'" if c["features"] == "xfeat" else ""
            raise ConfigError(f"lightglue: features={c['features']!r} is not supported; choose one of "
                              f"{sorted(pairings)}{hint}")
        self.check_confidences()
        self.input_dim = pairings[c["features"]]["input_dim"]
        self.net = LightGlueNet(self.input_dim, c["n_layers"], c["depth_confidence"], c["width_confidence"],
                                c["filter_threshold"])
        self.weights_path = self._weights_path()
        where = f"lightglue weights {self.weights_path}"
        state = convert_state_dict(state_dict_from_file(self.weights_path), c["n_layers"], where)
        load_state_dict_checked(self.net, state, where)
        self.net.eval().to(self.device)
        logger.debug("lightglue: loaded %s", self.weights_path)

    @classmethod
    def conf_for_features(cls, conf: dict, extractor: Optional[str]) -> dict:
        """`features` from the extractor recorded in the store, unless set: ALIKED features get ALIKED's
        LightGlue weights. An extractor without official LightGlue weights is a `ConfigError`."""
        conf = dict(conf)
        if "features" in conf or extractor is None:
            return conf
        pairings = paired_features()
        if extractor not in pairings:
            raise ConfigError(
                f"lightglue has no official weights for {extractor} features (it has them for "
                f"{', '.join(sorted(pairings))}); use --matcher nearest_neighbor, or give features=NAME and "
                "weights=PATH of LightGlue weights trained for these descriptors")
        conf["features"] = extractor
        return conf

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        if conf.get("weights") is not None:
            return []
        features = conf.get("features", cls.default_conf["features"])
        pairing = paired_features().get(features)
        return [pairing["weights"]] if pairing else []

    def expects(self) -> str:
        dims = ", ".join(f"{n}: {p['input_dim']}-D" for n, p in paired_features().items())
        return (f"features={self.conf['features']!r} expects {self.input_dim}-D; set features= to the extractor "
                f"that produced them ({dims})")

    def _weights_path(self) -> Path:
        """conf weights=PATH, else the official file of `features` (lookup, then the original's torch.hub
        copy, then a download), sha256-checked."""
        spec = paired_features()[self.conf["features"]]["weights"]
        if self.conf["weights"] is not None:
            return hub.find_weights(spec, override=self.conf["weights"])
        if hub.locate(spec) is None:
            cached = _torch_hub_copy(spec)
            if cached is not None:
                hub.verify(spec, cached)
                return cached
        return hub.find_weights(spec)
