"""Image reading and listing.

`read_image` reads PNG, JPEG, PPM/PGM/PBM, TIFF, WebP and BMP; 8- or 16-bit; gray,
RGB or RGBA (alpha is dropped, as PIL's ``convert('RGB')`` does); EXIF
orientation applied. It returns uint8 arrays, RGB (H, W, 3) or gray (H, W). A file
that is empty, truncated, unreadable or not an image raises `ImageReadError`
naming the file.
"""
from __future__ import annotations

import glob as globlib
import os
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff", ".webp", ".bmp")


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and why."""


def _jpeg_is_truncated(data: bytes) -> bool:
    # A complete JPEG has an end-of-image marker after its last start-of-scan; entropy-coded
    # data byte-stuffs 0xFF, so the marker cannot appear there by chance.
    if data[:2] != b"\xff\xd8":
        return False
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 copy of an 8-bit, 16-bit or float ([0, 1]) image."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    if image.dtype.kind == "f":
        return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    raise ImageReadError(f"unsupported image dtype {image.dtype}")


def read_image(path: str | os.PathLike, mode: str = "rgb") -> np.ndarray:
    """Read an image file as uint8: `mode` 'rgb' gives (H, W, 3), 'gray' gives (H, W)."""
    if mode not in ("rgb", "gray"):
        raise ValueError(f"mode must be 'rgb' or 'gray', got {mode!r}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    if _jpeg_is_truncated(data):
        raise ImageReadError(f"{path}: truncated or corrupt JPEG (no end-of-image marker)")
    # ANYDEPTH keeps 16-bit; ANYCOLOR keeps gray as gray. Unlike IMREAD_UNCHANGED, both apply EXIF orientation.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None or image.size == 0:
        raise ImageReadError(f"{path}: not an image, or a corrupt one (OpenCV cannot decode it)")
    image = to_uint8(image)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if mode == "gray":
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def as_image_array(image, mode: str = "rgb") -> np.ndarray:
    """A path or an array (H, W) / (H, W, 3) / (H, W, 4), as uint8 in `mode` ('rgb' or 'gray')."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, mode)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3))):
        raise ValueError(f"image array has shape {arr.shape}, expected (H, W), (H, W, 3) or (H, W, 4)")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    arr = np.ascontiguousarray(to_uint8(arr))
    if mode == "gray":
        return cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY) if arr.ndim == 3 else arr
    return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB) if arr.ndim == 2 else arr


def resize_max(image: np.ndarray, max_size: Optional[int]) -> tuple[np.ndarray, tuple[float, float]]:
    """Downscale so that max(H, W) <= max_size (area interpolation); never upscales.

    Returns the image and the factors (sx, sy) = original size / new size, used by
    `map_keypoints_to_original`.
    """
    h, w = image.shape[:2]
    if max_size is None or max(h, w) <= max_size:
        return image, (1.0, 1.0)
    scale = max_size / max(h, w)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return resized, (w / new_w, h / new_h)


def map_keypoints_to_original(keypoints: np.ndarray, factors: tuple[float, float]) -> np.ndarray:
    """Map (N, 2) pixel-centre coordinates of a resized image back to the original image.

    With pixel-centre coordinates, x_orig = (x + 0.5) * sx - 0.5 (same for y).
    """
    sx, sy = factors
    if sx == 1.0 and sy == 1.0:
        return keypoints
    out = keypoints.astype(np.float64)
    out[:, 0] = (out[:, 0] + 0.5) * sx - 0.5
    out[:, 1] = (out[:, 1] + 0.5) * sy - 0.5
    return out.astype(np.float32)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(source: str | os.PathLike) -> tuple[Path, list[str]]:
    """Resolve IMAGES as the CLI accepts it: a folder (searched recursively), a glob, or a text file.

    Returns (root, names): every image is ``root / name``; names use '/' and are sorted
    (a text file keeps its order). Raises `FileNotFoundError` when nothing is found.
    """
    text = str(source)
    path = Path(source)
    if path.is_dir():
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                       if p.is_file() and _is_image_name(p.name))
        if not names:
            raise FileNotFoundError(
                f"no images in folder {path} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})")
        return path, names
    if path.is_file() and not _is_image_name(path.name):
        root = path.parent
        names = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                names.append(p.as_posix() if not p.is_absolute() else os.path.relpath(p, root))
        if not names:
            raise FileNotFoundError(f"image list {path} names no images")
        return root, names
    if path.is_file():
        return path.parent, [path.name]
    if any(ch in text for ch in "*?["):
        base = Path(text.split("*")[0].split("?")[0].split("[")[0])
        root = base if text.endswith(os.sep) or base.is_dir() and str(base).endswith(os.sep) else base.parent
        matches = sorted(p for p in globlib.glob(text, recursive=True) if Path(p).is_file())
        if not matches:
            raise FileNotFoundError(f"no files match the pattern {text}")
        return root, [Path(os.path.relpath(p, root)).as_posix() for p in matches]
    raise FileNotFoundError(f"{text}: no such folder, image, image list or pattern")
