"""MegaDepth-format scenes: the indices of LoFTR and D2-Net as training pair sources, and a converter that
writes localfeat's own COLMAP-scene datasets (`datasets.colmap_scenes`) in that format.

    from localfeat.datasets.megadepth import MegaDepthScenes
    data = MegaDepthScenes("/data/megadepth", "/data/megadepth/index/scene_info_0.1_0.7")   # a folder or files
    pairs = data.posed_pairs(crop_size=192, seed=0)   # train.pairs.PosedPairs: depth-reprojected flow

Training config: ``data.source: megadepth``, ``data.root: MEGADEPTH_ROOT``, ``data.scenes: INDEX`` (an index
file, a folder of them, or a list), optional ``data.min_overlap`` / ``data.max_overlap``.

A MegaDepth root, as LoFTR and D2-Net use it (paths in the indices are relative to it):

    ROOT/Undistorted_SfM/<scene>/images/<name>                         the undistorted images (D2-Net)
    ROOT/phoenix/S6/zl548/MegaDepth_v1/<scene>/dense0/depths/<stem>.h5  dataset 'depth' (H, W), 0 = unknown

Index files (.npz; their object arrays are pickles, read here by an unpickler that only builds numpy arrays,
numbers, strings, tuples, lists, dicts and sets, so an index cannot run code):

- LoFTR (``megadepth_indices/scene_info_0.1_0.7/<scene>_<k>.npz``, ``scene_info_val_1500/``): image_paths,
  depth_paths (N,) str relative to ROOT or None for images left out; intrinsics (N, 3, 3); poses (N, 4, 4)
  world-to-camera; pair_infos (P,): ((i, j), overlap score, central matches). Pairs: all of pair_infos with
  min_overlap < score <= max_overlap (LoFTR keeps score > min_overlap_score).
- D2-Net (``scene_info/<scene>.npz`` of megadepth_utils/preprocess_scene.py): image_paths, depth_paths,
  intrinsics (N,) (3, 3) or None, poses (N,) (4, 4) or None, overlap_matrix (N, N) (-1 = not computed; row i
  = shared 3D points / points of image i), scale_ratio_matrix (N, N), angles, n_points3D,
  points3D_id_to_2D, points3D_id_to_ndepth. D2-Net's first preprocessing also stored fact_x / fact_y and
  flattened poses (16,); both are read. Pairs: i < j with both images and depths, overlap =
  max(overlap[i, j], overlap[j, i]) (= shared / min(points), the rule of `colmap_scenes`) within
  [min_overlap, max_overlap] (D2-Net's training defaults 0.5 and 1) and scale ratio <= max_scale_ratio.

Conventions: the intrinsics of both indices are COLMAP's (the centre of the top-left pixel at (0.5, 0.5));
the reader moves the principal point by -0.5 into localfeat's convention (DESIGN.md) and the converter by
+0.5 back. The intrinsics are those of the depth map; an image of another size (D2-Net's first
preprocessing pointed at the raw photos) is resized to its depth map, as D2-Net's loader does.

Relative-pose evaluation on MegaDepth-1500 (``../shared/data/megadepth1500_gt/megadepth_1500.json``, whose
pair_names are relative to ROOT): ``localfeat eval pose --pairs megadepth_1500.json --images ROOT``;
`export_megadepth` writes the pairs of a converted dataset in the same JSON format.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from ..io.atomic import atomic_path, write_text_atomic
from ..io.colmap import COLMAP_PIXEL_SHIFT, intrinsics_from_colmap, intrinsics_to_colmap

logger = logging.getLogger(__name__)

IMAGES_DIR = "Undistorted_SfM/{scene}/images"
DEPTHS_DIR = "phoenix/S6/zl548/MegaDepth_v1/{scene}/dense0/depths"
LOFTR_INDEX_DIR = "megadepth_indices/scene_info"
D2NET_INDEX_DIR = "scene_info"
POSE_PAIRS_DIR = "pose_pairs"
LOFTR_KEYS = ("image_paths", "depth_paths", "intrinsics", "poses", "pair_infos")
D2NET_KEYS = ("image_paths", "depth_paths", "intrinsics", "poses", "overlap_matrix", "scale_ratio_matrix")


class MegaDepthError(ValueError):
    """A MegaDepth root, index file or scene that cannot be read."""


# ------------------------------------------------------------------------------ safe index reading
class _IndexUnpickler(pickle.Unpickler):
    """Builds only what the indices hold: numpy arrays / dtypes / scalars, sets, bytes (Python 2 pickles)."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("builtins", "set"),
                ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}
    _NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
    _NUMPY_FUNCS = ("_reconstruct", "scalar", "_frombuffer")

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED or (module in self._NUMPY_CORE and name in self._NUMPY_FUNCS):
            if module.startswith("numpy.core"):  # NumPy 2 moved numpy.core to numpy._core
                module = module.replace("numpy.core", "numpy._core" if hasattr(np, "_core") else "numpy.core")
            if module == "__builtin__":
                module = "builtins"
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a MegaDepth index")


def read_index_npz(path: str | os.PathLike) -> dict:
    """{key: array} of an index .npz; object arrays are unpickled with an allow-list (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise MegaDepthError(f"{path}: no such index file")
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                if not member.endswith(".npy"):
                    continue
                with z.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    else:  # 3.0 (utf-8 field names): no public reader
                        shape, fortran, dtype = np.lib.format._read_array_header(f, version)
                    if dtype.hasobject:
                        array = _IndexUnpickler(f, encoding="latin1").load()
                    else:
                        data = np.frombuffer(f.read(), dtype=dtype, count=int(np.prod(shape))).copy()
                        array = data.reshape(shape[::-1]).T if fortran else data.reshape(shape)
                out[member[:-4]] = array
    except (zipfile.BadZipFile, ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise MegaDepthError(f"{path}: not a readable MegaDepth index (.npz): {exc}") from exc
    return out


def index_format(data: dict, path) -> str:
    """'loftr' (pair_infos) or 'd2net' (overlap_matrix); MegaDepthError naming the missing keys otherwise."""
    if all(k in data for k in LOFTR_KEYS):
        return "loftr"
    if all(k in data for k in D2NET_KEYS):
        return "d2net"
    raise MegaDepthError(f"{path}: neither a LoFTR index (keys {list(LOFTR_KEYS)}) nor a D2-Net scene info "
                         f"(keys {list(D2NET_KEYS)}); it holds {sorted(data)}")


def _index_files(scenes) -> list[Path]:
    items = [scenes] if isinstance(scenes, (str, os.PathLike)) else list(scenes or [])
    files = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.npz"))
            if not found:
                raise MegaDepthError(f"data.scenes {p}: a folder without .npz index files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise MegaDepthError(f"data.scenes {p}: no such index file or folder (LoFTR's scene_info_*/ or "
                                 "D2-Net's scene_info/)")
    if not files:
        raise MegaDepthError("data.scenes: give a MegaDepth index file, a folder of them, or a list")
    return files


# ------------------------------------------------------------------------------ reading
class _View:
    """One image of a scene, loaded on demand (picklable, for the loader's worker processes)."""

    def __init__(self, root: Path, image: str, depth: str, K: np.ndarray, T: np.ndarray):
        self.root, self.image, self.depth, self.K, self.T = root, image, depth, K, T

    def load(self):
        import cv2
        import h5py

        from ..io.images import read_image
        from ..train.pairs import PosedView

        path = self.root / self.depth
        if not path.is_file():
            raise MegaDepthError(f"depth map {path} is missing: data.root must be the MegaDepth folder that holds "
                                 "phoenix/S6/zl548/MegaDepth_v1 (the depth maps of MegaDepth_v1.tar.gz)")
        with h5py.File(path, "r") as f:
            if "depth" not in f:
                raise MegaDepthError(f"{path}: no dataset 'depth'")
            depth = np.asarray(f["depth"], np.float32)
        image_path = self.root / self.image
        if not image_path.is_file():
            raise MegaDepthError(f"image {image_path} is missing: data.root must be the MegaDepth folder that holds "
                                 "Undistorted_SfM (the undistorted images of D2-Net's preprocessing)")
        image = read_image(image_path, "rgb")
        if image.shape[:2] != depth.shape:
            image = cv2.resize(image, depth.shape[::-1], interpolation=cv2.INTER_AREA)
        return PosedView(image=image, K=self.K, T_cw=self.T, depth=depth)


class _ViewLoader:
    def __init__(self, views: Sequence[_View]):
        self.views = list(views)

    def __call__(self, i: int):
        return self.views[i].load()


class MegaDepthScenes:
    """The pairs of MegaDepth index files (LoFTR or D2-Net, see the module docstring) below a MegaDepth root.

    root:     the MegaDepth folder the index paths are relative to.
    scenes:   an index file, a folder of index files, or a list of those.
    min_overlap / max_overlap: the pair filter (None: LoFTR 0 / 1, i.e. every pair of the index;
              D2-Net 0.5 / 1, its training defaults); max_scale_ratio: D2-Net only (None = no limit).

    `views[k]`: {"scene", "image", "depth" (paths relative to root), "K" (3, 3) in localfeat's pixel-centre
    convention, "T" (4, 4) world-to-camera}; `pairs`: [(k0, k1, overlap)] into `views`.
    """

    def __init__(self, root: str | os.PathLike, scenes, min_overlap: Optional[float] = None,
                 max_overlap: Optional[float] = None, max_scale_ratio: Optional[float] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MegaDepthError(f"data.root {self.root}: not a folder (the MegaDepth root, which holds "
                                 "Undistorted_SfM/ and phoenix/)")
        self.views: list[dict] = []
        self.pairs: list[tuple[int, int, float]] = []
        self.formats: dict[str, str] = {}
        for path in _index_files(scenes):
            data = read_index_npz(path)
            kind = index_format(data, path)
            self.formats[path.stem] = kind
            lo = (0.5 if kind == "d2net" else 0.0) if min_overlap is None else float(min_overlap)
            hi = 1.0 if max_overlap is None else float(max_overlap)
            offset = len(self.views)
            keep = self._add_views(data, path)
            if kind == "loftr":
                pairs = self._loftr_pairs(data, path, lo, hi)
            else:
                pairs = self._d2net_pairs(data, lo, hi, max_scale_ratio)
            for i, j, overlap in pairs:
                if i in keep and j in keep:
                    self.pairs.append((offset + keep[i], offset + keep[j], overlap))
            logger.info("%s: %s index, %d images, %d pairs", path, kind, len(keep), len(pairs))
        if not self.pairs:
            raise MegaDepthError(f"no pairs in {scenes} within overlap [{min_overlap}, {max_overlap}]")

    def _add_views(self, data: dict, path: Path) -> dict[int, int]:
        """Append the usable images of one index (image, depth, K and pose known); {index: position}."""
        keep = {}
        n = len(data["image_paths"])
        for i in range(n):
            image, depth = data["image_paths"][i], data["depth_paths"][i]
            K, T = data["intrinsics"][i], data["poses"][i]
            if image is None or depth is None or K is None or T is None:
                continue
            K = np.asarray(K, np.float64).reshape(3, 3)
            T = np.asarray(T, np.float64).reshape(4, 4)
            if not (np.isfinite(K).all() and np.isfinite(T).all()):
                raise MegaDepthError(f"{path}: image {i} ({image}) has non-finite intrinsics or pose")
            keep[i] = len(keep)
            self.views.append({"scene": path.stem, "image": str(image), "depth": str(depth),
                               "K": intrinsics_from_colmap(K), "T": T, "index": i})
        return keep

    @staticmethod
    def _loftr_pairs(data: dict, path: Path, lo: float, hi: float) -> list[tuple[int, int, float]]:
        pairs = []
        for k, info in enumerate(data["pair_infos"]):
            try:
                (i, j), overlap = info[0], float(info[1])
            except (TypeError, ValueError, IndexError) as exc:
                raise MegaDepthError(f"{path}: pair_infos[{k}] is not ((i, j), overlap, ...): {exc}") from exc
            if lo < overlap <= hi:  # LoFTR keeps score > min_overlap_score
                pairs.append((int(i), int(j), overlap))
        return pairs

    @staticmethod
    def _d2net_pairs(data: dict, lo: float, hi: float, max_scale_ratio: Optional[float]):
        o = np.asarray(data["overlap_matrix"], np.float64)
        s = np.asarray(data["scale_ratio_matrix"], np.float64)
        both = np.maximum(o, o.T)
        ok = (both >= lo) & (both <= hi) & (np.minimum(o, o.T) >= 0)
        if max_scale_ratio is not None:
            ok &= (s <= max_scale_ratio) & (s >= 1.0 / max_scale_ratio)
        i, j = np.nonzero(np.triu(ok, 1))
        return [(int(a), int(b), float(both[a, b])) for a, b in zip(i, j)]

    def __len__(self) -> int:
        return len(self.pairs)

    def view_loader(self) -> _ViewLoader:
        """k -> `train.pairs.PosedView` of views[k] (image, K, T_cw, depth read from disk)."""
        return _ViewLoader(_View(self.root, v["image"], v["depth"], v["K"], v["T"]) for v in self.views)

    def posed_pairs(self, **kwargs):
        """The pairs as a `localfeat.train.pairs.PosedPairs` (random crops with depth-reprojected flow, the
        same `reproject` as every posed source); `kwargs` go to PosedPairs (crop_size, seed, ...)."""
        from ..train.pairs import PosedPairs

        return PosedPairs(self.view_loader(), [(i, j) for i, j, _ in self.pairs], **kwargs)


# ------------------------------------------------------------------------------ converting
def _object_array(items: Sequence) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for k, item in enumerate(items):
        out[k] = item
    return out


def _save_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy appends no '.npz'
        np.savez(f, **arrays)


def _place(src: Path, dst: Path, mode: str) -> None:
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system
            pass
    elif mode != "copy":
        raise ValueError(f"image_mode must be 'copy' or 'hardlink', got {mode!r}")
    shutil.copy2(src, dst)


def export_megadepth(dataset: str | os.PathLike, output: str | os.PathLike, scenes: Optional[Iterable[str]] = None,
                     image_mode: str = "hardlink", min_overlap: Optional[float] = None,
                     max_overlap: Optional[float] = None) -> dict:
    """Write the scenes of a `colmap_scenes` dataset as a MegaDepth root `output` with both index formats.

    output/Undistorted_SfM/<scene>/images/<name>, output/phoenix/.../<scene>/dense0/depths/<stem>.h5 (the
    dataset's depth maps), output/megadepth_indices/scene_info/<scene>.npz (LoFTR: the dataset's pairs with
    min_overlap < overlap <= max_overlap, None = all), output/scene_info/<scene>.npz (D2-Net: overlap, scale
    ratio and angle matrices from the sparse 3D points) and output/pose_pairs/<scene>.json (the pairs in the
    MegaDepth-1500 JSON format of `eval.pose`). Intrinsics are written in COLMAP's convention.
    Returns {"loftr": [paths], "d2net": [paths], "pose_pairs": [paths]}.
    """
    from .colmap_scenes import ColmapScenes

    data = ColmapScenes(dataset, scenes=list(scenes) if scenes is not None else None, load_images=False,
                        load_depth=False)
    out = Path(output)
    written = {"loftr": [], "d2net": [], "pose_pairs": []}
    for scene, info in data.scenes.items():
        images, depths, Ks, Ts, obs, ndepth, axes = [], [], [], [], [], [], []
        sizes = []
        for k, entry in enumerate(info["images"]):
            stem, name = os.path.splitext(entry["name"])[0], entry["name"]
            if "/" in name:
                raise MegaDepthError(f"scene {scene}: image {name!r} is in a sub-folder; MegaDepth names are flat")
            rel_image = f"{IMAGES_DIR.format(scene=scene)}/{name}"
            rel_depth = f"{DEPTHS_DIR.format(scene=scene)}/{stem}.h5"
            _place(data.root / entry["image"], out / rel_image, image_mode)
            sparse = data.sparse(scene, k)
            _write_depth_h5(out / rel_depth, sparse["depth"])
            K = np.asarray(entry["K"], np.float64)
            K_colmap = intrinsics_to_colmap(K)
            T = np.asarray(entry["T_cam_from_world"], np.float64)
            images.append(rel_image)
            depths.append(rel_depth)
            Ks.append(K_colmap)
            Ts.append(T)
            sizes.append(tuple(entry["size"]))
            ids = sparse["point3D_ids"].tolist()
            xy = (sparse["observations"].astype(np.float64) + COLMAP_PIXEL_SHIFT).tolist()
            obs.append({int(i): [float(x), float(y)] for i, (x, y) in zip(ids, xy)})
            f = 0.5 * (K[0, 0] + K[1, 1])
            ndepth.append({int(i): float(z) / f for i, z in zip(ids, sparse["points_depth"].tolist())})
            axes.append(T[2, :3])
        n = len(images)
        # D2-Net: overlap[i, j] = shared / points of i; scale ratio = min over shared points of the depth ratio.
        overlap = np.full((n, n), -1.0)
        scale = np.full((n, n), -1.0)
        for i in range(n):
            for j in range(i + 1, n):
                shared = obs[i].keys() & obs[j].keys()
                overlap[i, j] = len(shared) / max(1, len(obs[i]))
                overlap[j, i] = len(shared) / max(1, len(obs[j]))
                if shared:
                    r = [max(ndepth[i][p] / ndepth[j][p], ndepth[j][p] / ndepth[i][p]) for p in shared]
                    scale[i, j] = scale[j, i] = min(r)
        axes = np.asarray(axes).reshape(-1, 3)
        angles = np.rad2deg(np.arccos(np.clip(axes @ axes.T, -1, 1)))
        d2 = out / D2NET_INDEX_DIR / f"{scene}.npz"
        _save_npz(d2, image_paths=_object_array(images), depth_paths=_object_array(depths),
                  intrinsics=_object_array(Ks), poses=_object_array(Ts), overlap_matrix=overlap,
                  scale_ratio_matrix=scale, angles=angles, n_points3D=np.array([len(o) for o in obs]),
                  points3D_id_to_2D=_object_array(obs), points3D_id_to_ndepth=_object_array(ndepth))
        lo = -np.inf if min_overlap is None else float(min_overlap)
        hi = np.inf if max_overlap is None else float(max_overlap)
        pair_infos = [(np.array([i, j]), float(o), None) for name, i, j, _, o in data.pairs
                      if name == scene and lo < o <= hi]
        loftr = out / LOFTR_INDEX_DIR / f"{scene}.npz"
        _save_npz(loftr, image_paths=_object_array(images), depth_paths=_object_array(depths),
                  intrinsics=np.stack(Ks), poses=np.stack(Ts), pair_infos=_object_array(pair_infos))
        entries = []
        for k, (ij, o, _) in enumerate(pair_infos):
            i, j = int(ij[0]), int(ij[1])
            T01 = Ts[j] @ np.linalg.inv(Ts[i])
            entries.append({"image0": None, "image1": None, "T_0to1": T01.tolist(),
                            "T_1to0": np.linalg.inv(T01).tolist(), "K0": Ks[i].tolist(), "K1": Ks[j].tolist(),
                            "scale0": [1.0, 1.0], "scale1": [1.0, 1.0], "dataset_name": "MegaDepth",
                            "scene_id": scene, "pair_id": k, "pair_names": [images[i], images[j]],
                            "size0_hw": [sizes[i][1], sizes[i][0]], "size1_hw": [sizes[j][1], sizes[j][0]],
                            "overlap": o})
        pose = out / POSE_PAIRS_DIR / f"{scene}.json"
        write_text_atomic(pose, json.dumps(entries) + "\n")
        written["loftr"].append(loftr)
        written["d2net"].append(d2)
        written["pose_pairs"].append(pose)
        logger.info("scene %s -> %s: %d images, %d LoFTR pairs", scene, out, n, len(pair_infos))
    return written


def _write_depth_h5(path: Path, depth: np.ndarray) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("depth", data=np.asarray(depth, np.float32), compression="gzip")
