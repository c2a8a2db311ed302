"""Relative-pose evaluation on image pairs with known intrinsics and poses (SuperGlue/LoFTR protocol).

For each pair: extract, match, estimate the essential matrix with RANSAC on the matches
(normalised by K, threshold `ransac_thresh` pixels divided by the mean focal length),
decompose it with the cheirality check (keeping the candidate with most inliers), and
measure against the ground truth T_0to1 (4x4, camera 0 -> camera 1):

    rotation error     angle of R_est^T R_gt, degrees
    translation error  angle between t_est and t_gt, degrees, folded to [0, 90] because the
                       sign of t is not observable from E (SuperGlue's `compute_pose_error`)
    pose error         max of the two; a pair where estimation fails has an infinite error

and report the AUC of the pose error at 5, 10 and 20 degrees (SuperGlue's `pose_auc`: exact
trapezoid area under the recall curve, divided by the threshold).

Pair files:
- SuperGlue text format: ``name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)`` per line (38 values;
  36 without the rotations). rot0/rot1 rotate the images by multiples of 90 degrees
  counter-clockwise before extraction; keypoints are mapped back to the original image, so
  K and T_0to1 are used as given.
- JSON list in the format of the MegaDepth-1500 file of XFeat (accelerated_features):
  entries with ``pair_names``, ``K0``, ``K1``, ``T_0to1``.

Intrinsics are used as given: like the original evaluations, no half-pixel correction is
applied to principal points.

Estimators: 'opencv' (cv2.findEssentialMat, RANSAC, as SuperGlue/LoFTR) or 'pycolmap'
(LO-RANSAC of COLMAP, pycolmap.estimate_relative_pose). poselib is not a dependency.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from .metrics import error_auc

logger = logging.getLogger(__name__)

POSE_AUC_THRESHOLDS = (5, 10, 20)


@dataclass
class PosePair:
    """One evaluation pair: image names, 90-degree rotations, intrinsics (3, 3) and T_0to1 (4, 4)."""

    name0: str
    name1: str
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: np.ndarray
    rot0: int = 0
    rot1: int = 0


# ---------------------------------------------------------------------------------- pair files
def read_pose_pairs(path: str | os.PathLike) -> list[PosePair]:
    """Read a SuperGlue-format text file or an XFeat-style JSON list of pairs with ground truth."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file")
    text = path.read_text()
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        return _read_json_pairs(path, text)
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) == 38:
            rot0, rot1, values = int(parts[2]), int(parts[3]), parts[4:]
        elif len(parts) == 36:
            rot0, rot1, values = 0, 0, parts[2:]
        else:
            raise ValueError(f"{path}:{number}: expected 38 values (name0 name1 rot0 rot1 K0(9) K1(9) "
                             f"T_0to1(16)) or 36 (without rotations), got {len(parts)}")
        try:
            numbers = np.array([float(v) for v in values], np.float64)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from exc
        pairs.append(PosePair(parts[0], parts[1], numbers[:9].reshape(3, 3), numbers[9:18].reshape(3, 3),
                              numbers[18:].reshape(4, 4), rot0 % 4, rot1 % 4))
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


def _read_json_pairs(path: Path, text: str) -> list[PosePair]:
    data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("pairs", data)
    pairs = []
    for k, entry in enumerate(data):
        try:
            names = entry["pair_names"]
            pairs.append(PosePair(str(names[0]), str(names[1]), np.asarray(entry["K0"], np.float64).reshape(3, 3),
                                  np.asarray(entry["K1"], np.float64).reshape(3, 3),
                                  np.asarray(entry["T_0to1"], np.float64).reshape(4, 4)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: entry {k} lacks pair_names/K0/K1/T_0to1 ({exc})") from exc
    return pairs


# ---------------------------------------------------------------------------------- geometry
def rotation_error_deg(R_gt: np.ndarray, R: np.ndarray) -> float:
    """Angle (degrees) of the rotation R^T R_gt between two (3, 3) rotation matrices."""
    cos = (np.trace(np.asarray(R, np.float64).T @ np.asarray(R_gt, np.float64)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def vector_angle_deg(v_gt: np.ndarray, v: np.ndarray) -> float:
    """Angle (degrees) between two 3-vectors; 0 for a zero vector is not defined -> nan."""
    a, b = np.asarray(v_gt, np.float64).ravel(), np.asarray(v, np.float64).ravel()
    n = np.linalg.norm(a) * np.linalg.norm(b)
    if n == 0:
        return float("nan")
    return float(np.degrees(np.arccos(np.clip(a @ b / n, -1.0, 1.0))))


def relative_pose_error(T_0to1: np.ndarray, R: Optional[np.ndarray], t: Optional[np.ndarray]) -> tuple[float, float]:
    """(translation error, rotation error) in degrees of an estimate (R, t) against T_0to1 (4, 4).

    The translation error is folded to min(e, 180 - e): E determines t up to sign. A missing
    estimate (None) gives (inf, inf).
    """
    if R is None or t is None:
        return float("inf"), float("inf")
    T = np.asarray(T_0to1, np.float64)
    err_t = vector_angle_deg(T[:3, 3], t)
    err_t = min(err_t, 180.0 - err_t)
    return err_t, rotation_error_deg(T[:3, :3], R)


def pose_auc(errors, thresholds: Sequence[float] = POSE_AUC_THRESHOLDS) -> np.ndarray:
    """AUC (T,) of pose errors (degrees; inf = failure) at each threshold (SuperGlue's pose_auc)."""
    return error_auc(errors, thresholds)


def normalize_keypoints(keypoints: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, 2) pixels -> (N, 2) normalised image coordinates ((x - cx) / fx, (y - cy) / fy)."""
    K = np.asarray(K, np.float64)
    kp = np.asarray(keypoints, np.float64)
    return (kp - K[[0, 1], [2, 2]][None]) / K[[0, 1], [0, 1]][None]


def estimate_relative_pose(keypoints0: np.ndarray, keypoints1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                           ransac_thresh: float = 1.0, confidence: float = 0.99999,
                           estimator: str = "opencv", seed: Optional[int] = 0):
    """Relative pose (R (3, 3), t (3,) unit, inliers bool (M,)) from matched keypoints (M, 2) in pixels.

    Returns None with fewer than 5 matches or when RANSAC finds no model. `ransac_thresh` is in
    pixels; it is divided by the mean focal length for the normalised-coordinate RANSAC.
    """
    kp0, kp1 = np.asarray(keypoints0, np.float64), np.asarray(keypoints1, np.float64)
    if len(kp0) < 5:
        return None
    if estimator == "pycolmap":
        return _estimate_pycolmap(kp0, kp1, K0, K1, ransac_thresh, confidence, seed)
    if estimator != "opencv":
        raise ValueError(f"estimator must be 'opencv' or 'pycolmap', got {estimator!r}")
    f_mean = np.mean([K0[0, 0], K1[1, 1], K0[0, 0], K1[1, 1]])  # as SuperGlue's estimate_pose
    n0, n1 = normalize_keypoints(kp0, K0), normalize_keypoints(kp1, K1)
    if seed is not None:
        cv2.setRNGSeed(int(seed))
    E, mask = cv2.findEssentialMat(n0, n1, np.eye(3), threshold=ransac_thresh / f_mean, prob=confidence,
                                   method=cv2.RANSAC)
    if E is None:
        return None
    best, best_n = None, 0
    for E_k in np.split(E, len(E) // 3):
        n, R, t, _ = cv2.recoverPose(E_k, n0, n1, np.eye(3), 1e9, mask=mask.copy())
        if n > best_n:
            best_n, best = n, (R, t[:, 0], mask.ravel() > 0)
    return best


def _estimate_pycolmap(kp0, kp1, K0, K1, ransac_thresh, confidence, seed):
    from ..io.colmap import _require_pycolmap

    pycolmap = _require_pycolmap()
    cams = []
    for K, kp in ((K0, kp0), (K1, kp1)):
        w = int(max(1, 2 * K[0, 2]))
        h = int(max(1, 2 * K[1, 2]))
        cams.append(pycolmap.Camera.create_from_model_name(0, "PINHOLE", 1.0, w, h))
        cams[-1].params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
    options = pycolmap.RANSACOptions()
    options.max_error = float(ransac_thresh)
    options.confidence = float(confidence)
    if seed is not None:
        options.random_seed = int(seed)
    answer = pycolmap.estimate_relative_pose(cams[0], kp0, cams[1], kp1, options)
    if answer is None:
        return None
    pose = answer["cam2_from_cam1"]
    t = np.asarray(pose.translation, np.float64)
    return (np.asarray(pose.rotation.matrix(), np.float64), t / max(np.linalg.norm(t), 1e-12),
            np.asarray(answer["inlier_mask"], bool).ravel())


# ---------------------------------------------------------------------------------- rotations
def rotate_image(image: np.ndarray, k: int) -> np.ndarray:
    """Rotate an image by k * 90 degrees counter-clockwise (np.rot90)."""
    return np.ascontiguousarray(np.rot90(image, k % 4))


def unrotate_keypoints(keypoints: np.ndarray, k: int, original_size: tuple[int, int]) -> np.ndarray:
    """Map (N, 2) keypoints of `rotate_image(img, k)` back to `img` of size (W, H), pixel-centre origin."""
    w, h = original_size
    kp = np.asarray(keypoints, np.float32)
    u, v = kp[:, 0], kp[:, 1]
    k %= 4
    if k == 0:
        return kp
    if k == 1:    # rotated (u, v) = (y, W - 1 - x)
        x, y = (w - 1) - v, u
    elif k == 2:  # rotated (u, v) = (W - 1 - x, H - 1 - y)
        x, y = (w - 1) - u, (h - 1) - v
    else:         # rotated (u, v) = (H - 1 - y, x)
        x, y = v, (h - 1) - u
    return np.stack([x, y], 1).astype(np.float32)


# ---------------------------------------------------------------------------------- runner
def pairs_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (16 hex) of the pairs file's bytes: results of another pair set never mix."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def evaluate_pose(pairs_file: str | os.PathLike, images: str | os.PathLike, model: str = "sift",
                  conf: Optional[dict] = None, matcher: str = "nearest_neighbor",
                  matcher_conf: Optional[dict] = None, ransac_thresh: float = 1.0,
                  confidence: float = 0.99999, estimator: str = "opencv", max_pairs: Optional[int] = None,
                  output: Optional[str | os.PathLike] = None, overwrite: bool = False, seed: Optional[int] = 0,
                  extractor=None) -> dict:
    """Evaluate relative poses of the pairs in `pairs_file` (images below `images`).

    Returns {"auc@5", "auc@10", "auc@20" (fractions in [0, 1]), "num_pairs", "failures",
    "mean_num_matches", "mean_num_inliers", "pairs": per-pair errors, "identity": what was run}.
    With `output` (a folder) the result is saved as one JSON per (model, configs, pairs file):
    ``pose_<model>_<hash>.json``; an existing file is returned as is unless `overwrite`.
    """
    from ..io.images import read_image
    from ..presets import default_matcher_conf
    from .cache import load_entry
    from ..registry import conf_hash, load_extractor, load_matcher

    from ..dense import is_detector_free

    pairs = read_pose_pairs(pairs_file)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    # A detector-free model (LoFTR family, XFeat*) matches the two images itself; `matcher` is then unused.
    dense = extractor is None and is_detector_free(model)
    if dense:
        extractor = load_matcher(model, **(conf or {}))
    elif extractor is None:
        extractor = load_extractor(model, **(conf or {}))
    if matcher_conf is None:
        matcher_conf = default_matcher_conf(extractor.name, matcher)
    matcher_obj = extractor if dense else load_matcher(matcher, **matcher_conf)
    identity = {"model": extractor.name, "conf": extractor.conf, "conf_hash": extractor.conf_hash,
                "matcher": matcher_obj.name, "matcher_conf_hash": matcher_obj.conf_hash,
                "ransac_thresh": ransac_thresh, "confidence": confidence, "estimator": estimator,
                "pairs_fingerprint": pairs_fingerprint(pairs_file), "num_pairs": len(pairs)}
    result_path = None
    if output is not None:
        key = conf_hash("pose", {k: v for k, v in identity.items() if k != "conf"})
        result_path = Path(output) / f"pose_{extractor.name}_{key}.json"
        cached = None if overwrite else load_entry(result_path, identity, default=_json_default)
        if cached is not None:
            logger.info("pose: reusing %s", result_path)
            return cached
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"--images {root}: not a folder")
    missing = sorted({n for p in pairs for n in (p.name0, p.name1) if not (root / n).is_file()})
    if missing:  # say so before hours of extraction, not at the first missing pair
        hint = ("the MegaDepth pairs (e.g. MegaDepth-1500) name images below the MegaDepth root "
                "(Undistorted_SfM/<scene>/images/, D2-Net's undistorted images): pass that root as --images"
                if missing[0].startswith("Undistorted_SfM/")
                else "the names in the pairs file are relative to --images")
        raise FileNotFoundError(f"--images {root}: {len(missing)} of the images that {Path(pairs_file).name} names are "
                                f"missing, e.g. {root / missing[0]}; {hint}")
    cache: dict = {}

    def features(name: str, rot: int):
        key = (name, rot)
        if key not in cache:
            image = read_image(root / name, extractor.input_mode)
            h, w = image.shape[:2]
            feats = extractor.extract(rotate_image(image, rot))
            if rot:
                feats.keypoints = unrotate_keypoints(feats.keypoints, rot, (w, h))
                feats.image_size = (w, h)
                if feats.orientations is not None:  # a CCW image rotation is a CW turn in y-down pixels
                    feats.orientations = (feats.orientations - np.float32(rot * np.pi / 2)).astype(np.float32)
            if len(cache) > 64:
                cache.clear()
            cache[key] = feats
        return cache[key]

    def pair_matches(pair) -> tuple[np.ndarray, np.ndarray]:
        """Matched keypoints (M, 2), (M, 2) of a pair in the unrotated images."""
        if dense:
            images = []
            for name, rot in ((pair.name0, pair.rot0), (pair.name1, pair.rot1)):
                image = read_image(root / name, extractor.input_mode)
                images.append((rotate_image(image, rot), rot, (image.shape[1], image.shape[0])))
            pm = extractor.match_images(images[0][0], images[1][0])
            k0, k1 = pm.keypoints0, pm.keypoints1
            if images[0][1]:
                k0 = unrotate_keypoints(k0, images[0][1], images[0][2])
            if images[1][1]:
                k1 = unrotate_keypoints(k1, images[1][1], images[1][2])
            return k0, k1
        f0, f1 = features(pair.name0, pair.rot0), features(pair.name1, pair.rot1)
        m = matcher_obj.match(f0, f1)
        return f0.keypoints[m.indices[:, 0]], f1.keypoints[m.indices[:, 1]]

    per_pair = []
    for pair in tqdm(pairs, desc="pose", unit="pair", disable=None):
        k0, k1 = pair_matches(pair)
        est = estimate_relative_pose(k0, k1, pair.K0, pair.K1, ransac_thresh, confidence, estimator, seed)
        err_t, err_R = relative_pose_error(pair.T_0to1, *(est[:2] if est else (None, None)))
        per_pair.append({"name0": pair.name0, "name1": pair.name1, "num_matches": int(len(k0)),
                         "num_inliers": int(est[2].sum()) if est else 0,
                         "error_t": err_t, "error_R": err_R, "error": max(err_t, err_R)})
    errors = [p["error"] for p in per_pair]
    aucs = pose_auc(errors, POSE_AUC_THRESHOLDS)
    result = {f"auc@{t}": float(a) for t, a in zip(POSE_AUC_THRESHOLDS, aucs)}
    result.update({
        "num_pairs": len(per_pair),
        "failures": int(sum(1 for e in errors if not np.isfinite(e))),
        "mean_num_matches": float(np.mean([p["num_matches"] for p in per_pair])) if per_pair else 0.0,
        "mean_num_inliers": float(np.mean([p["num_inliers"] for p in per_pair])) if per_pair else 0.0,
        "median_error": float(np.median(errors)) if errors else float("nan"),
        "pairs": per_pair, "identity": identity,
    })
    if result_path is not None:
        from ..io.atomic import write_text_atomic

        write_text_atomic(result_path, json.dumps(result, indent=1, default=_json_default) + "\n")
    return result


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
