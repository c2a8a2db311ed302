"""What every training loss shares: a strict config, the dense outputs it needs, flows at map resolution.

A loss is called as ``loss(out0, out1, batch, step)``:
  out0, out1: the dense outputs of the two images (the `train_dense` hook of the model's module, see
              `localfeat.registry.Trainable`): dicts holding
              'descriptors' (B, D, h, w) L2-normalised over D, and depending on the model
              'reliability', 'repeatability', 'scores' (B, 1, h, w) in [0, 1], 'logits' (B, 1, h, w),
              'features' (B, C, h, w) raw, and 'stride' (int, input pixels per map pixel).
  batch:      'flow' (B, S, S, 2) image-0 pixel -> image-1 pixel (pixel-centre, NaN = none),
              'valid' (B, S, S) bool.
  step:       the optimisation step (for schedules).
It returns a dict of scalar tensors holding 'total' (what is minimised) and its terms.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ...registry import ConfigError, merge_conf


class LossInputError(ValueError):
    """The model does not provide a dense output that a loss needs."""


class Loss(torch.nn.Module):
    """Base of the loss families: `name`, `default_conf` (strict), `requires` (keys of the dense outputs)."""

    name = ""
    default_conf: dict = {}
    requires: tuple = ()

    def __init__(self, **conf):
        super().__init__()
        self.conf = merge_conf(self.default_conf, conf, where=f"loss {self.name!r}")

    def check(self, out: dict) -> None:
        for key in self.requires:
            if isinstance(key, tuple):
                if not any(k in out for k in key):
                    raise LossInputError(f"loss {self.name!r} needs one of the dense outputs {list(key)}; "
                                         f"the model provides {sorted(k for k in out if k != 'stride')}")
            elif key not in out:
                raise LossInputError(f"loss {self.name!r} needs the dense output {key!r}; the model provides "
                                     f"{sorted(k for k in out if k != 'stride')}")

    def forward(self, out0: dict, out1: dict, batch: dict, step: int = 0) -> dict:
        raise NotImplementedError


def detection_map(out: dict) -> torch.Tensor:
    """The model's keypoint-score map in [0, 1], (B, 1, h, w): 'repeatability' (R2D2), else 'scores',
    else sigmoid('logits')."""
    if "repeatability" in out:
        return out["repeatability"]
    if "scores" in out:
        return out["scores"]
    if "logits" in out:
        return torch.sigmoid(out["logits"])
    raise LossInputError(f"no detection map among the dense outputs {sorted(out)}")


def flow_at_map(batch: dict, stride: int, map_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow at map resolution: map pixel (i, j) of image 0 -> map coordinates (x, y) in image 1.

    A map pixel j covers input pixels s*j .. s*j + s - 1 (centre s*j + (s - 1)/2), so input x maps
    to map (x - (s - 1)/2) / s. Returns flow (B, h, w, 2) float32 (NaN where invalid) and valid (B, h, w).
    """
    flow, valid = batch["flow"], batch["valid"]
    h, w = map_hw
    if stride == 1 and flow.shape[1:3] == (h, w):
        f, v = flow, valid
    else:
        # The flow at the centre of the map pixel: the mean of the (1, 2 or 4) input pixels nearest
        # to it (exact for an affine flow); valid when they all are.
        c = (stride - 1) / 2
        f, v, n = 0, None, 0
        for oy in sorted({int(np.floor(c)), int(np.ceil(c))}):
            for ox in sorted({int(np.floor(c)), int(np.ceil(c))}):
                ys = (torch.arange(h, device=flow.device) * stride + oy).clamp(max=flow.shape[1] - 1)
                xs = (torch.arange(w, device=flow.device) * stride + ox).clamp(max=flow.shape[2] - 1)
                f = f + flow[:, ys][:, :, xs]
                vv = valid[:, ys][:, :, xs]
                v = vv if v is None else v & vv
                n += 1
        f = (f / n - c) / stride
    v = v & torch.isfinite(f).all(-1)
    v = v & (f[..., 0] >= 0) & (f[..., 0] <= w - 1) & (f[..., 1] >= 0) & (f[..., 1] <= h - 1)
    f = torch.where(v[..., None], f, torch.full_like(f, float("nan")))
    return f, v


def warp_map(map1: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Map of image 1 (B, C, h, w) resampled (bilinear) at the flow (B, h, w, 2) of image 0; 0 where invalid."""
    h, w = map1.shape[-2:]
    grid = torch.nan_to_num(flow, nan=-10.0).clone()
    grid[..., 0] = (grid[..., 0] + 0.5) / w * 2 - 1
    grid[..., 1] = (grid[..., 1] + 0.5) / h * 2 - 1
    out = torch.nn.functional.grid_sample(map1, grid.to(map1.dtype), mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out * valid[:, None].to(out.dtype)


def positive_int(conf: dict, key: str, where: str, minimum: int = 1) -> int:
    value = conf[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def number_in_range(conf: dict, key: str, where: str, minimum: float = 0.0, strict: bool = False) -> float:
    """conf[key] as a number (int or float, not bool) >= minimum (> minimum when `strict`), else a ConfigError."""
    value = conf[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            value > minimum if strict else value >= minimum):
        raise ConfigError(f"{where}: {key} must be a number {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return value


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of x over mask (all when None); 0 (keeping the graph) when the mask is empty."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)
