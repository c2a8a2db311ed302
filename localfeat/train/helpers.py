"""What a training run needs besides the model: seeding and every random state (for exact resumes),
the learning-rate schedule, the optimiser and frozen parameters."""
from __future__ import annotations

import random

import numpy as np
import torch

from ..config import ConfigError


def rng_state() -> dict:
    """Every random state, as tensors and plain containers (readable with torch's weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(conf: dict, step: int) -> float:
    s = conf["scheduler"]
    warm = int(s.get("warmup_steps") or 0)
    if warm and step < warm:
        return (step + 1) / warm
    if s["name"] == "constant":
        return 1.0
    if s["name"] == "cosine":
        base, lo = conf["optimizer"]["lr"], s.get("min_lr", 0.0)
        t = min(1.0, (step - warm) / max(1, conf["steps"] - warm))
        return float((lo + (base - lo) * 0.5 * (1 + np.cos(np.pi * t))) / base)
    if s["name"] == "linear":
        return max(0.0, 1 - (step - warm) / max(1, conf["steps"] - warm))
    raise ConfigError(f"config.scheduler.name {s['name']!r} is not one of constant, cosine, linear")


def build_optimizer(conf: dict, params):
    o = conf["optimizer"]
    if o["name"] == "adam":
        return torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
    if o["name"] == "adamw":
        return torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], weight_decay=o["weight_decay"], momentum=0.9)
    raise ConfigError(f"config.optimizer.name {o['name']!r} is not one of adam, adamw, sgd")


def freeze(net: torch.nn.Module, prefixes) -> list[str]:
    """Set requires_grad=False on the parameters whose name starts with one of `prefixes`; returns
    the frozen names. A prefix matching no parameter is an error naming the parameter groups."""
    names = [n for n, _ in net.named_parameters()]
    frozen = []
    for prefix in prefixes or []:
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            tops = sorted({n.split(".")[0] for n in names} | {".".join(n.split(".")[:2]) for n in names})
            raise ConfigError(f"freeze: {prefix!r} matches no parameter; parameter groups: {tops[:30]}")
        frozen += hits
    for n, p in net.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    return sorted(set(frozen))
