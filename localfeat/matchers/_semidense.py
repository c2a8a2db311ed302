"""Building blocks shared by the detector-free (semi-dense) matchers LoFTR and EfficientLoFTR.

Nested configs in the originals' layout, image padding with padding masks, coarse matching (dual softmax,
log-domain optimal transport with a dustbin, border removal, mutual nearest neighbours), the soft-argmax
expectation of the fine stage, and reading their checkpoints. Shapes: B batch, L = h0 * w0 and
S = h1 * w1 coarse cells, C channels, M matches.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..hub import CheckpointError
from ..types import PairMatches
from .base import DetectorFreeMatcher

# The value the originals fill masked similarities with (before a softmax).
MASKED = -1e9


# ----------------------------------------------------------------------------------------------- configs
def merge_nested(defaults: dict, conf: Optional[dict], where: str, path: str = "") -> dict:
    """`defaults` deep-updated with `conf` (the originals' nested, lower-case config dict).

    A key absent from `defaults` raises `ConfigError` naming the valid keys at that level; lists and
    tuples replace the default whole; an empty dict in `defaults` (a training-only section such as `loss`)
    takes any dict.
    """
    out = copy.deepcopy(defaults)
    for key, value in (conf or {}).items():
        if key not in defaults:
            raise ConfigError(f"{where}: unknown config key {path + key!r}; valid keys here: {sorted(defaults)}")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: config[{path + key!r}] must be a dict, got {value!r}")
            out[key] = (copy.deepcopy(value) if not defaults[key]
                        else merge_nested(defaults[key], value, where, path + key + "."))
        else:
            out[key] = copy.deepcopy(value)
    return out


# ------------------------------------------------------------------------------------------------- input
def gray_tensor(image: np.ndarray, device) -> torch.Tensor:
    """uint8 (H, W) -> float32 (1, 1, H, W) in [0, 1] (u8 / 255, as the originals' demos)."""
    if image.ndim != 2:
        raise ValueError(f"expected a grayscale image (H, W), got shape {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0)[None, None].to(device)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Zero-pad (B, 1, H, W) at the bottom and right to multiples of `multiple`.

    Returns the padded image and its pixel mask (B, H', W') bool (True = real pixel), or None when no
    padding was needed.
    """
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image, None
    padded = F.pad(image, (0, pw, 0, ph))
    mask = torch.zeros(padded.shape[0], h + ph, w + pw, dtype=torch.bool, device=image.device)
    mask[:, :h, :w] = True
    return padded, mask


def coarse_mask(pixel_mask: torch.Tensor, stride: int) -> torch.Tensor:
    """Pixel mask (B, H, W) -> coarse mask (B, H / stride, W / stride): the originals' nearest subsampling
    (cell (r, c) is valid when pixel (stride r, stride c) is)."""
    return pixel_mask[:, ::stride, ::stride].contiguous()


@contextlib.contextmanager
def precision_context(device: torch.device, precision: str):
    """'bf16': torch autocast to bfloat16 on `device`. 'fp32': on CUDA, cuDNN convolutions without TF32
    (PyTorch allows TF32 convolutions by default, which changes the coarse confidences by ~1e-3 relative and
    can flip near-threshold matches); nothing changes on CPU. The global flags are restored on exit."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif device.type == "cuda":
        cudnn = torch.backends.cudnn
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            yield
    else:
        yield


def run_padded(net, t0: torch.Tensor, t1: torch.Tensor, multiple: int, stride: int = 8) -> dict:
    """net(t0, t1[, mask0, mask1]) on (B, 1, H, W) images zero-padded at the bottom/right to multiples of
    `multiple`, with coarse padding masks (cell size `stride`) when either image needed padding."""
    t0, p0 = pad_to_multiple(t0, multiple)
    t1, p1 = pad_to_multiple(t1, multiple)
    if p0 is None and p1 is None:
        return net(t0, t1)
    p0 = torch.ones(t0.shape[0], *t0.shape[2:], dtype=torch.bool, device=t0.device) if p0 is None else p0
    p1 = torch.ones(t1.shape[0], *t1.shape[2:], dtype=torch.bool, device=t1.device) if p1 is None else p1
    return net(t0, t1, coarse_mask(p0, stride), coarse_mask(p1, stride))


def check_size(image: torch.Tensor, multiple: int, where: str) -> None:
    """Raise `ValueError` unless the (B, 1, H, W) tensor's H and W are multiples of `multiple`."""
    if image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f"{where}: expected a grayscale batch (B, 1, H, W), got shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"{where}: image size {w}x{h} (W x H) is not a multiple of {multiple}; pad it "
                         "(match_images pads and passes padding masks) or resize it")


# ------------------------------------------------------------------------------------------ coarse stage
def dual_softmax(sim: torch.Tensor) -> torch.Tensor:
    """Confidence (B, L, S) = softmax over L x softmax over S of the similarity (B, L, S)."""
    return F.softmax(sim, 1) * F.softmax(sim, 2)


def log_optimal_transport(scores: torch.Tensor, bin_score: torch.Tensor, iterations: int) -> torch.Tensor:
    """Entropic optimal transport with a dustbin, in the log domain (SuperGlue, Sarlin et al. 2020, Sec. 3.3).

    scores (B, L, S) -> log assignment (B, L + 1, S + 1). The dustbin row and column hold `bin_score`; the
    marginals are 1 for every cell and S (resp. L) for the dustbin, all divided by L + S; `iterations`
    Sinkhorn normalisations (rows, then columns), and the result is scaled back by L + S.
    """
    b, l, s = scores.shape
    alpha = bin_score.to(scores).reshape(1, 1, 1)
    z = torch.cat([torch.cat([scores, alpha.expand(b, l, 1)], 2),
                   torch.cat([alpha.expand(b, 1, s), alpha.expand(b, 1, 1)], 2)], 1)
    n_rows, n_cols = scores.new_tensor(float(l)), scores.new_tensor(float(s))
    norm = -(n_rows + n_cols).log()
    log_mu = torch.cat([norm.expand(l), n_cols.log()[None] + norm])
    log_nu = torch.cat([norm.expand(s), n_rows.log()[None] + norm])
    log_mu, log_nu = log_mu[None].expand(b, -1), log_nu[None].expand(b, -1)
    u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
    for _ in range(iterations):
        u = log_mu - torch.logsumexp(z + v[:, None, :], dim=2)
        v = log_nu - torch.logsumexp(z + u[:, :, None], dim=1)
    return z + u[:, :, None] + v[:, None, :] - norm


def border_mask(shape0: tuple, shape1: tuple, border: int, valid0: Optional[torch.Tensor] = None,
                valid1: Optional[torch.Tensor] = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells of each image allowed to match: not within `border` cells of the map's edge (B, L), (B, S) bool.

    With padding masks valid0 (B, h0, w0) / valid1, the far edges are those of the valid region, as the
    originals compute them (rows = max over columns of the valid-row count, etc.).
    """
    out = []
    for (h, w), valid in ((shape0, valid0), (shape1, valid1)):
        if valid is None:
            hs = torch.full((1,), h, device=device)
            ws = torch.full((1,), w, device=device)
        else:
            hs = valid.sum(1).max(-1)[0].long()
            ws = valid.sum(-1).max(-1)[0].long()
        rows = torch.arange(h, device=hs.device)
        cols = torch.arange(w, device=hs.device)
        ok_r = (rows[None] >= border) & (rows[None] < hs[:, None] - border)
        ok_c = (cols[None] >= border) & (cols[None] < ws[:, None] - border)
        if border <= 0:
            ok_r, ok_c = torch.ones_like(ok_r), torch.ones_like(ok_c)
        out.append((ok_r[:, :, None] & ok_c[:, None, :]).flatten(1))
    return out[0], out[1]


def mutual_matches(conf: torch.Tensor, thr: float, ok0: torch.Tensor, ok1: torch.Tensor):
    """Coarse matches of the originals: conf > thr (strict), both cells inside the borders, and conf equal to
    its row maximum and its column maximum.

    conf (B, L, S); ok0 (B or 1, L), ok1 (B or 1, S) bool. Returns b_ids, i_ids, j_ids (M,) int64 in
    `torch.where` order (by batch, then ascending i; the first such j of a row) and their conf (M,).
    """
    mask = (conf > thr) & ok0[:, :, None] & ok1[:, None, :]
    mask &= conf == conf.max(dim=2, keepdim=True)[0]
    mask &= conf == conf.max(dim=1, keepdim=True)[0]
    any_v, all_j = mask.max(dim=2)
    b_ids, i_ids = torch.where(any_v)
    j_ids = all_j[b_ids, i_ids]
    return b_ids, i_ids, j_ids, conf[b_ids, i_ids, j_ids]


# Above this many entries (B * L * S) of the confidence matrix, dual-softmax matching runs in row blocks
# (`blockwise_dual_softmax_matches`) instead of materialising three L x S matrices (a 1600 x 1200 pair has
# L = S = 30000: 3.6 GB per matrix).
DENSE_CONF_MAX_ENTRIES = 64_000_000


def blockwise_dual_softmax_matches(f0: torch.Tensor, f1: torch.Tensor, temperature: float, thr: float,
                                   ok0: torch.Tensor, ok1: torch.Tensor, valid0: Optional[torch.Tensor] = None,
                                   valid1: Optional[torch.Tensor] = None, block_entries: int = 16_000_000):
    """The coarse matches of `dual_softmax` + `mutual_matches` without the full (L, S) matrices.

    f0 (B, L, C), f1 (B, S, C) already divided by sqrt(C); valid0 (B, L) / valid1 (B, S) padding masks (masked
    similarities are `MASKED`, as in the dense path). Two passes over blocks of rows: the column log-sum-exp,
    then conf = exp(sim - row lse) * exp(sim - column lse), the row argmax and the column maxima. A row's
    match is its first maximum j when conf > thr, both cells are inside the borders and conf equals the
    column maximum. Memory: O(block_entries + B (L + S)). The values equal the dense path's up to float
    rounding of the softmax (it is computed as exp(x - lse) here); the match rule is the same.
    Returns b_ids, i_ids, j_ids, conf (M,), as `mutual_matches`.
    """
    b, l, _ = f0.shape
    s = f1.shape[1]
    rows = max(1, block_entries // max(s, 1))

    def sim_block(bi, r0, r1):
        sim = f0[bi, r0:r1] @ f1[bi].t() / temperature
        if valid0 is not None:
            sim = sim.masked_fill(~(valid0[bi, r0:r1, None] & valid1[bi, None, :]), MASKED)
        return sim

    out = []
    for bi in range(b):
        col_lse = torch.full((s,), float("-inf"), device=f0.device)
        row_lse = torch.empty(l, device=f0.device)
        for r0 in range(0, l, rows):
            sim = sim_block(bi, r0, r0 + rows)
            col_lse = torch.logaddexp(col_lse, torch.logsumexp(sim, dim=0))
            row_lse[r0:r0 + rows] = torch.logsumexp(sim, dim=1)
        row_max = torch.empty(l, device=f0.device)
        row_arg = torch.empty(l, dtype=torch.long, device=f0.device)
        col_max = torch.full((s,), float("-inf"), device=f0.device)
        for r0 in range(0, l, rows):
            sim = sim_block(bi, r0, r0 + rows)
            conf = torch.exp(sim - row_lse[r0:r0 + rows, None]) * torch.exp(sim - col_lse[None])
            row_max[r0:r0 + rows], row_arg[r0:r0 + rows] = conf.max(dim=1)
            col_max = torch.maximum(col_max, conf.max(dim=0)[0])
        keep = ((row_max > thr) & ok0[min(bi, len(ok0) - 1)] & ok1[min(bi, len(ok1) - 1)][row_arg]
                & (row_max == col_max[row_arg]))
        i_ids = torch.nonzero(keep)[:, 0]
        out.append((torch.full_like(i_ids, bi), i_ids, row_arg[i_ids], row_max[i_ids]))
    return tuple(torch.cat(parts) for parts in zip(*out))


def chunked_concat(fn, n: int, chunk: Optional[int]) -> dict:
    """Call fn(start, stop) over [0, n) in chunks of `chunk` (None = one call) and concatenate the returned
    dicts of tensors along dim 0: bounds the memory of per-match stages (fine windows, fine attention)."""
    if chunk is None or n <= chunk:
        return fn(0, n)
    parts = [fn(i, min(n, i + chunk)) for i in range(0, n, chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def cell_centres(ids: torch.Tensor, width: int, scale: float) -> torch.Tensor:
    """Flat cell indices (M,) of a map of width `width` -> (x, y) = scale * (col, row), float32 (M, 2)."""
    return torch.stack([ids % width, torch.div(ids, width, rounding_mode="floor")], dim=1).float() * scale


# -------------------------------------------------------------------------------------------- fine stage
def gather_windows(fine: torch.Tensor, b_ids: torch.Tensor, cell_ids: torch.Tensor, width_c: int, stride: int,
                   size: int, pad: int) -> torch.Tensor:
    """size x size windows (M, size * size, C) of the fine map (B, C, Hf, Wf), row-major, for the coarse cells
    `cell_ids` (M,) of a coarse map of width `width_c`: the window of cell (c, r) starts at fine pixel
    (stride c - pad, stride r - pad), zero outside the map.

    The same values as the originals' `F.unfold(fine, size, stride=stride, padding=pad)` followed by the
    selection of the matched cells, without unfolding the whole map.
    """
    padded = F.pad(fine, (pad, pad, pad, pad))
    rows = torch.div(cell_ids, width_c, rounding_mode="floor") * stride
    cols = (cell_ids % width_c) * stride
    offsets = torch.arange(size, device=fine.device)
    r = rows[:, None] + offsets[None]                    # (M, size) in padded coordinates
    c = cols[:, None] + offsets[None]
    win = padded[b_ids[:, None, None], :, r[:, :, None], c[:, None, :]]  # (M, size, size, C)
    return win.reshape(len(cell_ids), size * size, fine.shape[1])


def normalized_grid(size: int, device=None) -> torch.Tensor:
    """(size * size, 2) (x, y) of a size x size window, each in [-1, 1] (corner centres at -1 / +1), row-major."""
    t = torch.linspace(0, size - 1, size, device=device)
    t = (t / (size - 1) - 0.5) * 2
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2)


def spatial_expectation(heatmap: torch.Tensor) -> torch.Tensor:
    """Expected (x, y) in [-1, 1] of heatmaps (M, W, W) summing to 1 (soft-argmax); returns (M, 2)."""
    m, w, _ = heatmap.shape
    grid = normalized_grid(w, heatmap.device)
    flat = heatmap.reshape(m, -1)
    return torch.stack([(grid[:, 0] * flat).sum(-1), (grid[:, 1] * flat).sum(-1)], dim=-1)


# ------------------------------------------------------------------------------------------- checkpoints
def checkpoint_state_dict(state: dict, path) -> dict:
    """The model tensors of an official LoFTR-family file: a Lightning checkpoint's `state_dict` (already
    unwrapped by the loader) whose keys carry the `matcher.` prefix, or a bare state_dict (kornia's files,
    user files). Strips the prefix; other keys are left for the strict load to report."""
    if any(k.startswith("matcher.") for k in state):
        state = {(k[len("matcher."):] if k.startswith("matcher.") else k): v for k, v in state.items()}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors")
    return state


def sqrt_dim(x: torch.Tensor) -> float:
    """sqrt of the last dimension, as a Python float (the originals divide by C ** .5)."""
    return x.shape[-1] ** .5


__all__ = ["merge_nested", "gray_tensor", "pad_to_multiple", "coarse_mask", "check_size", "dual_softmax",
           "log_optimal_transport", "border_mask", "mutual_matches", "cell_centres", "gather_windows",
           "spatial_expectation",
           "normalized_grid", "checkpoint_state_dict", "sqrt_dim", "MASKED",
           "DENSE_CONF_MAX_ENTRIES", "run_padded", "precision_context", "blockwise_dual_softmax_matches",
           "chunked_concat"]


class PaddedPairMatcher(DetectorFreeMatcher):
    """What LoFTR and EfficientLoFTR share: `self.net` (a network whose forward takes padded gray tensors and
    padding masks, see `run_padded`) and `multiple` (the size the input is padded to)."""

    multiple = 8

    @torch.inference_mode()
    def forward_images(self, image0: np.ndarray, image1: np.ndarray) -> dict:
        """The network's output dict for two uint8 grayscale images (H, W); sizes that are not multiples of
        `multiple` are zero-padded at the bottom/right, with padding masks."""
        with precision_context(self.device, self.conf["precision"]):
            return run_padded(self.net, gray_tensor(image0, self.device), gray_tensor(image1, self.device),
                              self.multiple)

    def _match_images(self, image0: np.ndarray, image1: np.ndarray) -> PairMatches:
        out = self.forward_images(image0, image1)
        return PairMatches(out["keypoints0"].float().cpu(), out["keypoints1"].float().cpu(),
                           out["confidence"].float().cpu())
