"""Geometry shared by evaluation and data generation: homography warps, corner error, robust estimation.

Conventions (DESIGN.md): points are (x, y) in pixels, pixel-centre origin; a homography H
(3, 3) maps points of image A to image B as p_B ~ H @ (x_A, y_A, 1). Everything here is
computed in float64 and takes numpy arrays.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)


def _as_points(points, name: str = "points") -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name} has shape {pts.shape}, expected (N, 2) of (x, y)")
    return pts


def _as_homography(H, name: str = "H") -> np.ndarray:
    h = np.asarray(H, dtype=np.float64)
    if h.shape != (3, 3):
        raise ValueError(f"{name} has shape {h.shape}, expected (3, 3)")
    return h


def warp_points(points, H) -> np.ndarray:
    """Apply the homography H (3, 3) to points (N, 2); returns float64 (N, 2).

    p = H @ (x, y, 1)^T, then (p_x / p_z, p_y / p_z). Points mapped to infinity (p_z = 0)
    come out as inf/nan; callers that care test `np.isfinite`.
    """
    pts = _as_points(points)
    h = _as_homography(H)
    homog = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ h.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return homog[:, :2] / homog[:, 2:3]


def inside_image(points, image_size, margin: float = 0.0) -> np.ndarray:
    """Boolean (N,): points (N, 2) whose (x, y) lie within [-margin, W-1+margin] x [-margin, H-1+margin].

    image_size is (W, H). Non-finite points are outside.
    """
    pts = _as_points(points)
    w, h = image_size
    x, y = pts[:, 0], pts[:, 1]
    with np.errstate(invalid="ignore"):
        return (np.isfinite(x) & np.isfinite(y) & (x >= -margin) & (y >= -margin)
                & (x <= w - 1 + margin) & (y <= h - 1 + margin))


def image_corners(image_size) -> np.ndarray:
    """The centres of the four corner pixels of an image of size (W, H): (0,0), (W-1,0), (0,H-1), (W-1,H-1)."""
    w, h = image_size
    return np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)


def corner_error(H_true, H_estimated: Optional[np.ndarray], image_size) -> float:
    """Mean over the four corner pixels of image A (size (W, H)) of ||H_true(c) - H_estimated(c)||_2, pixels.

    This is the homography error of the HPatches protocol of ALIKE / SuperPoint / LightGlue,
    with the corners (0,0), (W-1,0), (0,H-1), (W-1,H-1). Returns inf when `H_estimated` is None
    (no model found) or maps a corner to infinity.
    """
    if H_estimated is None:
        return float("inf")
    corners = image_corners(image_size)
    err = np.linalg.norm(warp_points(corners, H_true) - warp_points(corners, H_estimated), axis=1)
    value = float(np.mean(err))
    return value if np.isfinite(value) else float("inf")


@dataclass(frozen=True)
class RansacParams:
    """Parameters of robust homography estimation (reported with every result that used them).

    method:     'opencv' (cv2.findHomography with cv2.RANSAC, the ALIKE / D2-Net evaluation choice),
                'opencv-usac' (cv2.USAC_MAGSAC) or 'poselib' (optional package `poselib`).
    threshold:  inlier reprojection threshold, pixels.
    max_iters:  maximum RANSAC iterations.
    confidence: RANSAC confidence.
    """

    method: str = "opencv"
    threshold: float = 3.0
    max_iters: int = 2000
    confidence: float = 0.995

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_homography(src, dst, params: RansacParams = RansacParams()) -> tuple[Optional[np.ndarray], np.ndarray]:
    """Robustly estimate H with dst ~ H(src) from correspondences src, dst (M, 2).

    Returns (H float64 (3, 3) or None, inlier mask bool (M,)). Fewer than 4 correspondences
    give (None, all False). With method 'opencv' the points are passed as float32, as the
    original evaluation code does (results then equal it exactly); OpenCV's RANSAC is
    deterministic for identical inputs.
    """
    src, dst = _as_points(src, "src"), _as_points(dst, "dst")
    if len(src) != len(dst):
        raise ValueError(f"src has {len(src)} points but dst has {len(dst)}")
    m = len(src)
    none = (None, np.zeros(m, dtype=bool))
    if m < 4:
        return none
    if params.method in ("opencv", "opencv-usac"):
        import cv2

        flag = cv2.RANSAC if params.method == "opencv" else cv2.USAC_MAGSAC
        H, mask = cv2.findHomography(src.astype(np.float32), dst.astype(np.float32), flag,
                                     ransacReprojThreshold=float(params.threshold),
                                     maxIters=int(params.max_iters), confidence=float(params.confidence))
        if H is None:
            return none
        return H.astype(np.float64), mask.ravel().astype(bool)
    if params.method == "poselib":
        try:
            import poselib
        except ImportError as exc:
            raise ValueError("RANSAC method 'poselib' needs the optional package poselib "
                             "(pip install poselib); or use method 'opencv'") from exc
        H, info = poselib.estimate_homography(
            src, dst, {"max_reproj_error": float(params.threshold), "max_iterations": int(params.max_iters),
                       "success_prob": float(params.confidence)})
        return np.asarray(H, np.float64), np.asarray(info["inliers"], bool)
    raise ValueError(f"unknown RANSAC method {params.method!r}; use 'opencv', 'opencv-usac' or 'poselib'")


def fundamental_inliers(points0, points1, threshold: float = 1.0, confidence: float = 0.999,
                        max_iters: int = 10000) -> np.ndarray:
    """Inlier mask (M,) bool of a fundamental matrix fitted to matched points (M, 2) <-> (M, 2) (pixels)
    with OpenCV's MAGSAC++ (`cv2.USAC_MAGSAC`); `threshold` in pixels. Fewer than 8 matches, or no
    model found: no inliers."""
    import cv2

    p0, p1 = _as_points(points0, "points0"), _as_points(points1, "points1")
    if len(p0) != len(p1):
        raise ValueError(f"points0 has {len(p0)} rows but points1 has {len(p1)}")
    if len(p0) < 8:
        return np.zeros(len(p0), bool)
    _, mask = cv2.findFundamentalMat(p0.astype(np.float64), p1.astype(np.float64), cv2.USAC_MAGSAC,
                                     float(threshold), float(confidence), int(max_iters))
    return mask.ravel().astype(bool) if mask is not None else np.zeros(len(p0), bool)


def homography_about_centre(image_size, angle_deg: float = 0.0, scale: float = 1.0,
                            perspective=(0.0, 0.0), shear: float = 0.0) -> np.ndarray:
    """A homography (3, 3) rotating by `angle_deg`, scaling by `scale`, shearing and tilting
    (`perspective` = (h31, h32) in units of 1/pixel, relative to the centre) about the image centre.

    image_size is (W, H); the centre ((W-1)/2, (H-1)/2) is a fixed point of the rotation/scale part.
    """
    w, h = image_size
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    back = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]], np.float64)
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], np.float64)
    sc = np.diag([scale, scale, 1.0])
    sh = np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]], np.float64)
    persp = np.array([[1, 0, 0], [0, 1, 0], [perspective[0], perspective[1], 1]], np.float64)
    H = back @ persp @ rot @ sh @ sc @ to_centre
    return H / H[2, 2]


# ------------------------------------------------------------------------------ cameras
# Poses are cam_from_world (4, 4): X_cam = R X_world + t. Intrinsics K (3, 3) in the localfeat pixel
# convention (pixel centres at integers; COLMAP's +0.5 is removed at the file boundary).
def project(points_world: np.ndarray, K: np.ndarray, T_cam_from_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (..., 3): returns pixels (..., 2) and camera depths z (...)."""
    X = np.asarray(points_world, np.float64)
    T = np.asarray(T_cam_from_world, np.float64)
    cam = X @ T[:3, :3].T + T[:3, 3]
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ np.asarray(K, np.float64).T)[..., :2] / z[..., None]
    return uv, z


def unproject(pixels: np.ndarray, depth: np.ndarray, K: np.ndarray, T_cam_from_world: np.ndarray) -> np.ndarray:
    """Back-project pixels (..., 2) with camera depths z (...) to world points (..., 3)."""
    uv = np.asarray(pixels, np.float64)
    z = np.asarray(depth, np.float64)
    rays = np.concatenate([uv, np.ones_like(uv[..., :1])], -1) @ np.linalg.inv(np.asarray(K, np.float64)).T
    cam = rays * z[..., None]
    T = np.asarray(T_cam_from_world, np.float64)
    return (cam - T[:3, 3]) @ T[:3, :3]  # R^T (X_cam - t)


def relative_pose(T0: np.ndarray, T1: np.ndarray) -> np.ndarray:
    """T_0to1 (4, 4) = T1 inv(T0) from two cam_from_world poses: X_cam1 = T_0to1 X_cam0."""
    return np.asarray(T1, np.float64) @ np.linalg.inv(np.asarray(T0, np.float64))


def epipolar_distances(points0, points1, K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray) -> np.ndarray:
    """Epipolar error (M,) in pixels of point correspondences (M, 2) in two calibrated images.

    With F = K1^-T [t]x R K0^-1 from T_0to1 = [R | t] (X_cam1 = R X_cam0 + t), the distance of points1 to
    their epipolar lines F x0 in image 1 and of points0 to F^T x1 in image 0; the larger of the two is
    returned (a correspondence is within d pixels when both points are). A pure rotation (t = 0) has no
    epipolar geometry: an error.
    """
    p0, p1 = _as_points(points0, "points0"), _as_points(points1, "points1")
    if len(p0) != len(p1):
        raise ValueError(f"points0 and points1 must have the same length, got {len(p0)} and {len(p1)}")
    T = np.asarray(T_0to1, np.float64)
    R, t = T[:3, :3], T[:3, 3]
    if not np.linalg.norm(t) > 0:
        raise ValueError("epipolar_distances: T_0to1 has no translation, so no epipolar geometry")
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = np.linalg.inv(np.asarray(K1, np.float64)).T @ tx @ R @ np.linalg.inv(np.asarray(K0, np.float64))
    h0 = np.concatenate([p0, np.ones((len(p0), 1))], 1)
    h1 = np.concatenate([p1, np.ones((len(p1), 1))], 1)
    lines1, lines0 = h0 @ F.T, h1 @ F          # lines in image 1 (of points0) and in image 0 (of points1)
    num = np.abs(np.sum(h1 * lines1, 1))       # = |x1^T F x0|, the same for both lines
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = num / np.linalg.norm(lines1[:, :2], axis=1)
        d0 = num / np.linalg.norm(lines0[:, :2], axis=1)
    return np.maximum(d0, d1)
