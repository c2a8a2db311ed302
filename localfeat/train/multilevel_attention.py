"""Training of the multi-level attention model with the trainer of `localfeat.train` (homography pairs or posed
scenes, any of its losses: the distinctiveness loss with its peakiness term, D2-Net's, ...).

    from localfeat.train.multilevel_attention import train, pretrain_autoencoder
    train("runs/mla", overrides={"steps": 300})          # CPU preset: resnet18, distinctiveness + d2net
    localfeat.load_extractor("multilevel_attention", arch="resnet18", weights="runs/mla/weights.pt")

Importing this module registers the trainer adapter 'multilevel_attention' (the trainer's own adapters module is
not edited): `build` (optionally from a state_dict file or with torchvision ImageNet weights in the backbone),
`dense` (the network's dense outputs at input resolution: 'descriptors' (B, 192, H, W), 'scores' (B, 1, H, W)
= attention / (1 + attention), stride 1), `save` (the state_dict the extractor loads).
`pretrain_autoencoder` fits the 1x1 encoders/decoders to reconstruct the backbone features (MSE) before the
attention training, as an option.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..extractors.multilevel_attention import MultiLevelAttentionNet
from ..io.atomic import torch_save_atomic
from .adapters import Adapter, _normalise, register

logger = logging.getLogger(__name__)

DEFAULT_MODEL = {"arch": "resnet18", "levels": ["layer1", "layer2", "layer3"], "weights": None,
                 "backbone_weights": None}

# A CPU preset (minutes): small crops, distinctiveness (+ its peakiness term) and D2-Net's descriptor loss.
CPU_PRESET = {
    "model": {"name": "multilevel_attention", **DEFAULT_MODEL},
    "steps": 300,
    "batch_size": 4,
    "data": {"crop_size": 128, "base_size": 256, "num_workers": 0},
    "losses": {"distinctiveness": {"weight": 1.0, "peaky_weight": 1.0, "N": 16},
               "d2net": {"weight": 1.0, "max_points": 256}},
    "optimizer": {"name": "adam", "lr": 3e-4, "weight_decay": 0.0},
    "checkpoint_every": 100,
    "log_every": 10,
    "validation": {"every": 100, "synth_sequences": 4, "synth_size": 256, "top_k": 500, "nms": 9},
    "amp": False,
    "tensorboard": False,
}


def _build(conf: dict) -> MultiLevelAttentionNet:
    net = MultiLevelAttentionNet(conf["arch"], tuple(conf["levels"]))
    if conf["weights"] is not None:
        from ..hub import load_torch_checkpoint

        net.load_state_dict(load_torch_checkpoint(conf["weights"]), strict=True)
    elif conf["backbone_weights"] is not None:
        from ..extractors.delf import load_backbone_from_conf

        load_backbone_from_conf(net, conf)
    return net


def _dense(net: MultiLevelAttentionNet, images: torch.Tensor) -> dict:
    d = net.dense(_normalise(images))
    return {"descriptors": d["descriptors"], "scores": d["scores"], "stride": 1}


ADAPTER = register(Adapter(
    "multilevel_attention", dict(DEFAULT_MODEL), _build, _dense,
    lambda net, conf, path: torch_save_atomic(net.state_dict(), path),
    lambda conf: {"arch": conf["arch"], "levels": list(conf["levels"])}))


def train(run_dir, config: Optional[dict] = None, overrides: Optional[dict] = None, dataset=None,
          overwrite: bool = False) -> Path:
    """`localfeat.train.trainer.train` with the CPU preset (or `config`) and this model's adapter registered."""
    from .trainer import train as _train

    return _train(config or CPU_PRESET, run_dir, overrides=overrides, dataset=dataset, overwrite=overwrite)


def pretrain_autoencoder(net: MultiLevelAttentionNet, images, steps: int = 100, crop_size: int = 128,
                         batch_size: int = 4, lr: float = 1e-3, seed: int = 0, device=None) -> list:
    """Fit the encoders/decoders (only) to reconstruct the backbone features of random crops of `images`
    (uint8 RGB arrays); returns the loss per step."""
    from ..ops import resolve_device

    device = resolve_device(device)
    net.to(device).train()
    rng = np.random.default_rng(seed)
    params = list(net.encoders.parameters()) + list(net.decoders.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        crops = []
        for i in rng.integers(0, len(images), batch_size):
            img = images[i]
            y = int(rng.integers(0, max(1, img.shape[0] - crop_size + 1)))
            x = int(rng.integers(0, max(1, img.shape[1] - crop_size + 1)))
            crops.append(img[y:y + crop_size, x:x + crop_size])
        s = min(min(c.shape[:2]) for c in crops)
        batch = torch.from_numpy(np.stack([c[:s, :s] for c in crops])).permute(0, 3, 1, 2).float().div(255)
        with torch.no_grad():
            feats = net.backbone(_normalise(batch.to(device)), outputs=tuple(net.levels))
        loss = torch.stack([torch.nn.functional.mse_loss(d(e(feats[lv])), feats[lv]) for lv, e, d in
                            zip(net.levels, net.encoders, net.decoders)]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def save(net: MultiLevelAttentionNet, path) -> Path:
    path = Path(path)
    torch_save_atomic(net.state_dict(), path)
    return path


__all__ = ["train", "pretrain_autoencoder", "CPU_PRESET", "ADAPTER", "save"]
