"""COLMAP databases: export a FeatureStore + MatchStore to a database, import a database back.

This is the only place where the 0.5 pixel shift happens. localfeat puts the centre of the
top-left pixel at (0, 0); COLMAP puts the top-left corner of the image there, so the centre of
that pixel is (0.5, 0.5):

    colmap_xy = localfeat_xy + 0.5      (export)
    localfeat_xy = colmap_xy - 0.5      (import)

Float32 precision. The database stores keypoints as float32, like a FeatureStore. The import
subtraction is always exact; the export addition is exact unless ``x + 0.5`` needs one more bit
than float32 has (x in [2^k - 0.5, 2^k), or x < 0.5), where it rounds to the nearest float32
(an error below 2^-24 * x, i.e. < 1e-4 px for images up to 1600 px). A database imported and
exported again is reproduced bit for bit.

Writing uses pycolmap (the ``sfm`` extra: ``pip install localfeat[sfm]``), so the schema
(cameras, rigs, frames, images, keypoints, matches, two-view geometries) is the one of the
installed COLMAP. Reading uses the standard library's sqlite3 only.

Cameras: one per image (default) or one per folder (`camera_per_folder=True`, images of a
folder must then have the same size). The focal length comes from EXIF when present (COLMAP's
rules: 35 mm-equivalent focal length, else focal length and focal-plane resolution) and is then
marked as a prior; otherwise it is ``default_focal_factor * max(W, H)``. The principal point is
the image centre; distortion parameters start at zero.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..types import Features, Matches
from .atomic import atomic_path
from .h5 import FeatureStore, MatchStore

logger = logging.getLogger(__name__)

COLMAP_PIXEL_SHIFT = 0.5
MAX_IMAGE_ID = 2**31 - 1  # COLMAP's pair_id = image_id1 * MAX_IMAGE_ID + image_id2 (id1 < id2)

# COLMAP camera models this module writes, with the order of their parameters.
CAMERA_MODELS = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}


class ColmapError(ValueError):
    """A COLMAP database or model is missing, malformed, or inconsistent with the stores."""


def _require_pycolmap():
    # pycolmap 4.2.1 wheels carry their own zlib: when pycolmap is imported before Python's zlib
    # module, the next zlib.compress (np.savez_compressed, gzip, zipfile) aborts the process with
    # "free(): invalid pointer". Importing zlib first avoids it.
    import zlib  # noqa: F401

    try:
        import pycolmap
    except ImportError as exc:  # the sfm extra is optional
        raise ColmapError("writing COLMAP databases needs pycolmap: pip install 'localfeat[sfm]'") from exc
    return pycolmap


# ------------------------------------------------------------------------------- coordinates
def to_colmap_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """(N, 2) localfeat pixel-centre coordinates -> float32 (N, 2) COLMAP corner-origin coordinates."""
    kpts = np.asarray(keypoints, np.float32)
    return np.ascontiguousarray(kpts[:, :2] + np.float32(COLMAP_PIXEL_SHIFT), dtype=np.float32)


def from_colmap_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """(N, >=2) COLMAP coordinates -> float32 (N, 2) localfeat pixel-centre coordinates."""
    kpts = np.asarray(keypoints, np.float32)
    return np.ascontiguousarray(kpts[:, :2] - np.float32(COLMAP_PIXEL_SHIFT), dtype=np.float32)


def intrinsics_from_colmap(K: np.ndarray) -> np.ndarray:
    """A COLMAP calibration matrix (3, 3) -> the same camera in localfeat's pixel-centre convention.

    Projection is x = K X / Z in both conventions; only the principal point moves by -0.5.
    """
    K = np.array(K, np.float64, copy=True)
    K[0, 2] -= COLMAP_PIXEL_SHIFT
    K[1, 2] -= COLMAP_PIXEL_SHIFT
    return K


def intrinsics_to_colmap(K: np.ndarray) -> np.ndarray:
    """The inverse of `intrinsics_from_colmap`: principal point moved by +0.5 (e.g. MegaDepth's indices)."""
    K = np.array(K, np.float64, copy=True)
    K[0, 2] += COLMAP_PIXEL_SHIFT
    K[1, 2] += COLMAP_PIXEL_SHIFT
    return K


def read_colmap_array(path: str | os.PathLike) -> np.ndarray:
    """Read a COLMAP dense array (depth/normal map ``*.bin``): ASCII header ``W&H&C&`` then float32
    planes (channel-major, each row-major). Returns (H, W) for one channel, else (H, W, C)."""
    data = Path(path).read_bytes()
    header_end, count = -1, 0
    for i, byte in enumerate(data[:64]):
        if byte == ord("&"):
            count += 1
            if count == 3:
                header_end = i + 1
                break
    if header_end < 0:
        raise ColmapError(f"{path}: not a COLMAP array (no 'W&H&C&' header)")
    try:
        w, h, c = (int(v) for v in data[:header_end - 1].decode("ascii").split("&"))
    except ValueError as exc:
        raise ColmapError(f"{path}: bad COLMAP array header {data[:header_end]!r}") from exc
    values = np.frombuffer(data, np.float32, offset=header_end)
    if values.size != w * h * c:
        raise ColmapError(f"{path}: header says {w}x{h}x{c} but holds {values.size} floats")
    array = values.reshape(c, h, w).transpose(1, 2, 0)
    return np.ascontiguousarray(array[..., 0] if c == 1 else array)


def write_colmap_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write (H, W) or (H, W, C) float32 in COLMAP's dense array format (inverse of `read_colmap_array`)."""
    arr = np.asarray(array, np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, c = arr.shape
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(f"{w}&{h}&{c}&".encode("ascii"))
            f.write(np.ascontiguousarray(arr.transpose(2, 0, 1)).tobytes())


# ------------------------------------------------------------------------------- cameras
def _rational(value) -> Optional[float]:
    try:
        if isinstance(value, tuple) and len(value) == 2:
            return float(value[0]) / float(value[1]) if float(value[1]) else None
        return float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def exif_focal_length(path: str | os.PathLike, image_size: tuple[int, int]) -> Optional[float]:
    """Focal length in pixels from the EXIF of `path`, for an image of `image_size` (W, H); None if unknown.

    COLMAP's rules (without its sensor-width table): FocalLengthIn35mmFilm / 35 * max(W, H); else
    FocalLength (mm) / sensor width (mm) * max(W, H), the sensor width being PixelXDimension /
    FocalPlaneXResolution in FocalPlaneResolutionUnit (inches or cm).
    """
    try:
        from PIL import Image
    except ImportError:  # Pillow comes with matplotlib; without it EXIF is simply not read
        return None
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            sub = dict(exif.get_ifd(0x8769))
    except (OSError, ValueError, SyntaxError):
        return None
    max_size = float(max(image_size))
    f35 = _rational(sub.get(0xA405))
    if f35 and f35 > 0:
        return f35 / 35.0 * max_size
    f_mm = _rational(sub.get(0x920A))
    x_res = _rational(sub.get(0xA20E))
    unit = sub.get(0xA210)
    pixel_x = _rational(sub.get(0xA002))
    unit_mm = {2: 25.4, 3: 10.0}.get(int(unit) if unit is not None else -1)
    if f_mm and f_mm > 0 and x_res and x_res > 0 and pixel_x and pixel_x > 0 and unit_mm:
        sensor_width_mm = pixel_x / x_res * unit_mm
        return f_mm / sensor_width_mm * max_size
    return None


def camera_params(model: str, width: int, height: int, focal: float) -> list[float]:
    """Initial COLMAP parameters of `model` for a (width, height) image: focal, centred principal point, no distortion.

    The principal point is (W/2, H/2) in COLMAP's corner-origin convention.
    """
    if model not in CAMERA_MODELS:
        raise ColmapError(f"camera model {model!r} is not supported; choose one of {sorted(CAMERA_MODELS)}")
    cx, cy = width / 2.0, height / 2.0
    names = CAMERA_MODELS[model]
    values = {"f": focal, "fx": focal, "fy": focal, "cx": cx, "cy": cy}
    return [float(values.get(n, 0.0)) for n in names]


def camera_for_image(image_size: tuple[int, int], image_path: Optional[str | os.PathLike] = None,
                     model: str = "SIMPLE_RADIAL", default_focal_factor: float = 1.2) -> dict:
    """A camera dict {model, width, height, params, prior_focal} for one image of size (W, H)."""
    width, height = (int(v) for v in image_size)
    focal = exif_focal_length(image_path, (width, height)) if image_path is not None else None
    prior = focal is not None
    if focal is None:
        if default_focal_factor <= 0:
            raise ColmapError(f"default_focal_factor must be > 0, got {default_focal_factor}")
        focal = default_focal_factor * max(width, height)
    return {"model": model, "width": width, "height": height,
            "params": camera_params(model, width, height, focal), "prior_focal": prior}


# ------------------------------------------------------------------------------- export
def export_colmap(features: str | os.PathLike | FeatureStore, matches: Optional[str | os.PathLike | MatchStore],
                  database: str | os.PathLike, images: Optional[str | os.PathLike] = None,
                  pairs: Optional[Sequence[tuple[str, str]]] = None, camera_model: str = "SIMPLE_RADIAL",
                  default_focal_factor: float = 1.2, camera_per_folder: bool = False,
                  min_match_score: Optional[float] = None, verified: bool = False,
                  overwrite: bool = False, names: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Write the features (and matches) of a FeatureStore (and MatchStore) to a new COLMAP database.

    features:  FeatureStore or its path; every image in it (or `names`) becomes a COLMAP image with
               that name (relative to the image root, as in the store).
    matches:   MatchStore or path, or None; pairs are `pairs` or every pair stored. A pair and its
               reverse are written once.
    images:    the image root, used only to read EXIF focal lengths.
    verified:  also write every match as an inlier two-view geometry (skip COLMAP's verification).
    min_match_score: drop matches whose score is below it.
    Returns {image name: COLMAP image_id}. The database is written to a temporary file and moved
    into place when complete; an existing `database` is an error unless `overwrite`.
    """
    pycolmap = _require_pycolmap()
    database = Path(database)
    if database.exists() and not overwrite:
        raise ColmapError(f"{database} exists; pass overwrite=True (--overwrite) or choose another path")
    fstore = features if isinstance(features, FeatureStore) else FeatureStore(features, mode="r")
    mstore = matches if (matches is None or isinstance(matches, MatchStore)) else MatchStore(matches, mode="r")
    names = list(names) if names is not None else fstore.names()
    if not names:
        raise ColmapError(f"{fstore.path} holds no images")
    root = Path(images) if images is not None else None
    if root is not None and not root.is_dir():
        raise ColmapError(f"--images {root}: not a folder")

    image_ids: dict[str, int] = {}
    num_keypoints: dict[str, int] = {}
    with atomic_path(database) as tmp:
        tmp.unlink()  # let COLMAP create a fresh database at the temporary path
        db = pycolmap.Database.open(str(tmp))
        try:
            folder_cameras: dict[str, tuple[int, int, tuple]] = {}
            for name in tqdm(names, desc="colmap images", unit="img", disable=None):
                feats = fstore.get(name)
                folder = os.path.dirname(name)
                camera_id = rig_id = None
                if camera_per_folder and folder in folder_cameras:
                    camera_id, rig_id, size = folder_cameras[folder]
                    if size != feats.image_size:
                        raise ColmapError(
                            f"camera_per_folder: {name} is {feats.image_size} but other images of folder "
                            f"{folder or '.'!r} are {size}; use one camera per image instead")
                if camera_id is None:
                    cam = camera_for_image(feats.image_size, None if root is None else root / name,
                                           camera_model, default_focal_factor)
                    camera = pycolmap.Camera.create_from_model_name(
                        0, cam["model"], cam["params"][0], cam["width"], cam["height"])
                    camera.params = cam["params"]
                    camera.has_prior_focal_length = cam["prior_focal"]
                    camera_id = db.write_camera(camera)
                    rig = pycolmap.Rig()
                    rig.add_ref_sensor(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id))
                    rig_id = db.write_rig(rig)
                    folder_cameras[folder] = (camera_id, rig_id, feats.image_size)
                image_id = db.write_image(pycolmap.Image(name=name, camera_id=camera_id))
                frame = pycolmap.Frame()
                frame.rig_id = rig_id
                frame.add_data_id(pycolmap.data_t(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id),
                                                  image_id))
                db.write_frame(frame)
                db.write_keypoints(image_id, to_colmap_keypoints(feats.keypoints))
                image_ids[name] = image_id
                num_keypoints[name] = len(feats)
            if mstore is not None:
                _write_matches(pycolmap, db, mstore, image_ids, num_keypoints, pairs, min_match_score, verified)
        finally:
            db.close()
    logger.info("wrote %d images to %s", len(image_ids), database)
    return image_ids


def _write_matches(pycolmap, db, mstore: MatchStore, image_ids: dict, num_keypoints: dict, pairs,
                   min_match_score, verified) -> int:
    if pairs is None:
        pairs = mstore.pairs()
    done: set = set()
    written = 0
    for name0, name1 in tqdm(pairs, desc="colmap matches", unit="pair", disable=None):
        if name0 not in image_ids or name1 not in image_ids:
            raise ColmapError(f"pair ({name0}, {name1}) names an image absent from the features")
        id0, id1 = image_ids[name0], image_ids[name1]
        key = (min(id0, id1), max(id0, id1))
        if id0 == id1 or key in done:
            continue
        done.add(key)
        # An index beyond the keypoints would be written into the database as it is: refuse it.
        m = mstore.get(name0, name1, num_keypoints=(num_keypoints[name0], num_keypoints[name1]))
        idx = m.indices
        if min_match_score is not None:
            idx = idx[m.scores >= min_match_score]
        idx = np.ascontiguousarray(idx, dtype=np.uint32)
        db.write_matches(id0, id1, idx)
        if verified:
            geometry = pycolmap.TwoViewGeometry()
            geometry.config = pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
            geometry.inlier_matches = idx
            db.write_two_view_geometry(id0, id1, geometry)
        written += 1
    return written


# ------------------------------------------------------------------------------- import
def _blob(data, dtype, rows: int, cols: int) -> np.ndarray:
    if data is None or rows == 0:
        return np.zeros((rows, cols), dtype)
    return np.frombuffer(data, dtype=dtype).reshape(rows, cols).copy()


def pair_id_to_image_ids(pair_id: int) -> tuple[int, int]:
    """COLMAP pair_id -> (image_id1, image_id2), image_id1 < image_id2."""
    return int(pair_id // MAX_IMAGE_ID), int(pair_id % MAX_IMAGE_ID)


def _affine_to_scale_orientation(kpts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP keypoint columns -> (scale, orientation): 4 columns are (x, y, scale, orientation);
    6 columns are (x, y, a11, a12, a21, a22), scale = mean column norm, orientation = atan2(a21, a11)."""
    if kpts.shape[1] == 4:
        return kpts[:, 2], kpts[:, 3]
    a11, a12, a21, a22 = kpts[:, 2], kpts[:, 3], kpts[:, 4], kpts[:, 5]
    scale = 0.5 * (np.hypot(a11, a21) + np.hypot(a12, a22))
    return scale, np.arctan2(a21, a11)


class ColmapDatabase:
    """Read-only view of a COLMAP database (sqlite3; no pycolmap needed).

    images():    {name: (image_id, camera_id)}
    cameras():   {camera_id: dict(model_id, width, height, params float64)}
    features(name): `Features` with keypoints shifted to localfeat's pixel-centre convention.
    matches(name0, name1, verified=False): `Matches` (raw matches, or the inliers of the
                 two-view geometry); scores are 1.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ColmapError(f"{self.path}: no such COLMAP database")
        self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise ColmapError(f"{self.path} is not an SQLite database ({exc})") from exc
        missing = {"images", "cameras", "keypoints"} - tables
        if missing:
            raise ColmapError(f"{self.path} is not a COLMAP database (missing tables {sorted(missing)})")
        self._tables = tables
        self._images = {name: (int(i), int(c)) for i, name, c in
                        self._conn.execute("SELECT image_id, name, camera_id FROM images")}
        self._names = {i: name for name, (i, _) in self._images.items()}

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def images(self) -> dict[str, tuple[int, int]]:
        return dict(self._images)

    def cameras(self) -> dict[int, dict]:
        out = {}
        for cid, model, w, h, params in self._conn.execute(
                "SELECT camera_id, model, width, height, params FROM cameras"):
            out[int(cid)] = {"model_id": int(model), "width": int(w), "height": int(h),
                             "params": np.frombuffer(params, np.float64).copy()}
        return out

    def _image(self, name: str) -> tuple[int, int]:
        if name not in self._images:
            raise ColmapError(f"{self.path} has no image named {name!r}")
        return self._images[name]

    def features(self, name: str) -> Features:
        image_id, camera_id = self._image(name)
        row = self._conn.execute("SELECT rows, cols, data FROM keypoints WHERE image_id=?", (image_id,)).fetchone()
        kpts = _blob(row[2], np.float32, row[0], row[1]) if row else np.zeros((0, 2), np.float32)
        desc = None
        if "descriptors" in self._tables:
            drow = self._conn.execute("SELECT rows, cols, data FROM descriptors WHERE image_id=?",
                                      (image_id,)).fetchone()
            if drow and drow[0] == len(kpts) and drow[1] > 0:
                raw = _blob(drow[2], np.uint8, drow[0], drow[1]).astype(np.float32)
                desc = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
        if desc is None:
            desc = np.zeros((len(kpts), 0), np.float32)
        cam = self._conn.execute("SELECT width, height FROM cameras WHERE camera_id=?", (camera_id,)).fetchone()
        if cam is None:
            raise ColmapError(f"{self.path}: image {name!r} refers to missing camera {camera_id}")
        scales = orientations = None
        if kpts.shape[1] in (4, 6):
            scale, orientation = _affine_to_scale_orientation(kpts)
            # COLMAP's scale is a radius-like sigma; localfeat's `scales` are diameters (see export).
            scales, orientations = 2.0 * scale, orientation
        return Features(from_colmap_keypoints(kpts) if len(kpts) else np.zeros((0, 2), np.float32),
                        np.ones(len(kpts), np.float32), desc, (int(cam[0]), int(cam[1])),
                        scales=scales, orientations=orientations)

    def pairs(self, verified: bool = False) -> list[tuple[str, str]]:
        """Image-name pairs having matches (or, with `verified`, inlier matches)."""
        table = "two_view_geometries" if verified else "matches"
        if table not in self._tables:
            return []
        out = []
        for pair_id, rows in self._conn.execute(f"SELECT pair_id, rows FROM {table}"):
            if rows:
                a, b = pair_id_to_image_ids(pair_id)
                if a in self._names and b in self._names:
                    out.append((self._names[a], self._names[b]))
        return sorted(out)

    def matches(self, name0: str, name1: str, verified: bool = False) -> Matches:
        id0, id1 = self._image(name0)[0], self._image(name1)[0]
        swap = id0 > id1
        pair_id = min(id0, id1) * MAX_IMAGE_ID + max(id0, id1)
        table = "two_view_geometries" if verified else "matches"
        row = self._conn.execute(f"SELECT rows, cols, data FROM {table} WHERE pair_id=?", (pair_id,)).fetchone()
        idx = _blob(row[2], np.uint32, row[0], row[1]).astype(np.int64) if row and row[0] else \
            np.zeros((0, 2), np.int64)
        if swap:
            idx = idx[:, ::-1]
        return Matches(np.ascontiguousarray(idx))


def import_colmap(database: str | os.PathLike, features_out: str | os.PathLike,
                  matches_out: Optional[str | os.PathLike] = None, verified: bool = False,
                  names: Optional[Iterable[str]] = None, overwrite: bool = False) -> list[str]:
    """Import the keypoints of a COLMAP database into a FeatureStore (and its matches into a MatchStore).

    Keypoints are shifted by -0.5 to localfeat's convention; scores are 1 (COLMAP keeps none);
    descriptors are COLMAP's uint8 rows as float32, L2-normalised, or (N, 0) when absent;
    4/6-column keypoints give `scales` (2 x COLMAP's scale) and `orientations`.
    Returns the imported image names.
    """
    with ColmapDatabase(database) as db:
        todo = list(names) if names is not None else sorted(db.images())
        with FeatureStore(features_out, mode="w" if overwrite else "a") as store:
            for name in tqdm(todo, desc="import keypoints", unit="img", disable=None):
                store.put(name, db.features(name))
        if matches_out is not None:
            with MatchStore(matches_out, mode="w" if overwrite else "a") as mstore:
                for a, b in tqdm(db.pairs(verified), desc="import matches", unit="pair", disable=None):
                    mstore.put(a, b, db.matches(a, b, verified))
    return todo

