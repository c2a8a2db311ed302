"""Training of the multi-level attention model with the trainer of `localfeat.train` (homography pairs or posed
scenes, any of its losses: the distinctiveness loss with its peakiness term, D2-Net's, ...).

    from localfeat.train.multilevel_attention import train, pretrain_autoencoder
    train("runs/mla", overrides={"steps": 300})          # CPU preset: resnet18, distinctiveness + d2net
    localfeat.load_extractor("multilevel_attention", arch="resnet18", weights="runs/mla/weights.pt")

The model's training hooks (build, dense outputs, save) live in its module,
`localfeat.extractors.multilevel_attention`, like every trainable model's; this module adds the CPU preset, and
`pretrain_autoencoder` fits the 1x1 encoders/decoders to reconstruct the backbone features (MSE) before the
attention training, as an option.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..extractors.multilevel_attention import TRAIN_DEFAULTS, MultiLevelAttentionNet
from ..io.atomic import torch_save_atomic
from ..ops import normalize_images

logger = logging.getLogger(__name__)

# A CPU preset (minutes): small crops, distinctiveness (+ its peakiness term) and D2-Net's descriptor loss.
CPU_PRESET = {
    "model": {"name": "multilevel_attention", **TRAIN_DEFAULTS},
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


def train(run_dir, config: Optional[dict] = None, overrides: Optional[dict] = None, dataset=None,
          overwrite: bool = False) -> Path:
    """`localfeat.train.trainer.train` with the CPU preset (or `config`)."""
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
            feats = net.backbone(normalize_images(batch.to(device)), outputs=tuple(net.levels))
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


__all__ = ["train", "pretrain_autoencoder", "CPU_PRESET", "save"]
