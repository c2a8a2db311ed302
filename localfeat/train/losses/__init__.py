"""Training losses, one family per module, chosen by name in the config.

    losses:                       # a weighted sum of any of them
      reliability: 1.0            # NAME: weight
      repeatability: {weight: 1.0, N: 16}   # or NAME: {weight: W, <the loss's config keys>}

Every loss returns a dict with 'total' and its terms; `WeightedLoss` returns 'total' (the weighted
sum) and every term as '<name>/<term>'.
"""
from __future__ import annotations

import torch

from ...registry import ConfigError
from ._base import Loss, LossInputError  # noqa: F401
from .ap import APLoss
from .d2net import D2NetLoss
from .disk import DiskLoss
from .distill import DistillLoss
from .distinctiveness import DistinctivenessLoss
from .nre import NRELoss
from .reliability import HardestTripletLoss, ReliabilityLoss
from .repeatability import RepeatabilityLoss
from .reprojection import ReprojectionLoss

LOSSES: dict[str, type] = {cls.name: cls for cls in (
    APLoss, ReliabilityLoss, HardestTripletLoss, RepeatabilityLoss, D2NetLoss, DistinctivenessLoss, DiskLoss,
    DistillLoss, NRELoss, ReprojectionLoss)}


def get_loss_class(name: str) -> type:
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; available: {sorted(LOSSES)}")
    return LOSSES[name]


class WeightedLoss(torch.nn.Module):
    """sum_k weight_k * loss_k(out0, out1, batch, step)['total'] over the configured losses."""

    def __init__(self, spec: dict):
        super().__init__()
        if not isinstance(spec, dict) or not spec:
            raise ConfigError(f"losses must be a mapping NAME: weight or NAME: {{weight: W, ...}}, got {spec!r}")
        self.weights: dict[str, float] = {}
        self.parts = torch.nn.ModuleDict()
        for name, value in spec.items():
            conf = dict(value) if isinstance(value, dict) else {"weight": value}
            weight = conf.pop("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ConfigError(f"losses.{name}: weight must be a number, got {weight!r}")
            self.parts[name] = get_loss_class(name)(**conf)
            self.weights[name] = float(weight)

    def forward(self, out0: dict, out1: dict, batch: dict, step: int = 0) -> dict:
        result, total = {}, None
        for name, loss in self.parts.items():
            terms = loss(out0, out1, batch, step)
            part = self.weights[name] * terms["total"]
            total = part if total is None else total + part
            for key, value in terms.items():
                result[f"{name}/{key}"] = value.detach() if torch.is_tensor(value) else value
        result["total"] = total
        return result


def build_loss(spec: dict) -> WeightedLoss:
    return WeightedLoss(spec)
