"""Differentiable keypoint detection (DKD) and the weights loading shared by ALIKE and ALIKED.

Facts of the original (Shiaoming/ALIKE `soft_detect.py`, Shiaoming/ALIKED `nets/soft_detect.py`):
score map -> SuperPoint-style iterative NMS of radius r -> border zeroed -> keypoints by top-k or by
threshold (with an `n_limit` cap) -> optional sub-pixel refinement by a soft-argmax (temperature 0.1)
over the (2r+1) x (2r+1) window (zero outside the map) -> the score map sampled bilinearly at the
refined point.

Keypoints are returned as `grid_sample` coordinates with `align_corners=True` (-1 and +1 are the
centres of the corner pixels), computed with the same float operations as the original so that the
callers can reproduce its pixel coordinates bit for bit.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

from ..checkpoints import load_weights
from ..config import ConfigError, check_choice
from ..ops import iterative_max_pool_nms, top_k_indices
from .base import Extractor

logger = logging.getLogger(__name__)

TEMPERATURE = 0.1


def _window_offsets(radius: int, device, dtype) -> torch.Tensor:
    """(K*K, 2) offsets (dx, dy) of a (2r+1)^2 window, row-major (dy outer, dx inner), as the original."""
    r = torch.linspace(-radius, radius, 2 * radius + 1, device=device, dtype=dtype)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=1)


def flat_to_xy(indices: torch.Tensor, w: int) -> torch.Tensor:
    """(N, 2) integer (x, y) of flat indices y * w + x into a map of width w."""
    return torch.stack([indices % w, torch.div(indices, w, rounding_mode="trunc")], dim=1)


def window_soft_argmax(patch: torch.Tensor, radius: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DKD's sub-pixel refinement of window values `patch` (N, (2r+1)^2) (`window_patches`, row-major).

    Returns (offsets (N, 2) (dx, dy) in pixels from the window centre, weights (N, (2r+1)^2)): the soft-argmax
    sum_k softmax_k(patch / temperature) o_k and the softmax itself, computed with the original's float operations
    (exp of the differences to the window maximum, then the sum) so that the extractors stay bit for bit equal to it.
    """
    grid = _window_offsets(radius, patch.device, patch.dtype)
    x_exp = ((patch - patch.max(dim=1).values[:, None]) / temperature).exp()
    total = x_exp.sum(dim=1)[:, None]
    return x_exp @ grid / total, x_exp / total


def select_peaks(scores_map: torch.Tensor, radius: int, border: tuple[int, int], top_k: Optional[int],
                 scores_th: float, n_limit: Optional[int]) -> list[torch.Tensor]:
    """Flat indices (y * W + x) of the detected integer peaks, one int64 tensor per image.

    scores_map: (B, 1, H, W) in [0, 1].
    border:     (rows/columns zeroed at the top/left, rows/columns zeroed at the bottom/right).
    top_k:      None = threshold mode; k = the k best NMS scores (best first).
    scores_th:  threshold mode: keep NMS scores > scores_th (if none passes, or scores_th <= 0,
                the threshold is the mean of the score map).
    n_limit:    threshold mode: keep at most the n_limit best (None = no limit); the order is then by
                decreasing score, otherwise row-major.
    """
    b, _, h, w = scores_map.shape
    nms = iterative_max_pool_nms(scores_map, radius)
    top, bottom = border
    nms[:, :, :top, :] = 0
    nms[:, :, :, :top] = 0
    if bottom > 0:
        nms[:, :, h - bottom:, :] = 0
        nms[:, :, :, w - bottom:] = 0
    flat_nms = nms.reshape(b, -1)
    if top_k is not None:
        return [top_k_indices(flat_nms[i], top_k) for i in range(b)]
    flat_scores = scores_map.reshape(b, -1)
    if scores_th > 0:
        masks = flat_nms > scores_th
        if not bool(masks.any()):
            masks = flat_nms > flat_scores.mean(dim=1, keepdim=True)
    else:
        masks = flat_nms > flat_scores.mean(dim=1, keepdim=True)
    out = []
    for mask, scores in zip(masks, flat_scores):
        indices = mask.nonzero()[:, 0]
        if n_limit is not None and len(indices) > n_limit:
            indices = indices[top_k_indices(scores[indices], n_limit)]
        out.append(indices)
    return out


def window_patches(scores_map: torch.Tensor, indices: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, (2r+1)^2) values of one score map (1, H, W) in the window around each flat index, zero outside.

    Equal to `F.unfold(scores_map, 2r+1, padding=r)[:, indices].T` of the original, without unfolding the
    whole map.
    """
    _, h, w = scores_map.shape
    k = 2 * radius + 1
    padded = F.pad(scores_map, (radius, radius, radius, radius))[0]  # (H+2r, W+2r)
    wp = w + 2 * radius
    y = torch.div(indices, w, rounding_mode="trunc")
    x = indices % w
    d = torch.arange(k, device=indices.device)
    offsets = (d[:, None] * wp + d[None, :]).reshape(-1)  # row-major window
    return padded.reshape(-1)[(y * wp + x)[:, None] + offsets[None, :]]


def detect_keypoints(scores_map: torch.Tensor, radius: int = 2, border: tuple[int, int] = (3, 2),
                     top_k: Optional[int] = None, scores_th: float = 0.2, n_limit: Optional[int] = 5000,
                     sub_pixel: bool = True, temperature: float = TEMPERATURE
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keypoints and their scores from a score map, as the original DKD.

    scores_map: (B, 1, H, W) float32 in [0, 1].
    Returns (keypoints, scores): per image, (N, 2) float32 (x, y) in grid coordinates
    (x_pixel / (W - 1) * 2 - 1, pixel-centre convention) and (N,) float32 bilinear samples of the map.
    See `select_peaks` for the detection options; the ALIKE border is (r + 1, r), ALIKED's (r, r).
    temperature: of the sub-pixel soft-argmax over score differences (the originals' 0.1; lower = closer
    to the integer peak).
    """
    with torch.autocast(scores_map.device.type, enabled=False):  # float32 under precision='bf16' too
        return _detect_keypoints(scores_map.float(), radius, border, top_k, scores_th, n_limit, sub_pixel,
                                 float(temperature))


def _detect_keypoints(scores_map, radius, border, top_k, scores_th, n_limit, sub_pixel, temperature):
    b, _, h, w = scores_map.shape
    peaks = select_peaks(scores_map, radius, border, top_k, scores_th, n_limit)
    size = torch.tensor([w - 1, h - 1], device=scores_map.device)
    keypoints, scores = [], []
    for i in range(b):
        idx = peaks[i]
        xy = flat_to_xy(idx, w)
        if sub_pixel:
            xy = xy + window_soft_argmax(window_patches(scores_map[i], idx, radius), radius, temperature)[0]
        kpts = xy / size * 2 - 1
        kscores = F.grid_sample(scores_map[i][None], kpts.view(1, 1, -1, 2), mode="bilinear",
                                align_corners=True)[0, 0, 0, :]
        keypoints.append(kpts)
        scores.append(kscores)
    return keypoints, scores


class AlikeFamily(Extractor):
    """What ALIKE and ALIKED share: `variant` -> network arguments (`configs`) and official file
    (`weight_table[variant]`, the WEIGHTS of the subclass's module), strict loading of the state dict,
    the keypoint-limit config (`max_keypoints`, `scores_th`; the original's `top_k` / `n_limit` as
    aliases), and channels-last activations (oneDNN's convolutions are ~1.3-1.5x
    faster on CPU, outputs equal to ~1e-6; state dicts are unchanged). Subclasses set `name`,
    `default_conf`, `configs`, `net_class`, `weight_table`."""

    configs: dict = {}
    net_class: type = None
    conf_aliases = {"n_limit": "max_keypoints", "top_k": "max_keypoints"}  # top_k: see resolve_aliases

    @classmethod
    def resolve_aliases(cls, conf: dict, given_as: dict | None = None) -> dict:
        """The original's names: `n_limit` is `max_keypoints`; `top_k=k` (its top-k mode: the k best NMS
        peaks, no threshold, `n_limit` unused) is `max_keypoints=k, scores_th=None`; `top_k=None` (the
        original's -1) changes nothing: threshold mode, the default."""
        conf = dict(conf)
        if "top_k" in conf:
            top_k = conf.pop("top_k")
            if top_k is not None:
                if "max_keypoints" in conf and conf["max_keypoints"] != top_k:
                    raise ConfigError(f"{cls.name}: top_k={top_k!r} is the upstream name of max_keypoints (with "
                                      f"scores_th=None), which is also given ({conf['max_keypoints']!r}); give only "
                                      "max_keypoints")
                conf.pop("n_limit", None)
                conf.update(max_keypoints=top_k, scores_th=None)
                if given_as is not None:
                    given_as["max_keypoints"] = "top_k"
        return super().resolve_aliases(conf, given_as)

    def select_args(self) -> tuple:
        """(top_k, scores_th, n_limit) of `detect_keypoints` for this config."""
        c = self.conf
        if c["scores_th"] is None:
            return c["max_keypoints"], 0.0, None
        return None, c["scores_th"], c["max_keypoints"]
    weight_table: dict = {}

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        variant = conf.get("variant", cls.default_conf["variant"])
        check_choice(cls.name, "variant", variant, cls.configs)
        return [cls.weight_table[variant]]

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        self.check_count("max_keypoints")
        if c["scores_th"] is None and c["max_keypoints"] is None:
            raise ConfigError(f"{self.name}: scores_th=None keeps the max_keypoints best peaks without a threshold, "
                              "so it needs max_keypoints (a positive integer)")
        spec = self.weight_specs(c)[0]
        self.net = self.net_class(**self.configs[c["variant"]])
        self.weights_path = load_weights(self.net, spec, c["weights"], model=f"{self.name} {c['variant']}")
        self.net.to(self.device).to(memory_format=torch.channels_last)
