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

from .config import ConfigError, short_repr

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(device: Optional[str]) -> torch.device:
    """None -> CUDA when available, else CPU; otherwise `torch.device(device)`."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"device={short_repr(device)} is not a torch device ({exc}); "
                          "use e.g. cpu or cuda:0") from None
    if dev.type == "cuda":  # fail here with a clear message, not in the first CUDA call with an AssertionError
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={device!r}: no CUDA device on this machine; use device=cpu (or None)")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device={device!r}: this machine has {count} CUDA device(s), cuda:0 to "
                              f"cuda:{count - 1}")
    return dev


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


def normalize_images(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(images - mean) / std per channel of a batch (B, C, H, W) of values in [0, 1] (ImageNet's by default)."""
    return (images - images.new_tensor(mean).view(1, -1, 1, 1)) / images.new_tensor(std).view(1, -1, 1, 1)


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
                 align_corners: bool = False, padding_mode: str = "zeros") -> torch.Tensor:
    """Sample a dense map (B, C, h, w) at grid coordinates (B, N, 2) in [-1, 1]; returns (B, N, C)."""
    out = F.grid_sample(dense, grid[:, None], mode=mode, align_corners=align_corners, padding_mode=padding_mode)
    return out[:, :, 0].transpose(1, 2)


def sample_at_pixels(dense: torch.Tensor, xy: torch.Tensor, stride: int = 1,
                     padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinear samples (B, N, C) of a map (B, C, h, w) of stride `stride` (map pixel j covers input pixels
    stride*j .. stride*j + stride - 1, centre stride*j + (stride - 1)/2) at input pixels xy (B, N, 2),
    pixel-centre convention. padding_mode 'border' clamps to the outermost map pixels, as bilinear
    `F.interpolate(..., align_corners=False)` upsampling does."""
    h, w = dense.shape[-2:]
    grid = pixel_to_grid(xy, (w * stride, h * stride))
    return sample_dense(dense, grid.to(dense.dtype), padding_mode=padding_mode)


def fold_batchnorm(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> torch.nn.Conv2d:
    """One Conv2d (with bias) equal to conv followed by eval-mode bn: W * g / sqrt(var + eps),
    (b - mean) * g / sqrt(var + eps) + beta (g = 1, beta = 0 when bn is not affine)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    fused = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                            bias=True).to(conv.weight.device)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        fused.bias.copy_(bias)
    return fused


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    return F.normalize(x, p=2, dim=dim, eps=eps)


class _NormalizeMap(torch.autograd.Function):
    """y = x / max(||x||, eps) along dim 1, with the gradient written out: (g - y <g, y>) / max(||x||, eps)
    (g / eps where the norm is clamped). Autograd's graph of `F.normalize` keeps the norm, its expansion and the
    quotient's two gradients: about twice the passes over a large map."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        # A float16/bfloat16 map (CUDA autocast) is normalised in float32, as autocast runs F.normalize's norm.
        low = x.dtype in (torch.float16, torch.bfloat16)
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32 if low else None)
        denom = norm.clamp_min(eps)
        y = x / denom
        ctx.save_for_backward(y, denom, norm > eps)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, denom, unclamped = ctx.saved_tensors
        inner = (grad * y).sum(1, keepdim=True).masked_fill_(~unclamped, 0)
        return torch.addcmul(grad, y, inner, value=-1).div_(denom), None


def l2_normalize_map(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """`l2_normalize(x, dim=1)` of a dense map (B, D, H, W), same values, for maps that training
    differentiates: the backward is written out (`_NormalizeMap`), 2x fewer passes over the map."""
    return _NormalizeMap.apply(x, eps)


def argmax_pool_nms(scores: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Boolean mask (same shape as `scores`, (B, H, W) or (B, 1, H, W)) of window maxima, ties resolved.

    A pixel is kept when the argmax that `F.max_pool2d(..., return_indices=True)` reports for the
    kernel_size x kernel_size window centred on it (stride 1, out-of-image = -inf) is the pixel itself.
    Within a plateau only the pixel PyTorch's max-pool reports first survives (DISK's NMS).
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    x = scores if scores.dim() == 4 else scores[:, None]
    _, idx = F.max_pool2d(x, kernel_size=kernel_size, stride=1, padding=kernel_size // 2, return_indices=True)
    h, w = x.shape[-2:]
    own = torch.arange(h * w, device=x.device).view(1, 1, h, w)
    mask = idx == own
    return mask if scores.dim() == 4 else mask[:, 0]


def iterative_max_pool_nms(scores: torch.Tensor, radius: int, iterations: int = 2) -> torch.Tensor:
    """SuperGlue / LightGlue / ALIKE `simple_nms`: scores (B, H, W) or (B, 1, H, W), non-maxima set to 0.

    Window maxima of size 2*radius+1 are kept; then, `iterations` times, pixels outside the windows of
    the current maxima that are maxima of the remaining scores are added. The max filters are
    `window_max`, equal bit for bit to the originals' `F.max_pool2d` and faster on CPU
    (tests/extractors/test_alike.py compares with the max_pool2d formulation).
    """
    k = 2 * radius + 1
    zeros = torch.zeros_like(scores)
    max_mask = scores == window_max(scores, k)
    for _ in range(iterations):
        supp_mask = window_max(max_mask.to(scores.dtype), k) > 0
        supp_scores = torch.where(supp_mask, zeros, scores)
        new_max_mask = supp_scores == window_max(supp_scores, k)
        max_mask = max_mask | (new_max_mask & ~supp_mask)
    return torch.where(max_mask, scores, zeros)


def greedy_box_nms(xy: np.ndarray, scores: np.ndarray, radius: int, size_wh: tuple[int, int]) -> np.ndarray:
    """Greedy NMS of integer points (Magic Leap SuperPoint `nms_fast`); returns kept indices, best first.

    xy (N, 2) integer pixel (x, y) inside an image of size (W, H); scores (N,). Points are visited by
    decreasing score (stable for ties); each kept point suppresses the (2*radius+1)^2 box around it.
    """
    w, h = size_wh
    order = np.argsort(-np.asarray(scores), kind="stable")
    grid = np.zeros((h + 2 * radius, w + 2 * radius), np.int8)  # 1 = candidate, -1 = kept, 0 = free/suppressed
    xs = np.asarray(xy[:, 0], np.int64) + radius
    ys = np.asarray(xy[:, 1], np.int64) + radius
    grid[ys, xs] = 1
    keep = []
    for i in order.tolist():
        x, y = xs[i], ys[i]
        if grid[y, x] == 1:
            grid[y - radius:y + radius + 1, x - radius:x + radius + 1] = 0
            grid[y, x] = -1
            keep.append(i)
    return np.asarray(keep, np.int64)


def image_pyramid(image: torch.Tensor, scale_f: float = 2 ** 0.25, min_scale: float = 0.0,
                  max_scale: float = 1.0, min_size: Optional[int] = 256, max_size: Optional[int] = 1024):
    """Multi-scale pyramid of R2D2's `extract_multiscale`: yields (s, level) for the kept levels.

    image: (B, C, H, W). The nominal scale s starts at 1 and is divided by `scale_f` after each
    level; the loop runs while s + 0.001 >= max(min_scale, min_size / max(H, W)) and a level is
    yielded when s - 0.001 <= min(max_scale, max_size / max(H, W)) (min_size/max_size None = no
    limit). Each level is the bilinear (align_corners=False, no antialias) resize of the PREVIOUS
    level to (round(H*s), round(W*s)), also for levels that are not yielded. Levels are computed
    lazily, so only one is held at a time.
    """
    if not scale_f > 1:
        raise ValueError(f"scale_f must be > 1, got {scale_f!r}")
    h, w = image.shape[-2:]
    lowest = max(min_scale, (min_size or 0) / max(h, w))
    highest = min(max_scale, max_size / max(h, w) if max_size is not None else float("inf"))
    s, level = 1.0, image
    while s + 0.001 >= lowest:
        if s - 0.001 <= highest:
            yield s, level
        s /= scale_f
        nh, nw = round(h * s), round(w * s)
        if nh < 1 or nw < 1:
            return
        level = F.interpolate(level, (nh, nw), mode="bilinear", align_corners=False)


def tile_windows(height: int, width: int, tile: Optional[int], margin: int, multiple: int = 1) -> list:
    """Overlapping windows that cover an H x W map for tiled inference of a convolutional network.

    The cores (tile x tile, the last ones smaller) partition the map; each window is its core grown
    by `margin` on every side and clipped to the map. With margin >= the network's receptive radius,
    the output of a window is exact inside its core. Starts are multiples of `multiple` (e.g. 2 for a
    network that pools 2x2). tile None = one window.

    Returns a list of (window, core) boxes (y0, y1, x0, x1) in map pixels (end exclusive).
    """
    if tile is None or (height <= tile and width <= tile):
        return [((0, height, 0, width), (0, height, 0, width))]
    if tile < multiple or tile % multiple:
        raise ValueError(f"tile size {tile} must be a positive multiple of {multiple}")
    margin = -(-margin // multiple) * multiple
    out = []
    for y0 in range(0, height, tile):
        y1 = min(y0 + tile, height)
        for x0 in range(0, width, tile):
            x1 = min(x0 + tile, width)
            window = (max(0, y0 - margin), min(height, y1 + margin), max(0, x0 - margin), min(width, x1 + margin))
            out.append((window, (y0, y1, x0, x1)))
    return out


def window_max(scores: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Max filter over kernel_size x kernel_size windows of (..., H, W), stride 1, out-of-image = -inf.

    Equal (bit for bit) to ``F.max_pool2d(scores, kernel_size, stride=1, padding=kernel_size // 2)``, but
    computed as separable shifted maxima (2 * (kernel_size - 1) element-wise maxima): on CPU this is
    ~10-40x faster than max_pool2d for kernel_size >= 5. `scores == window_max(scores, k)` is the NMS mask.
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    r = kernel_size // 2
    if r == 0:
        return scores.clone()
    h, w = scores.shape[-2:]
    padded = F.pad(scores, (r, r, r, r), value=float("-inf"))
    rows = padded[..., :, 0:w]
    for d in range(1, kernel_size):
        rows = torch.maximum(rows, padded[..., :, d:d + w])
    out = rows[..., 0:h, :]
    for d in range(1, kernel_size):
        out = torch.maximum(out, rows[..., d:d + h, :])
    return out


def _gaussian_blur_reflect(image: torch.Tensor, sigmas: tuple[float, float]) -> torch.Tensor:
    """kornia's `gaussian_blur2d(image, ks, sigmas, 'reflect')`, separable: kernel size int(max(4 sigma, 3))
    made odd, weights exp(-x^2 / (2 sigma^2)) normalised, reflected border. image (B, C, H, W)."""
    out = image
    for axis, sigma in ((-2, sigmas[0]), (-1, sigmas[1])):
        k = int(max(2.0 * 2 * sigma, 3))
        k += 1 - k % 2
        x = torch.arange(k, dtype=image.dtype, device=image.device) - k // 2
        g = torch.exp(-x.pow(2) / (2 * sigma ** 2))
        g = g / g.sum()
        c = out.shape[1]
        weight = (g.view(1, 1, k, 1) if axis == -2 else g.view(1, 1, 1, k)).repeat(c, 1, 1, 1)
        pad = (0, 0, k // 2, k // 2) if axis == -2 else (k // 2, k // 2, 0, 0)
        out = F.conv2d(F.pad(out, pad, mode="reflect"), weight, groups=c)
    return out


def resize_long_side(image: torch.Tensor, long_side: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """Resize (B, C, H, W) so that its longer side is `long_side` pixels, up or down, as LightGlue's
    extractors do (kornia `resize(img, long_side, side='long', interpolation='bilinear', antialias=True)`).

    New size: the longer side = long_side, the shorter = int(long_side * short / long). Downscaling first
    blurs with kornia's antialiasing Gaussian (sigma = (factor - 1) / 2 per axis); upscaling is plain
    bilinear (align_corners=False); an image already of that size is returned unchanged.
    Returns the image and the factors (sx, sy) = original size / new size, for `map_keypoints_to_original`.
    """
    h, w = image.shape[-2:]
    if w >= h:
        nh, nw = int(long_side / (w / h)), long_side
    else:
        nh, nw = long_side, int(long_side * (w / h))
    if (nh, nw) == (h, w):
        return image, (1.0, 1.0)
    fh, fw = h / nh, w / nw
    if max(fh, fw) > 1:
        image = _gaussian_blur_reflect(image, (max((fh - 1.0) / 2.0, 0.001), max((fw - 1.0) / 2.0, 0.001)))
    return F.interpolate(image, size=(nh, nw), mode="bilinear", align_corners=False), (w / nw, h / nh)


def strict_maxima(scores: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Boolean mask (..., H, W) of pixels STRICTLY greater than the other kernel_size^2 - 1 pixels of their
    window (kornia's `nms2d`, used by its DISK and so by LightGlue's). Pixels closer than kernel_size // 2 to
    the border, whose window leaves the image, are never kept; plateaus never are either.
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    r = kernel_size // 2
    h, w = scores.shape[-2:]
    lead = scores.shape[:-2]
    x = scores.reshape(-1, 1, h, w)
    padded = F.pad(x, (r, r, r, r), mode="replicate")
    others = torch.full_like(x, float("-inf"))
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            if dy != r or dx != r:
                others = torch.maximum(others, padded[..., dy:dy + h, dx:dx + w])
    mask = x > others
    if r:
        mask[..., :r, :] = False
        mask[..., h - r:, :] = False
        mask[..., :, :r] = False
        mask[..., :, w - r:] = False
    return mask.reshape(*lead, h, w)


def box_iou_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
                max_keep: Optional[int] = None) -> np.ndarray:
    """Greedy non-maximum suppression of axis-aligned boxes by IoU; returns kept indices, best first.

    boxes (N, 4) as (x0, y0, x1, y1) with x1 >= x0, y1 >= y0 (continuous coordinates, area (x1-x0)*(y1-y0));
    scores (N,). Boxes are visited by decreasing score (stable for ties); a box is kept when its IoU with
    every kept box is <= iou_threshold (so the kept boxes are pairwise <= iou_threshold), until `max_keep`
    boxes are kept (None = no limit). iou_threshold >= 1 keeps everything (top-k only).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores), kind="stable")
    if iou_threshold >= 1.0:
        return order[:max_keep].astype(np.int64)
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0) * (y1 - y0)
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        ih = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = iw * ih
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)
