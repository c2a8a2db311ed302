"""Training datasets from COLMAP reconstructions: images, intrinsics, poses, depth, covisible pairs.

    from localfeat.datasets.colmap_scenes import build_scene, ColmapScenes
    build_scene("out/sparse", "photos/", "dataset/", scene="sacre_coeur")
    data = ColmapScenes("dataset/")           # a list of covisible pairs over every scene
    item = data[0]                            # images, K0/K1, T_0to1, depth0/depth1, ...

Layout (every path stored in the files is RELATIVE to the dataset root, so the folder can be
moved or copied anywhere; the DISK format stored absolute paths, which break on a move):

    DATASET/index.json                       {"format": "localfeat-colmap-scenes", "version": 1,
                                              "scenes": [{"name", "path", "num_images", "num_pairs"}]}
    DATASET/scenes/<scene>/scene.json        per image: name, image, depth (relative paths), size
                                             (W, H), K (3x3), T_cam_from_world (4x4); pairs:
                                             [i, j, shared 3D points, overlap]; depth_source
    DATASET/scenes/<scene>/images/<name>     the (undistorted) images
    DATASET/scenes/<scene>/depth/<name>.npz  depth (H, W) float32, 0 = unknown; points (K, 2),
                                             points_depth (K,), point3D_ids (K,) int64,
                                             observations (K, 2): the sparse 3D points seen by the
                                             image, projected (sub-pixel) and as observed by COLMAP

Conventions: pixel coordinates follow localfeat (centre of the top-left pixel at (0, 0)), so the
stored K is COLMAP's with the principal point moved by -0.5 (`io.colmap.intrinsics_from_colmap`).
T_cam_from_world maps world points to camera coordinates (COLMAP's cam_from_world); a pixel
(u, v) with depth z back-projects to X_cam = z K^-1 (u, v, 1). Depth is the camera-frame Z.

Depth: COLMAP's dense depth maps (``<workspace>/stereo/depth_maps/<name>.geometric.bin``, or
photometric) when present, the model then being the dense workspace's undistorted one; otherwise
sparse depth from the 3D points, written at the pixel nearest to each point's projection (the
nearest point wins). Models with lens distortion are undistorted with pycolmap first, because a
pinhole K and a depth map only describe undistorted images.

Pairs: images sharing at least `min_shared` 3D points with overlap = shared / min(points of
either image) >= `min_overlap`; optionally the `max_pairs_per_image` best per image.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..geometry import project, relative_pose
from ..io.atomic import atomic_path, write_text_atomic
from ..io.colmap import (COLMAP_PIXEL_SHIFT, _require_pycolmap, intrinsics_from_colmap,
                         read_colmap_array)

logger = logging.getLogger(__name__)

FORMAT = "localfeat-colmap-scenes"
VERSION = 1
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")


class DatasetError(ValueError):
    """A dataset folder, index or scene is missing or inconsistent."""


# ------------------------------------------------------------------------------ geometry
def splat_sparse_depth(points: np.ndarray, depths: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 depth map with each point's depth at its nearest pixel (nearest point wins), else 0."""
    w, h = size
    depth = np.zeros((h, w), np.float32)
    if len(points) == 0:
        return depth
    ij = np.rint(np.asarray(points, np.float64)).astype(np.int64)
    ok = (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h) & (np.asarray(depths) > 0)
    ij, z = ij[ok], np.asarray(depths, np.float32)[ok]
    order = np.argsort(-z)  # write far points first so that the nearest one stays
    depth[ij[order, 1], ij[order, 0]] = z[order]
    return depth


# ------------------------------------------------------------------------------ building
def _is_pinhole(camera) -> bool:
    if camera.model.name in PINHOLE_MODELS:
        return True
    extra = [camera.params[i] for i in camera.extra_params_idxs()]
    return all(abs(v) == 0.0 for v in extra)


def _find_depth_dir(model_dir: Path, depth_maps) -> Optional[Path]:
    if depth_maps not in (None, "auto"):
        path = Path(depth_maps)
        if not path.is_dir():
            raise DatasetError(f"--depth-maps {path}: not a folder")
        return path
    if depth_maps is None:
        return None
    for candidate in (model_dir.parent / "stereo" / "depth_maps", model_dir.parent.parent / "stereo" / "depth_maps"):
        if candidate.is_dir():
            return candidate
    return None


def _dense_depth_file(depth_dir: Path, name: str) -> Optional[Path]:
    for kind in ("geometric", "photometric"):
        path = depth_dir / f"{name}.{kind}.bin"
        if path.is_file():
            return path
    return None


def _read_index(root: Path) -> dict:
    path = root / "index.json"
    if not path.is_file():
        return {"format": FORMAT, "version": VERSION, "scenes": []}
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise DatasetError(f"{path} is not a {FORMAT} index (format={index.get('format')!r})")
    return index


def _write_index(root: Path, index: dict) -> None:
    write_text_atomic(root / "index.json", json.dumps(index, indent=1) + "\n")


def _place_image(src: Path, dst: Path, mode: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    if mode == "move":
        shutil.move(str(src), dst)
    elif mode == "hardlink":
        try:
            os.link(src, dst)
        except OSError:  # another file system: copy instead
            shutil.copy2(src, dst)
    elif mode == "copy":
        shutil.copy2(src, dst)
    else:
        raise ValueError(f"image mode must be 'copy' or 'hardlink', got {mode!r}")


def covisibility_pairs(point_sets: Sequence[set], min_shared: int = 20, min_overlap: float = 0.1,
                       max_pairs_per_image: Optional[int] = None) -> list[tuple[int, int, int, float]]:
    """Pairs (i, j, shared, overlap), i < j, of images sharing >= min_shared 3D points with
    overlap = shared / min(|S_i|, |S_j|) >= min_overlap; sorted by (i, j).

    With `max_pairs_per_image`, a pair is kept when it is among the best (by shared points) of
    either image.
    """
    by_point: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(point_sets):
        for p in ids:
            by_point[p].append(i)
    counts: Counter = Counter()
    for images in by_point.values():
        images = sorted(images)
        for a in range(len(images)):
            for b in range(a + 1, len(images)):
                counts[(images[a], images[b])] += 1
    pairs = []
    for (i, j), shared in counts.items():
        smallest = min(len(point_sets[i]), len(point_sets[j]))
        overlap = shared / smallest if smallest else 0.0
        if shared >= min_shared and overlap >= min_overlap:
            pairs.append((i, j, int(shared), float(overlap)))
    if max_pairs_per_image is not None:
        best: dict[int, set] = defaultdict(set)
        for i in range(len(point_sets)):
            mine = sorted((p for p in pairs if i in p[:2]), key=lambda p: -p[2])[:max_pairs_per_image]
            best[i] = {p[:2] for p in mine}
        pairs = [p for p in pairs if p[:2] in best[p[0]] or p[:2] in best[p[1]]]
    return sorted(pairs)


def build_scene(model_dir: str | os.PathLike, images_dir: str | os.PathLike, dataset: str | os.PathLike,
                scene: Optional[str] = None, depth_maps: Optional[str | os.PathLike] = "auto",
                min_shared: int = 20, min_overlap: float = 0.1, max_pairs_per_image: Optional[int] = None,
                image_mode: str = "copy", overwrite: bool = False) -> dict:
    """Add one scene built from the COLMAP model `model_dir` (images in `images_dir`) to `dataset`.

    depth_maps: 'auto' (use ``<model_dir>/../stereo/depth_maps`` when present), a folder of COLMAP
                dense depth maps, or None (sparse depth only).
    image_mode: 'copy' or 'hardlink' the images into the dataset (undistorted images are written there).
    Returns the scene's entry of index.json. An existing scene of that name is an error unless
    `overwrite`.
    """
    pycolmap = _require_pycolmap()
    model_dir, images_dir, root = Path(model_dir), Path(images_dir), Path(dataset)
    if not model_dir.is_dir() or not any((model_dir / f"images.{e}").is_file() for e in ("bin", "txt")):
        raise DatasetError(f"{model_dir}: not a COLMAP model folder (no images.bin / images.txt)")
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: no such image folder")
    name = scene or model_dir.resolve().parent.name or "scene"
    if "/" in name or name in ("", ".", ".."):
        raise DatasetError(f"scene name {name!r} must be a plain folder name")
    root.mkdir(parents=True, exist_ok=True)
    index = _read_index(root)
    if any(s["name"] == name for s in index["scenes"]) and not overwrite:
        raise DatasetError(f"{root} already holds a scene {name!r}; pass --scene NAME or --overwrite")
    scene_dir = root / "scenes" / name
    if scene_dir.exists():
        shutil.rmtree(scene_dir)
    scene_dir.mkdir(parents=True)

    rec = pycolmap.Reconstruction(str(model_dir))
    depth_dir = _find_depth_dir(model_dir, depth_maps)
    distorted = [c.camera_id for c in rec.cameras.values() if not _is_pinhole(c)]
    image_source = images_dir
    if distorted:
        if depth_dir is not None:
            raise DatasetError(f"{model_dir} has cameras with lens distortion {distorted} but dense depth maps "
                               f"were found in {depth_dir}: give the dense workspace's undistorted model instead")
        logger.info("undistorting %d images of %s", rec.num_reg_images(), model_dir)
        tmp = scene_dir / ".undistort"
        pycolmap.undistort_images(str(tmp), str(model_dir), str(images_dir))
        rec = pycolmap.Reconstruction(str(tmp / "sparse"))
        image_source = tmp / "images"
    depth_source = "dense" if depth_dir is not None else "sparse"

    entries, point_sets = [], []
    for image_id in tqdm(sorted(rec.reg_image_ids()), desc=f"scene {name}", unit="img", disable=None):
        image = rec.images[image_id]
        camera = image.camera
        K = intrinsics_from_colmap(camera.calibration_matrix())
        T = np.eye(4)
        T[:3, :4] = image.cam_from_world().matrix()
        ids, observed = [], []
        for p2d in image.points2D:
            if p2d.has_point3D():
                ids.append(int(p2d.point3D_id))
                observed.append(np.asarray(p2d.xy, np.float64) - COLMAP_PIXEL_SHIFT)
        ids = np.asarray(ids, np.int64)
        xyz = np.array([rec.points3D[i].xyz for i in ids], np.float64).reshape(-1, 3)
        uv, z = project(xyz, K, T)
        size = (int(camera.width), int(camera.height))
        if depth_dir is not None:
            dense_file = _dense_depth_file(depth_dir, image.name)
            if dense_file is None:
                raise DatasetError(f"no dense depth map for {image.name} in {depth_dir}")
            depth = read_colmap_array(dense_file).astype(np.float32)
            if depth.shape != (size[1], size[0]):
                import cv2

                logger.warning("%s: depth map %s resized to the image size %s", dense_file, depth.shape[::-1], size)
                depth = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
        else:
            depth = splat_sparse_depth(uv, z, size)
        src = image_source / image.name
        if not src.is_file():
            raise DatasetError(f"image {image.name} of the model is not in {image_source}")
        rel_image = Path("scenes") / name / "images" / image.name
        rel_depth = Path("scenes") / name / "depth" / (image.name + ".npz")
        _place_image(src, root / rel_image, "move" if distorted else image_mode)
        (root / rel_depth).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(root / rel_depth) as tmp_file:
            with open(tmp_file, "wb") as f:
                np.savez_compressed(f, depth=depth, points=uv.astype(np.float32), points_depth=z.astype(np.float32),
                                    point3D_ids=ids, observations=np.asarray(observed, np.float32).reshape(-1, 2))
        entries.append({"name": image.name, "image": rel_image.as_posix(), "depth": rel_depth.as_posix(),
                        "size": list(size), "K": K.tolist(), "T_cam_from_world": T.tolist(),
                        "num_points": int(len(ids))})
        point_sets.append(set(ids.tolist()))
    if distorted:
        shutil.rmtree(scene_dir / ".undistort", ignore_errors=True)
    pairs = covisibility_pairs(point_sets, min_shared, min_overlap, max_pairs_per_image)
    scene_json = {"format": FORMAT, "version": VERSION, "name": name, "depth_source": depth_source,
                  "undistorted": bool(distorted), "images": entries,
                  "pairs": [[i, j, s, round(o, 6)] for i, j, s, o in pairs],
                  "pair_rule": {"min_shared": min_shared, "min_overlap": min_overlap,
                                "max_pairs_per_image": max_pairs_per_image}}
    write_text_atomic(scene_dir / "scene.json", json.dumps(scene_json) + "\n")
    entry = {"name": name, "path": (Path("scenes") / name / "scene.json").as_posix(),
             "num_images": len(entries), "num_pairs": len(pairs), "depth_source": depth_source}
    index["scenes"] = [s for s in index["scenes"] if s["name"] != name] + [entry]
    _write_index(root, index)
    logger.info("scene %s: %d images, %d pairs, %s depth", name, len(entries), len(pairs), depth_source)
    return entry


def merge_datasets(sources: Iterable[str | os.PathLike], output: str | os.PathLike,
                   image_mode: str = "copy") -> dict:
    """Copy every scene of the datasets `sources` into `output` (created or extended); returns its index.

    Scene names must be unique across the merged datasets.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    index = _read_index(out)
    names = {s["name"] for s in index["scenes"]}
    for src in sources:
        src = Path(src)
        if src.resolve() == out.resolve():
            continue
        src_index = _read_index(src)
        if not src_index["scenes"]:
            raise DatasetError(f"{src} holds no scenes (no index.json?)")
        for entry in src_index["scenes"]:
            if entry["name"] in names:
                raise DatasetError(f"scene {entry['name']!r} of {src} already exists in {out}; rename it first")
            scene_src = (src / entry["path"]).parent
            scene_dst = out / "scenes" / entry["name"]
            if image_mode == "hardlink":
                shutil.copytree(scene_src, scene_dst, copy_function=os.link)
            else:
                shutil.copytree(scene_src, scene_dst)
            index["scenes"].append(dict(entry, path=(Path("scenes") / entry["name"] / "scene.json").as_posix()))
            names.add(entry["name"])
    _write_index(out, index)
    return index


# ------------------------------------------------------------------------------ loading
class ColmapScenes:
    """Covisible image pairs of a dataset built by `build_scene` (a map-style dataset: len and [i]).

    root:        the dataset folder (wherever it has been moved).
    scenes:      names to use (default: all).
    min_overlap: drop pairs below this overlap (on top of the build-time rule).
    load_images / load_depth: what `__getitem__` reads from disk.

    item = dataset[i]: {"scene", "name0", "name1", "image0", "image1" (uint8 (H, W, 3) RGB),
    "K0", "K1" (3, 3), "T0", "T1" (cam_from_world, 4x4), "T_0to1" (4, 4), "depth0", "depth1"
    ((H, W) float32, 0 = unknown), "size0", "size1" ((W, H)), "shared", "overlap"}.
    """

    def __init__(self, root: str | os.PathLike, scenes: Optional[Sequence[str]] = None,
                 min_overlap: Optional[float] = None, load_images: bool = True, load_depth: bool = True):
        self.root = Path(root)
        if not (self.root / "index.json").is_file():
            raise DatasetError(f"{self.root}: no index.json; build it with `localfeat dataset from-colmap`")
        index = _read_index(self.root)
        available = {s["name"]: s for s in index["scenes"]}
        wanted = list(scenes) if scenes is not None else list(available)
        unknown = sorted(set(wanted) - set(available))
        if unknown:
            raise DatasetError(f"{self.root}: unknown scene(s) {unknown}; available: {sorted(available)}")
        self.load_images, self.load_depth = load_images, load_depth
        self.scenes: dict[str, dict] = {}
        self.pairs: list[tuple[str, int, int, int, float]] = []
        for name in wanted:
            path = self.root / available[name]["path"]
            if not path.is_file():
                raise DatasetError(f"{path}: scene file missing (index.json names it)")
            data = json.loads(path.read_text())
            self.scenes[name] = data
            for i, j, shared, overlap in data["pairs"]:
                if min_overlap is None or overlap >= min_overlap:
                    self.pairs.append((name, int(i), int(j), int(shared), float(overlap)))

    def __len__(self) -> int:
        return len(self.pairs)

    def view(self, scene: str, index_or_name, load_images: Optional[bool] = None,
             load_depth: Optional[bool] = None) -> dict:
        """One image of a scene: {"name", "image" (if loaded), "K", "T", "depth" (if loaded), "size"}.

        load_images / load_depth: None = the dataset's setting."""
        images = self.scenes[scene]["images"]
        if isinstance(index_or_name, str):
            matches = [k for k, e in enumerate(images) if e["name"] == index_or_name]
            if not matches:
                raise DatasetError(f"scene {scene!r} has no image {index_or_name!r}")
            index_or_name = matches[0]
        entry = images[index_or_name]
        out = {"name": entry["name"], "K": np.asarray(entry["K"], np.float64),
               "T": np.asarray(entry["T_cam_from_world"], np.float64), "size": tuple(entry["size"])}
        if self.load_images if load_images is None else load_images:
            from ..io.images import read_image

            out["image"] = read_image(self.root / entry["image"], "rgb")
        if self.load_depth if load_depth is None else load_depth:
            out["depth"] = self.sparse(scene, index_or_name)["depth"]
        return out

    def sparse(self, scene: str, index: int) -> dict:
        """The depth file of one image: depth (H, W), points (K, 2), points_depth (K,), point3D_ids (K,),
        observations (K, 2)."""
        entry = self.scenes[scene]["images"][index]
        with np.load(self.root / entry["depth"], allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def posed_pairs(self, **kwargs):
        """The pairs as a `localfeat.train.pairs.PosedPairs` (random crops with depth-reprojected flow).

        Views are numbered over all scenes in order; `kwargs` go to PosedPairs (crop_size, seed, ...).
        """
        from ..train.pairs import PosedPairs, PosedView

        flat = [(scene, k) for scene, data in self.scenes.items() for k in range(len(data["images"]))]
        offset, start = {}, 0
        for scene, data in self.scenes.items():
            offset[scene] = start
            start += len(data["images"])

        def view(i: int) -> PosedView:
            scene, k = flat[i]
            v = self.view(scene, k, load_images=True, load_depth=True)
            return PosedView(image=v["image"], K=v["K"], T_cw=v["T"], depth=v["depth"])

        pairs = [(offset[scene] + i, offset[scene] + j) for scene, i, j, _, _ in self.pairs]
        return PosedPairs(view, pairs, **kwargs)

    def __getitem__(self, i: int) -> dict:
        scene, a, b, shared, overlap = self.pairs[i]
        v0, v1 = self.view(scene, a), self.view(scene, b)
        item = {"scene": scene, "name0": v0["name"], "name1": v1["name"], "K0": v0["K"], "K1": v1["K"],
                "T0": v0["T"], "T1": v1["T"], "T_0to1": relative_pose(v0["T"], v1["T"]),
                "size0": v0["size"], "size1": v1["size"], "shared": shared, "overlap": overlap}
        for key in ("image", "depth"):
            if key in v0:
                item[key + "0"], item[key + "1"] = v0[key], v1[key]
        return item
