"""Batched patch extraction by position, scale, orientation and affine shape (bilinear sampling).

Convention (one, used by every patch descriptor of localfeat): patch pixel (u, v), u, v = 0..P-1,
shows the image at

    (x, y) + step * R(angle) @ A @ (u - c, v - c),    c = P // 2,

with (x, y) the keypoint (pixel-centre coordinates, DESIGN.md), `step` the image pixels per patch
pixel, R(angle) the rotation by `angle` radians (x right, y down, so a positive angle turns x towards
y) and A a 2 x 2 affine shape (identity by default). The keypoint lands on patch pixel (c, c); with
step 1, angle 0, A = I and an integer keypoint, the patch is exactly the crop
image[y - c : y - c + P, x - c : x - c + P]. Outside the image the border pixel is repeated.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def patch_transforms(keypoints: torch.Tensor, step, angle=0.0, affine: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The (N, 2, 3) maps from centred patch coordinates (u - c, v - c, 1) to image pixels.

    keypoints (N, 2) pixels; step scalar or (N,) image pixels per patch pixel; angle scalar or (N,)
    radians; affine None or (N, 2, 2).
    """
    n = keypoints.shape[0]
    dt, dev = keypoints.dtype, keypoints.device
    step = torch.as_tensor(step, dtype=dt, device=dev).expand(n)
    angle = torch.as_tensor(angle, dtype=dt, device=dev).expand(n)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (N, 2, 2)
    lin = rot if affine is None else rot @ affine.to(dt)
    lin = lin * step[:, None, None]
    return torch.cat([lin, keypoints[:, :, None]], dim=2)


def extract_patches(image: torch.Tensor, keypoints, patch_size: int = 32, step=1.0, angle=0.0,
                    affine=None, batch_size: int = 4096) -> torch.Tensor:
    """Patches (N, C, P, P) of `image` (C, H, W) or (1, C, H, W), float, sampled bilinearly.

    keypoints: (N, 2) (x, y) pixels, pixel-centre origin (tensor or array).
    patch_size: P.  step: image pixels per patch pixel, scalar or (N,) (a patch covers P * step px).
    angle: radians, scalar or (N,).  affine: None or (N, 2, 2) shape matrices (e.g. from AffNet).
    Keypoints are processed in chunks of `batch_size` to bound memory. See the module docstring for
    the exact sampling positions.
    """
    img = image if image.dim() == 4 else image[None]
    if img.dim() != 4 or img.shape[0] != 1:
        raise ValueError(f"image has shape {tuple(image.shape)}, expected (C, H, W) or (1, C, H, W)")
    img = img.float()
    dev = img.device
    kp = torch.as_tensor(np.asarray(keypoints) if not torch.is_tensor(keypoints) else keypoints,
                         dtype=torch.float64, device=dev).reshape(-1, 2)
    n = kp.shape[0]
    c, h, w = img.shape[1:]
    if n == 0:
        return img.new_zeros((0, c, patch_size, patch_size))

    def per_point(value):
        t = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value,
                            dtype=torch.float64, device=dev)
        return t.expand(n) if t.dim() == 0 else t.reshape(n)

    step_t, angle_t = per_point(step), per_point(angle)
    aff = None
    if affine is not None:
        aff = torch.as_tensor(np.asarray(affine) if not torch.is_tensor(affine) else affine,
                              dtype=torch.float64, device=dev).reshape(n, 2, 2)
    centre = patch_size // 2
    offs = torch.arange(patch_size, dtype=torch.float64, device=dev) - centre
    gv, gu = torch.meshgrid(offs, offs, indexing="ij")
    local = torch.stack([gu.reshape(-1), gv.reshape(-1), torch.ones_like(gu.reshape(-1))], 0)  # (3, P*P)
    flat = img[0].reshape(c, h * w)
    out = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        T = patch_transforms(kp[sl], step_t[sl], angle_t[sl], None if aff is None else aff[sl])
        pts = T @ local  # (b, 2, P*P) image pixels, float64
        out.append(bilinear_border(flat, h, w, pts[:, 0], pts[:, 1]).reshape(-1, c, patch_size, patch_size))
    return torch.cat(out, 0)


def bilinear_border(flat: torch.Tensor, h: int, w: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of an image flattened to (C, H*W) at pixel positions x, y (B, Q); returns (B, C, Q).

    Positions are clamped to the image (border pixels repeat). Weights are computed in the precision
    of x, y (float64 from `extract_patches`), so integer positions return the pixels exactly.
    """
    x = x.clamp(0, w - 1)
    y = y.clamp(0, h - 1)
    x0f, y0f = torch.floor(x), torch.floor(y)
    wx, wy = (x - x0f).to(flat.dtype), (y - y0f).to(flat.dtype)
    x0, y0 = x0f.long(), y0f.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    b, q = x.shape

    def at(yy, xx):
        return flat[:, (yy * w + xx).reshape(-1)].reshape(-1, b, q).transpose(0, 1)  # (B, C, Q)

    wx, wy = wx[:, None], wy[:, None]
    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def extract_patches_pyramid(image: np.ndarray, keypoints, diameters, patch_size: int = 32, angle=0.0,
                            affine=None, device=None) -> torch.Tensor:
    """Patches (N, 1, P, P) float32 in [0, 255] covering `diameters` (N,) image pixels each, from a
    Gaussian pyramid so that a large support is not aliased.

    image: uint8 or float (H, W) grey. keypoints (N, 2) pixels. Each patch is sampled (see
    `extract_patches`) from the pyramid level 2^-l (cv2.pyrDown) with l = floor(log2(step)) (clipped at 0),
    step = diameter / P, where it has step / 2^l in [1, 2) level pixels per patch pixel
    (kornia's `extract_patches_from_pyramid` does the same). Level coordinates: (x + 0.5) / 2^l - 0.5.
    """
    import cv2

    kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
    n = len(kp)
    if n == 0:
        return torch.zeros((0, 1, patch_size, patch_size))
    step = np.broadcast_to(np.asarray(diameters, np.float64), (n,)) / patch_size
    ang = np.broadcast_to(np.asarray(angle, np.float64), (n,))
    aff = None if affine is None else np.asarray(affine, np.float64).reshape(n, 2, 2)
    max_level = max(0, int(np.floor(np.log2(max(min(np.shape(image)[:2]), 1) / 4))))
    lvl = np.clip(np.floor(np.log2(np.maximum(step, 1e-12))), 0, max_level).astype(np.int64)
    out = torch.zeros((n, 1, patch_size, patch_size))
    level = np.asarray(image, np.float32)
    for l in range(int(lvl.max()) + 1):
        if l > 0:
            level = cv2.pyrDown(level)
        sel = np.nonzero(lvl == l)[0]
        if len(sel) == 0:
            continue
        f = 2.0 ** l
        t = torch.from_numpy(level)[None].to(device if device is not None else "cpu")
        patches = extract_patches(t, (kp[sel] + 0.5) / f - 0.5, patch_size, step[sel] / f, ang[sel],
                                  None if aff is None else aff[sel])
        out[torch.from_numpy(sel)] = patches.cpu()
    return out
