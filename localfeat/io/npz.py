"""Per-image npz files of the R2D2 and D2-Net releases, to and from a `FeatureStore`.

Both write one file per image, ``<image path>.<ext>`` (R2D2: ext 'r2d2'; D2-Net: 'd2-net'),
holding `keypoints` (N, 3) = (x, y, scale) or (N, 2), `descriptors` (N, D), `scores` (N,),
and for R2D2 `imsize` (W, H). Their coordinates follow the same pixel-centre convention as
localfeat, so no shift is applied.
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Iterable, Optional

import cv2
import numpy as np

from ..types import Features, normalize_rows_if_needed
from .atomic import atomic_path
from .h5 import FeatureStore

logger = logging.getLogger(__name__)


def features_to_npz_arrays(features: Features) -> dict:
    """The arrays of an R2D2-style npz: keypoints (N, 3) with scales when known, else (N, 2)."""
    kpts = features.keypoints
    if features.scales is not None:
        kpts = np.concatenate([kpts, features.scales[:, None]], axis=1)
    return {"keypoints": kpts.astype(np.float32), "descriptors": features.descriptors,
            "scores": features.scores, "imsize": np.asarray(features.image_size, np.int64)}


def write_npz(path: str | os.PathLike, features: Features) -> None:
    """Write one R2D2-style npz file atomically (np.savez, as the original extract.py)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object stops numpy from appending '.npz'
            np.savez(f, **features_to_npz_arrays(features))


def read_npz(path: str | os.PathLike, image_size: Optional[tuple] = None) -> Features:
    """Read one R2D2 / D2-Net npz file. `image_size` (W, H) is needed when the file has no `imsize`."""
    path = Path(path)
    try:
        return _read_npz(path, image_size)
    except FileNotFoundError:
        raise
    except ValueError as exc:  # ContractError included
        message = str(exc)
        if "pickled" in message:  # numpy's word for "neither a zip nor an .npy header"
            message = "not an npz file (neither a zip archive nor a .npy array; pickles are never loaded)"
        raise ValueError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable npz file ({type(exc).__name__}: {exc})") from None


def _read_npz(path: Path, image_size: Optional[tuple]) -> Features:
    with np.load(path, allow_pickle=False) as data:
        missing = {"keypoints", "descriptors"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: missing key(s) {sorted(missing)}; expected keypoints, descriptors, scores")
        kpts = np.asarray(data["keypoints"], np.float32)
        desc = np.asarray(data["descriptors"])
        scores = np.asarray(data["scores"], np.float32) if "scores" in data.files else np.ones(len(kpts), np.float32)
        if "imsize" in data.files:
            image_size = tuple(int(v) for v in data["imsize"])
    if image_size is None:
        raise ValueError(f"{path}: no 'imsize' in the file; give the image size or the image folder")
    if desc.dtype != np.uint8:
        desc = normalize_rows_if_needed(desc)
    return Features(kpts[:, :2], scores, desc, image_size,
                    scales=kpts[:, 2] if kpts.shape[1] > 2 else None)


def export_npz(store: FeatureStore, out_dir: str | os.PathLike, ext: str = "r2d2",
               names: Optional[Iterable[str]] = None) -> list[Path]:
    """Write ``out_dir/<name>.<ext>`` for every image of `store` (or `names`); returns the paths."""
    out_dir = Path(out_dir)
    written = []
    for name in names if names is not None else store.names():
        path = out_dir / f"{name}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_npz(path, store.get(name))
        written.append(path)
    return written


def import_npz(folder: str | os.PathLike, store: FeatureStore, ext: str,
               images_root: Optional[str | os.PathLike] = None) -> list[str]:
    """Import every ``<name>.<ext>`` below `folder` into `store` under `name`; returns the names.

    Image sizes come from the files' `imsize`, else from the images in `images_root`.
    """
    folder = Path(folder)
    suffix = "." + ext.lstrip(".")
    names = []
    for path in sorted(folder.rglob("*" + suffix)):
        name = path.relative_to(folder).as_posix()[: -len(suffix)]
        size = None
        if images_root is not None and (Path(images_root) / name).exists():
            img = cv2.imread(str(Path(images_root) / name), cv2.IMREAD_UNCHANGED)
            if img is not None:
                size = (img.shape[1], img.shape[0])
        store.put(name, read_npz(path, size))
        names.append(name)
    if not names:
        raise FileNotFoundError(f"no *{suffix} files below {folder}")
    return names
