"""Shared building blocks of the dense models: device choice, image tensors, NMS, top-k,
descriptor sampling. Every model uses these; none keeps its own copy.

Shapes: B batch, C channels, H x W map size, N keypoints, D descriptor dimension.
Coordinates are pixel-centre (the centre of the top-left pixel is (0, 0)) unless stated.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(device: Optional[str]) -> torch.device:
    """None -> CUDA when available, else CPU; otherwise `torch.device(device)`."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def image_to_tensor(image: np.ndarray, device=None, mean=None, std=None) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) -> float32 (1, C, H, W) in [0, 1], optionally (x - mean) / std per channel.

    The division by 255 and the normalisation are done in float32 in this order, as torchvision's
    ToTensor + Normalize do, so that outputs match the original implementations bit for bit.
    """
    arr = image[..., None] if image.ndim == 2 else image
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float().div(255.0)
    if mean is not None:
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        t = t.sub(m).div(s)
    return t.to(device) if device is not None else t


def max_filter_nms(scores: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """Boolean mask (B, 1, H, W) of pixels equal to the max of their kernel_size x kernel_size window.

    Stride 1, padding kernel_size // 2; every pixel of a flat plateau passes (as in R2D2/DISK).
    """
    pooled = F.max_pool2d(scores, kernel_size=kernel_size, stride=1, padding=kernel_size // 2)
    return scores == pooled


def top_k_indices(scores: torch.Tensor, k: Optional[int]) -> torch.Tensor:
    """Indices of the k highest `scores` (N,), best first; all of them when k is None or k >= N."""
    if k is None or k >= scores.numel():
        return torch.argsort(scores, descending=True, stable=True)
    return torch.topk(scores, k, sorted=True).indices


def pixel_to_grid(keypoints: torch.Tensor, size_wh: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Pixel-centre coordinates (B, N, 2) of an image of size (W, H) -> grid_sample coordinates in [-1, 1].

    align_corners=False: the image border is at -1/+1 (x_norm = (x + 0.5) / W * 2 - 1);
    align_corners=True:  the centres of the corner pixels are at -1/+1 (x_norm = x / (W - 1) * 2 - 1).
    """
    w, h = size_wh
    size = keypoints.new_tensor([w, h])
    if align_corners:
        return keypoints / (size - 1).clamp(min=1) * 2 - 1
    return (keypoints + 0.5) / size * 2 - 1


def sample_dense(dense: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear",
                 align_corners: bool = False) -> torch.Tensor:
    """Sample a dense map (B, C, h, w) at grid coordinates (B, N, 2) in [-1, 1]; returns (B, N, C)."""
    out = F.grid_sample(dense, grid[:, None], mode=mode, align_corners=align_corners)
    return out[:, :, 0].transpose(1, 2)


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    return F.normalize(x, p=2, dim=dim, eps=eps)
