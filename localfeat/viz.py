"""Pictures: keypoints on an image, matches between two images, dense score maps.

Drawing is done with OpenCV on uint8 RGB arrays (fast, deterministic, no display needed);
`save_image` writes atomically in the format of the file's extension. `with_header` puts title lines
and a colour legend above a picture. Coordinates follow the data contract (pixel centres at integers).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from .io.atomic import atomic_path

GREEN, RED = (40, 200, 60), (230, 40, 40)
_SUBPIXEL = 4  # cv2 drawing with 4 fractional bits: sub-pixel positions are drawn where they are


IMAGE_FORMATS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def save_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB (H, W, 3) or gray (H, W) uint8 image atomically, encoded as its extension says
    (PNG, JPEG at quality 95, WebP, BMP, TIFF); another extension is a ValueError."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_FORMATS:
        raise ValueError(f"{path}: cannot tell the image format from the extension {ext or '(none)'!r}; "
                         f"use one of {', '.join(IMAGE_FORMATS)}")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise ValueError(f"cannot encode {path} as {ext}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


save_png = save_image  # the former name, kept for callers that write .png files


def with_header(picture: np.ndarray, lines: list[str], legend: Optional[list] = None) -> np.ndarray:
    """`picture` (H, W, 3) below a white strip holding `lines` of text (ASCII; other characters show
    as '?', a limit of OpenCV's fonts) and a legend: (RGB colour, label) swatches on the last row."""
    width = picture.shape[1]
    scale = float(np.clip(width / 1400, 0.45, 1.0))
    line_h = int(round(30 * scale)) + 4
    rows = len(lines) + (1 if legend else 0)
    header = np.full((rows * line_h + 8, width, 3), 255, np.uint8)
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, int(round(1.5 * scale)))
    for k, text in enumerate(lines):
        text = text.encode("ascii", "replace").decode()
        cv2.putText(header, text, (8, (k + 1) * line_h - 6), font, 0.8 * scale, (0, 0, 0), thick, cv2.LINE_AA)
    if legend:
        x, y = 8, rows * line_h - 6
        for color, label in legend:
            size = int(16 * scale) + 4
            cv2.rectangle(header, (x, y - size + 2), (x + size, y + 2), tuple(int(v) for v in color), -1)
            x += size + 6
            label = label.encode("ascii", "replace").decode()
            cv2.putText(header, label, (x, y), font, 0.7 * scale, (0, 0, 0), thick, cv2.LINE_AA)
            x += cv2.getTextSize(label, font, 0.7 * scale, thick)[0][0] + 24
    return np.concatenate([header, picture], axis=0)


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * (1 << _SUBPIXEL)).astype(np.int64)


def score_colors(values: np.ndarray) -> np.ndarray:
    """(M,) values -> (M, 3) uint8 RGB colours (turbo), min..max scaled."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return np.zeros((0, 3), np.uint8)
    span = v.max() - v.min()
    v = (v - v.min()) / span if span > 0 else np.ones_like(v)
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0, ::-1]
    return lut[np.round(v * 255).astype(int)]


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, colors=None, radius: int = 2) -> np.ndarray:
    """RGB copy of `image` (H, W[, 3]) with `keypoints` (N, 2) drawn as filled circles."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image.copy()
    if colors is None:
        colors = np.tile(np.array([[255, 220, 0]], np.uint8), (len(keypoints), 1))
    for (x, y), c in zip(_fixed(keypoints), colors):
        cv2.circle(out, (int(x), int(y)), radius << _SUBPIXEL, tuple(int(v) for v in c), -1,
                   cv2.LINE_AA, _SUBPIXEL)
    return out


def side_by_side(image0: np.ndarray, image1: np.ndarray, gap: int = 10) -> tuple[np.ndarray, int]:
    """Both images (as RGB) next to each other on a white canvas; returns it and the x offset of image1."""
    a = cv2.cvtColor(image0, cv2.COLOR_GRAY2RGB) if image0.ndim == 2 else image0
    b = cv2.cvtColor(image1, cv2.COLOR_GRAY2RGB) if image1.ndim == 2 else image1
    h = max(a.shape[0], b.shape[0])
    canvas = np.full((h, a.shape[1] + gap + b.shape[1], 3), 255, np.uint8)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1] + gap:] = b
    return canvas, a.shape[1] + gap


def draw_matches(image0: np.ndarray, image1: np.ndarray, keypoints0: np.ndarray, keypoints1: np.ndarray,
                 indices: np.ndarray, inliers: Optional[np.ndarray] = None, scores: Optional[np.ndarray] = None,
                 max_lines: Optional[int] = None, thickness: int = 1) -> np.ndarray:
    """Side-by-side picture with a line per match.

    indices (M, 2) into keypoints0 (N0, 2) and keypoints1 (N1, 2); inliers (M,) bool colours lines
    green/red; otherwise scores (M,) colour them (turbo), else a single colour. max_lines keeps
    an evenly spaced subset.
    """
    canvas, offset = side_by_side(image0, image1)
    indices = np.asarray(indices, np.int64).reshape(-1, 2)
    if inliers is not None:
        inliers = np.asarray(inliers, bool).reshape(-1)
        if len(inliers) != len(indices):
            raise ValueError(f"inlier mask has {len(inliers)} entries for {len(indices)} matches")
        colors = np.where(inliers[:, None], np.array(GREEN, np.uint8), np.array(RED, np.uint8))
    elif scores is not None and len(scores) == len(indices):
        colors = score_colors(scores)
    else:
        colors = np.tile(np.array([[0, 200, 255]], np.uint8), (len(indices), 1))
    keep = np.arange(len(indices))
    if max_lines is not None and len(indices) > max_lines:
        keep = np.linspace(0, len(indices) - 1, max_lines).round().astype(int)
    p0 = _fixed(keypoints0[indices[keep, 0]])
    p1 = _fixed(keypoints1[indices[keep, 1]] + np.array([offset, 0.0]))
    for a, b, c in zip(p0, p1, colors[keep]):
        color = tuple(int(v) for v in c)
        cv2.line(canvas, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), color, thickness, cv2.LINE_AA, _SUBPIXEL)
        for p in (a, b):
            cv2.circle(canvas, (int(p[0]), int(p[1])), 2 << _SUBPIXEL, color, -1, cv2.LINE_AA, _SUBPIXEL)
    return canvas


def draw_heatmaps(image: np.ndarray, maps: dict, alpha: float = 0.6) -> np.ndarray:
    """The image, then each named map (H, W) over it (turbo colours), in one row with titles."""
    base = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image
    panels = [base]
    for name, m in maps.items():
        m = np.asarray(m, np.float32)
        if m.shape != base.shape[:2]:
            m = cv2.resize(m, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
        lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
        norm = np.zeros_like(m) if hi <= lo else (m - lo) / (hi - lo)
        colored = cv2.applyColorMap(np.round(norm * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
        panel = cv2.addWeighted(base, 1 - alpha, colored, alpha, 0)
        cv2.putText(panel, f"{name} [{lo:.2g}, {hi:.2g}]", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                    (255, 255, 255), 2, cv2.LINE_AA)
        panels.append(panel)
    gap = np.full((base.shape[0], 10, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.concatenate(row, axis=1)
