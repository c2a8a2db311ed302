"""Image reading and listing.

`read_image` reads PNG, JPEG, PPM/PGM/PBM, TIFF, WebP and BMP; 8- or 16-bit; gray,
RGB or RGBA (alpha is dropped, as PIL's ``convert('RGB')`` does); EXIF
orientation applied. It returns uint8 arrays, RGB (H, W, 3) or gray (H, W). A file
that is empty, truncated, unreadable or not an image raises `ImageReadError`
naming the file.

Pixel budget. An image whose header declares more than `max_image_pixels()` pixels
(200 megapixels unless the environment variable LOCALFEAT_MAX_IMAGE_PIXELS says
otherwise; `none` lifts it) is refused before any pixel is decoded, so a 74-byte PNG
declaring 100000 x 100000 pixels (a decompression bomb) costs nothing; batch runs
report it and go on with the next image.
"""
from __future__ import annotations

import glob as globlib
import io
import os
import warnings
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff", ".webp", ".bmp")


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and why."""


DEFAULT_MAX_IMAGE_PIXELS = 200_000_000
MAX_PIXELS_ENV = "LOCALFEAT_MAX_IMAGE_PIXELS"
# Pillow formats whose headers give the size of what OpenCV decodes from the same file.
_HEADER_FORMATS = ("PNG", "JPEG", "PPM", "TIFF", "WEBP", "BMP")


def max_image_pixels() -> Optional[int]:
    """The pixel budget of one image: LOCALFEAT_MAX_IMAGE_PIXELS (an integer, or 'none' for no limit),
    else `DEFAULT_MAX_IMAGE_PIXELS`."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if text.lower() == "none":
        return None
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive number of pixels or 'none'")
    return value


def image_size_from_header(data: bytes) -> Optional[tuple[int, int]]:
    """(W, H) declared by the header of an encoded PNG, JPEG, PNM, TIFF, WebP or BMP image, read
    without decoding any pixel (Pillow's header parsers); None when the header is not recognised.

    A PNG, JPEG, PNM, WebP or BMP signature whose header cannot be parsed raises `ValueError`: the
    decoder would then be trusted with sizes nobody checked. (Pillow does not know every TIFF pixel
    layout that OpenCV reads, so an unparsed TIFF header gives None and is checked after decoding.)
    """
    from PIL import Image

    Image.init()
    prefix = data[:16]
    for fmt in _HEADER_FORMATS:
        if fmt not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[fmt]
        accepted = True if accept is None else accept(prefix)
        if isinstance(accepted, str) or not accepted:  # a str is Pillow's "almost, but" warning
            continue
        # The plugin class itself, not Image.open: Image.open refuses sizes beyond Pillow's own bomb
        # limit, while here the size is the answer (and the caller's budget decides).
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with factory(io.BytesIO(data), None) as image:
                    return tuple(int(v) for v in image.size)
        except Exception as exc:  # Pillow's parsers raise SyntaxError, struct.error, OSError, ...
            if fmt == "TIFF":
                return None
            raise ValueError(f"damaged {fmt} header ({type(exc).__name__}: {exc})") from None
    return None


def _check_pixels(path: Path, size: tuple[int, int], budget: Optional[int]) -> None:
    w, h = size
    if budget is not None and w * h > budget:
        raise ImageReadError(
            f"{path}: {w} x {h} pixels ({w * h / 1e6:.0f} MP) is beyond the limit of {budget / 1e6:g} MP "
            f"(a decompression bomb, or an image too large to process); if it is genuine, raise the limit "
            f"with {MAX_PIXELS_ENV}=<pixels>, or downscale the file")


def _jpeg_is_truncated(data: bytes) -> bool:
    # A complete JPEG has an end-of-image marker after its last start-of-scan; entropy-coded
    # data byte-stuffs 0xFF, so the marker cannot appear there by chance.
    if data[:2] != b"\xff\xd8":
        return False
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 copy of an 8-bit, 16-bit or float image.

    Float images follow one range rule, never clipped: values within [0, 1] are read as [0, 1]
    (torch / kornia / skimage); otherwise values within [0, 255] are read as [0, 255] (OpenCV
    arithmetic, float TIFFs). Anything else (negative, above 255, NaN) is a ValueError naming the range.
    (An image whose values all lie in [0, 1] but that was meant as 0-255 is black either way.)
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    if image.dtype.kind == "f":
        if image.size == 0:
            return image.astype(np.uint8)
        lo, hi = float(np.min(image)), float(np.max(image))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
            raise ValueError(f"float image values span [{lo:g}, {hi:g}]; expected [0, 1] or [0, 255] "
                             "(scale or convert it to uint8 first)")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.round(image.astype(np.float32) * scale).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {image.dtype}; expected uint8, uint16 or float")


def read_image(path: str | os.PathLike, mode: str = "rgb", max_pixels: Optional[int] | str = "env") -> np.ndarray:
    """Read an image file as uint8: `mode` 'rgb' gives (H, W, 3), 'gray' gives (H, W).

    max_pixels: the pixel budget W * H checked from the header before decoding ('env':
    `max_image_pixels()`; None: no limit). Beyond it, or when the decoder fails, `ImageReadError`.
    """
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
    budget = max_image_pixels() if max_pixels == "env" else max_pixels
    try:
        size = image_size_from_header(data)
    except ValueError as exc:
        raise ImageReadError(f"{path}: {exc}") from None
    if size is not None:
        _check_pixels(path, size, budget)
    # ANYDEPTH keeps 16-bit; ANYCOLOR keeps gray as gray. Unlike IMREAD_UNCHANGED, both apply EXIF orientation.
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as exc:  # e.g. OpenCV's own size limit, or a header its decoder rejects
        raise ImageReadError(f"{path}: OpenCV cannot decode it ({getattr(exc, 'err', '') or exc})") from None
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to decode it ({size or 'size unknown'})") from None
    if image is None or image.size == 0:
        raise ImageReadError(f"{path}: not an image, or a corrupt one (OpenCV cannot decode it)")
    _check_pixels(path, (image.shape[1], image.shape[0]), budget)  # formats whose header was not parsed
    try:
        image = to_uint8(image)
    except ValueError as exc:
        raise ImageReadError(f"{path}: {exc}") from exc
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
    """A path, a numpy array (H, W) / (H, W, 3) / (H, W, 4) (channels last, OpenCV/PIL style), or a torch
    tensor (H, W) / (C, H, W) / (1, C, H, W) with C = 1 or 3 (channels first, kornia/torchvision style),
    as uint8 in `mode` ('rgb' or 'gray'). Float values follow `to_uint8`'s range rule."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, mode)
    if hasattr(image, "detach"):  # torch tensor: channels first
        tensor = image.detach().cpu()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if not (tensor.ndim == 2 or (tensor.ndim == 3 and tensor.shape[0] in (1, 3))):
            raise ValueError(f"image tensor has shape {tuple(tensor.shape)}, expected (H, W), (C, H, W) or "
                             "(1, C, H, W) with C = 1 or 3")
        arr = tensor.float().numpy() if tensor.dtype.is_floating_point else tensor.numpy()
        image = np.moveaxis(arr, 0, -1) if arr.ndim == 3 else arr
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


def name_images(paths, root: Optional[str | os.PathLike] = None,
                default_root: Optional[str | os.PathLike] = None) -> tuple[Path, list[str]]:
    """The naming rule of every store: an image's name is its path relative to the image root, with '/'.

    The root is `root` when given (an image outside it is a ValueError); else `default_root` when it holds
    every image; else the deepest folder holding them all. So a folder, a list of its images' absolute
    paths and a list file give the same names. Returns (root, names) in the order of `paths`.
    """
    absolute = [os.path.abspath(p) for p in paths]
    if root is not None:
        base = os.path.abspath(root)
    elif default_root is not None and all(_inside(p, os.path.abspath(default_root)) for p in absolute):
        base = os.path.abspath(default_root)
    else:
        base = os.path.commonpath([os.path.dirname(p) for p in absolute]) if absolute else os.getcwd()
    outside = [p for p in absolute if not _inside(p, base)]
    if outside:
        raise ValueError(f"{len(outside)} image(s) lie outside the image root {base}, e.g. {outside[0]}; "
                         "choose a root that holds every image")
    names = [Path(os.path.relpath(p, base)).as_posix() for p in absolute]
    if root is not None or default_root is None or base != os.path.abspath(default_root):
        return Path(base), names
    return Path(default_root), names


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder and path != folder


def list_images(source: str | os.PathLike, root: Optional[str | os.PathLike] = None) -> tuple[Path, list[str]]:
    """Resolve IMAGES as the CLI accepts it: a folder (searched recursively), a glob, a text file listing
    images (one path per line, relative to the file's folder or absolute), or one image.

    Returns (root, names): every image is ``root / name``; names use '/' and are sorted (a text file
    keeps its order). Naming (`name_images`): relative to `root` when given; else to the folder, the
    glob's fixed folder, the list file's folder when it holds every listed image (else the deepest folder
    holding them all), or the image's folder. Raises `FileNotFoundError` when nothing is found.
    """
    text = str(source)
    path = Path(source)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and _is_image_name(p.name))
        if not found:
            raise FileNotFoundError(
                f"no images in folder {path} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})")
        base, names = name_images(found, root, default_root=path)
        order = sorted(range(len(names)), key=lambda i: names[i])
        return base, [names[i] for i in order]
    if path.is_file() and not _is_image_name(path.name):
        listed = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                listed.append(path.parent / line)  # an absolute line stays absolute
        if not listed:
            raise FileNotFoundError(f"image list {path} names no images")
        return name_images(listed, root, default_root=path.parent)
    if path.is_file():
        return name_images([path], root, default_root=path.parent)
    if any(ch in text for ch in "*?["):
        base = Path(text.split("*")[0].split("?")[0].split("[")[0])
        base_root = base if text.endswith(os.sep) or base.is_dir() and str(base).endswith(os.sep) else base.parent
        matches = sorted(p for p in globlib.glob(text, recursive=True) if Path(p).is_file())
        if not matches:
            raise FileNotFoundError(f"no files match the pattern {text}")
        return name_images(matches, root, default_root=base_root)
    raise FileNotFoundError(f"{text}: no such folder, image, image list or pattern")
