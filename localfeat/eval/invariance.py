"""Invariance sweeps: how matching degrades along ONE axis of change at a time.

For each photo (default: scikit-image's bundled photos, so it runs offline) image A is the photo
scaled to `size` pixels on its longer side, and image B is A under one change with an exact
ground-truth homography H (A pixels -> B pixels, pixel-centre convention):

- rotation:     in-plane rotation by `value` degrees about the centre, onto a canvas holding the whole
                rotated image;
- scale:        the whole image resized by `value` (B is value x A's size, so all of A stays visible);
- tilt:         affine tilt t = `value` (ASIFT's protocol): compression by 1/t along the direction
                phi, for each longitude phi in `longitudes` (averaged per step), no net rotation;
- illumination: `value` = s in [-1, 1]: gamma 3^s and contrast x (1 - 0.6 |s|) about mid-grey;
- blur:         Gaussian blur of sigma = `value` pixels;
- noise:        additive Gaussian noise of sigma = `value` grey levels (seeded: deterministic).

Geometric changes are rendered by supersampling (factor >= 2, more for strong minification) and area
averaging, so a shrunk image is not aliased. Keypoints of A (B) whose image under H (H^-1) falls
outside B (A), or within `border` px of its edge, are left out: only the covisible part is scored.

Per pair: mutual nearest neighbours on the descriptors, reprojection error of each match under H;
MMA@1/3/5 (fraction of matches with error <= t px), n_correct (matches within 3 px), n_matches,
homography success (RANSAC homography whose mean corner error is <= 5 px). Per step the values are
averaged over photos (and longitudes); n_correct is rounded to an integer.

Cache (`run_sweeps(cache_dir=...)`, the CLI's --cache-dir): the evaluation cache of `localfeat.eval.cache`,
as HPatches and pose use it: one JSON per (model spec, axis) named
``<method>__<config hash>__<photos fingerprint>.json``, whose config hash covers the model's config hash and
every setting of that axis (steps, size, top_k, border, longitudes for tilt, thresholds) and whose
fingerprint is the digest of the photo files (names and bytes, in order). The file holds its identity and is
reused only when the identity matches; anything else is recomputed.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from ..geometry import corner_error, estimate_homography, warp_points
from ..types import Features
from . import metrics

logger = logging.getLogger(__name__)

AXES = ("rotation", "scale", "tilt", "illumination", "blur", "noise")
DEFAULT_STEPS = {
    "rotation": [0, 15, 30, 45, 60, 90, 120, 150, 180],
    "scale": [0.25, 0.35, 0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0],
    "tilt": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0],
    "illumination": [-1.0, -0.5, 0.0, 0.5, 1.0],
    "blur": [0.0, 1.0, 2.0, 3.0, 4.0, 6.0],
    "noise": [0.0, 5.0, 10.0, 20.0, 30.0, 40.0],
}
DEFAULT_LONGITUDES = (0.0, 45.0, 90.0, 135.0)
MMA_KEYS = (1, 3, 5)
CORRECT_PX = 3
HOMOGRAPHY_PX = 5.0
CACHE_VERSION = 1   # bump when the rendering or the scoring of a pair changes


# ------------------------------------------------------------------------------------------ pairs
def _rot(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _affine_h(L: np.ndarray, src_size, out_size=None) -> tuple[np.ndarray, tuple[int, int]]:
    """H (3, 3) applying the linear map L about the centre of an image of src_size (W, H), translated so
    that the whole image fits a canvas (out_size None) or centred in a canvas of out_size."""
    w, h = src_size
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    mapped = (corners - c) @ L.T
    if out_size is None:
        ext = mapped.max(0) - mapped.min(0)
        out_size = (max(8, int(math.ceil(ext[0] - 1e-6))), max(8, int(math.ceil(ext[1] - 1e-6))))
    co = np.array([(out_size[0] - 1) / 2, (out_size[1] - 1) / 2])
    H = np.eye(3)
    H[:2, :2] = L
    H[:2, 2] = co - L @ c
    return H, (int(out_size[0]), int(out_size[1]))


def render_affine(image: np.ndarray, H: np.ndarray, out_size, max_factor: int = 16) -> np.ndarray:
    """Image of out_size (W, H) whose pixel centre q shows `image` at H^-1(q), H affine (pixel centres).

    Without minification (singular values of H's linear part >= 1): bilinear warp. Otherwise rendered
    f-times supersampled (bilinear) then area-averaged, f = clip(ceil(2 / smallest singular value), 2,
    max_factor), so minification does not alias. Outside: black.
    """
    sv = np.linalg.svd(H[:2, :2], compute_uv=False)
    w, h = out_size
    if sv.min() >= 1 - 1e-9:  # no minification: plain bilinear (exact for the identity and 90-degree turns)
        return cv2.warpAffine(image, H[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
    f = int(np.clip(math.ceil(2.0 / max(sv.min(), 1e-6) - 1e-9), 2, max_factor))
    S = np.array([[f, 0, (f - 1) / 2], [0, f, (f - 1) / 2], [0, 0, 1]], np.float64)
    big = cv2.warpAffine(image, (S @ H)[:2], (w * f, h * f), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)


def make_pair(image: np.ndarray, axis: str, value: float, longitude: float = 0.0,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image B uint8, H (3, 3) float64 mapping A pixels to B pixels) for one step of one axis."""
    h, w = image.shape[:2]
    if axis == "rotation":
        H, size = _affine_h(_rot(value), (w, h))
        return render_affine(image, H, size), H
    if axis == "scale":
        s = float(value)
        if s <= 0:
            raise ValueError(f"scale step must be > 0, got {value}")
        size = (max(8, int(round(w * s))), max(8, int(round(h * s))))
        H, size = _affine_h(np.eye(2) * s, (w, h), size)
        return render_affine(image, H, size), H
    if axis == "tilt":
        t = float(value)
        if t < 1:
            raise ValueError(f"tilt step must be >= 1, got {value}")
        L = _rot(longitude) @ np.diag([1.0 / t, 1.0]) @ _rot(-longitude)
        H, size = _affine_h(L, (w, h))
        return render_affine(image, H, size), H
    H = np.eye(3)
    x = image.astype(np.float64)
    if axis == "illumination":
        s = float(value)
        gamma, contrast = 3.0 ** s, 1.0 - 0.6 * abs(s)
        x = 255.0 * (x / 255.0) ** gamma
        x = 127.5 + (x - 127.5) * contrast
    elif axis == "blur":
        if value > 0:
            x = cv2.GaussianBlur(x, (0, 0), sigmaX=float(value), sigmaY=float(value),
                                 borderType=cv2.BORDER_REFLECT_101)
    elif axis == "noise":
        if value > 0:
            x = x + np.random.default_rng(seed).normal(0.0, float(value), size=x.shape)
    else:
        raise ValueError(f"unknown axis {axis!r}; use one of {AXES}")
    return np.clip(np.round(x), 0, 255).astype(np.uint8), H


# ------------------------------------------------------------------------------------------ metrics
def covisible(keypoints: np.ndarray, H: np.ndarray, other_size, border: float) -> np.ndarray:
    """Boolean (N,): keypoints (N, 2) whose image under H lies inside an image of other_size (W, H),
    at least `border` px from its edge."""
    p = warp_points(keypoints, H)
    w, h = other_size
    with np.errstate(invalid="ignore"):
        return (np.isfinite(p).all(1) & (p[:, 0] >= border) & (p[:, 1] >= border)
                & (p[:, 0] <= w - 1 - border) & (p[:, 1] <= h - 1 - border))


def evaluate_pair(fa: Features, fb: Features, H: np.ndarray, border: float = 4.0) -> dict:
    """Measures of one pair (A features, B features, H: A -> B). Returns a JSON-able dict:
    mma {"1","3","5"}, n_correct (<= 3 px), n_matches, n_a, n_b (covisible keypoints), h_success (0/1),
    corner_error (None when no homography was found)."""
    ka = covisible(fa.keypoints, H, fb.image_size, border)
    kb = covisible(fb.keypoints, np.linalg.inv(H), fa.image_size, border)
    fa, fb = fa.select(ka), fb.select(kb)
    matches = metrics.mutual_nn_matches(fa.descriptors, fb.descriptors) if len(fa) and len(fb) else \
        np.zeros((0, 2), np.int64)
    dist = metrics.reprojection_distances(fa.keypoints, fb.keypoints, matches, H)
    acc = metrics.matching_accuracy(dist, MMA_KEYS)
    H_est, _ = estimate_homography(fa.keypoints[matches[:, 0]], fb.keypoints[matches[:, 1]])
    err = corner_error(H, H_est, fa.image_size)
    return {"mma": {str(t): float(a) for t, a in zip(MMA_KEYS, acc)},
            "n_correct": int(metrics.correct_counts(dist, (CORRECT_PX,))[0]), "n_matches": int(len(matches)),
            "n_a": int(len(fa)), "n_b": int(len(fb)),
            "h_success": float(math.isfinite(err) and err <= HOMOGRAPHY_PX),
            "corner_error": float(err) if math.isfinite(err) else None}


def evaluate_pair_matches(pm, H: np.ndarray, size_a, size_b, border: float = 4.0) -> dict:
    """`evaluate_pair` for a detector-free matcher's `PairMatches` (A -> B, H: A -> B): the matches whose
    two points are covisible (as the keypoints of `evaluate_pair`) are scored; n_a = n_b = their count."""
    keep = covisible(pm.keypoints0, H, size_b, border) & covisible(pm.keypoints1, np.linalg.inv(H), size_a, border)
    k0, k1 = pm.keypoints0[keep], pm.keypoints1[keep]
    dist = np.linalg.norm(warp_points(k0.astype(np.float64), H) - k1, axis=1) if len(k0) else np.zeros(0)
    acc = metrics.matching_accuracy(dist, MMA_KEYS)
    H_est, _ = estimate_homography(k0, k1)
    err = corner_error(H, H_est, size_a)
    return {"mma": {str(t): float(a) for t, a in zip(MMA_KEYS, acc)},
            "n_correct": int(metrics.correct_counts(dist, (CORRECT_PX,))[0]), "n_matches": int(len(k0)),
            "n_a": int(len(k0)), "n_b": int(len(k0)),
            "h_success": float(math.isfinite(err) and err <= HOMOGRAPHY_PX),
            "corner_error": float(err) if math.isfinite(err) else None}


def _mean_step(value, pairs: list[dict]) -> dict:
    out = {"value": float(value),
           "mma": {k: float(np.mean([p["mma"][k] for p in pairs])) for k in pairs[0]["mma"]},
           "n_correct": int(round(float(np.mean([p["n_correct"] for p in pairs])))),
           "n_matches": float(np.mean([p["n_matches"] for p in pairs])),
           "h_success": float(np.mean([p["h_success"] for p in pairs])),
           "n_pairs": len(pairs)}
    return out


# ------------------------------------------------------------------------------------------ runner
def photo_paths(photos=None, max_photos: Optional[int] = 3) -> list[Path]:
    """The files of the sweep photos (see `load_photos`), in order."""
    from ..datasets.synth import list_photos

    paths = list_photos(photos)
    if not paths:
        raise FileNotFoundError(f"no photos found in {photos or 'the scikit-image data folder'}; give --photos DIR")
    return paths[:max_photos] if max_photos is not None else paths


def load_photos(photos=None, size: int = 400, max_photos: Optional[int] = 3) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 image scaled so that max(W, H) = size) of the sweep photos, sorted as listed."""
    from ..io.images import as_image_array

    paths = photo_paths(photos, max_photos)
    out = []
    for p in paths:
        img = as_image_array(p, "rgb")
        h, w = img.shape[:2]
        f = size / max(h, w)
        if f != 1:
            img = cv2.resize(img, (max(8, round(w * f)), max(8, round(h * f))),
                             interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        out.append((Path(p).stem, img))
    return out


def axis_identity(spec: str, model, axis: str, steps: Sequence[float], settings: dict,
                  fingerprint: str) -> dict:
    """What determines the results of one model along one axis (the cache identity): the spec, the model's
    name, config and config hash, the axis and its steps, the settings that act on it, the photos."""
    acting = {k: v for k, v in settings.items() if k not in ("photos", "steps", "longitudes")}
    if axis == "tilt":
        acting["longitudes"] = settings["longitudes"]
    return {"method": spec, "model": model.name, "config": model.conf, "config_hash": model.conf_hash,
            "axis": axis, "steps": [float(v) for v in steps], "settings": acting,
            "photos": settings["photos"], "photos_fingerprint": fingerprint, "cache_version": CACHE_VERSION}


def run_sweeps(models: Sequence[str], photos=None, axes: Sequence[str] = AXES, steps: Optional[dict] = None,
               size: int = 400, max_photos: Optional[int] = 3, longitudes: Sequence[float] = DEFAULT_LONGITUDES,
               top_k: Optional[int] = 2000, border: float = 4.0, extractors: Optional[dict] = None,
               progress: bool = True, cache_dir=None) -> dict:
    """Run the sweeps. models: SPECs ('NAME' or 'NAME:key=value,...'); `extractors` may give ready
    extractor objects by SPEC. cache_dir: a folder of cached results per (model, axis) (see the module
    docstring; None = no cache). Returns {"settings": ..., "results": {spec: {axis: [step dicts]}},
    "per_pair": {spec: {axis: [[pair dicts of the step]]}}}."""
    from tqdm import tqdm

    from ..config import conf_hash
    from ..registry import load_extractor, load_matcher, parse_model_spec
    from .cache import cache_path, digest_files, load_entry, write_entry
    from .hpatches import select_top_k

    steps = {a: list((steps or {}).get(a, DEFAULT_STEPS[a])) for a in axes}
    for a in axes:
        if a not in AXES:
            raise ValueError(f"unknown axis {a!r}; use some of {AXES}")
    images = load_photos(photos, size, max_photos)
    settings = {"photos": [n for n, _ in images], "size": size, "steps": steps, "longitudes": list(longitudes),
                "top_k": top_k, "border": border, "correct_px": CORRECT_PX, "homography_px": HOMOGRAPHY_PX}
    fingerprint = digest_files(photo_paths(photos, max_photos)) if cache_dir is not None else None
    # Pairs are rendered once and shared by all models.
    jobs = []
    for pi, (pname, img) in enumerate(images):
        for a in axes:
            for si, v in enumerate(steps[a]):
                for lon in (longitudes if a == "tilt" else (0.0,)):
                    jobs.append((pi, a, si, v, lon))
    from ..dense import is_detector_free

    results, per_pair = {}, {}
    for spec in models:
        name, conf = parse_model_spec(spec)
        dense = not (extractors and spec in extractors) and is_detector_free(name)
        if extractors and spec in extractors:
            ext = extractors[spec]
        elif dense:   # LoFTR family, XFeat*: the pair's matches are scored directly (top_k does not apply)
            ext = load_matcher(name, **conf)
        else:
            ext = load_extractor(name, **conf)
        feats_a = {}
        pairs: dict = {a: [[] for _ in steps[a]] for a in axes}
        entries = {}   # axis -> (identity, cache file) of the axes still to compute
        if cache_dir is not None:
            for a in axes:
                identity = axis_identity(spec, ext, a, steps[a], settings, fingerprint)
                path = cache_path(Path(cache_dir), f"{spec}__{a}", conf_hash("invariance", identity), fingerprint)
                cached = load_entry(path, identity)
                if cached is not None:
                    pairs[a] = cached["pairs"]
                    logger.info("invariance: %s %s from %s", spec, a, path)
                else:
                    entries[a] = (identity, path)
        todo = [j for j in jobs if cache_dir is None or j[1] in entries]
        for pi, a, si, v, lon in tqdm(todo, desc=spec, disable=None if progress else True):
            img = images[pi][1]
            if dense:
                img_b, H = make_pair(img, a, v, lon, seed=1000 * pi + si)
                pm = ext.match_images(img, img_b)
                size_a, size_b = (img.shape[1], img.shape[0]), (img_b.shape[1], img_b.shape[0])
                pairs[a][si].append(evaluate_pair_matches(pm, H, size_a, size_b, border))
                continue
            if pi not in feats_a:
                feats_a[pi] = select_top_k(ext.extract(img), top_k)
            img_b, H = make_pair(img, a, v, lon, seed=1000 * pi + si)
            fb = select_top_k(ext.extract(img_b), top_k)
            pairs[a][si].append(evaluate_pair(feats_a[pi], fb, H, border))
        for a, (identity, path) in entries.items():
            write_entry(path, identity, pairs=pairs[a])
        results[spec] = {a: [_mean_step(v, pairs[a][si]) for si, v in enumerate(steps[a])] for a in axes}
        per_pair[spec] = pairs
        logger.info("invariance: %s done", spec)
    return {"settings": settings, "results": results, "per_pair": per_pair}


AXIS_LABELS = {"rotation": "rotation (degrees)", "scale": "scale factor (log axis)", "tilt": "tilt t (log axis)",
               "illumination": "illumination s (gamma 3^s, contrast 1 - 0.6|s|)", "blur": "blur sigma (px)",
               "noise": "noise sigma (grey levels)"}


def plot_axis(results: dict, axis: str, path) -> Path:
    """One PNG for `axis`: MMA@3 and the number of correct matches vs the step, one line per model."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..io.atomic import atomic_path

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.5))
    for spec, per_axis in results.items():
        rows = per_axis.get(axis)
        if not rows:
            continue
        xs = [r["value"] for r in rows]
        ax1.plot(xs, [r["mma"]["3"] for r in rows], marker="o", label=spec)
        ax2.plot(xs, [r["n_correct"] for r in rows], marker="o", label=spec)
        ax3.plot(xs, [r.get("h_success", 0.0) for r in rows], marker="o", label=spec)
    for ax, title in ((ax1, f"MMA@{CORRECT_PX}px"), (ax2, f"correct matches (<= {CORRECT_PX} px)"),
                      (ax3, f"homography success (corner error <= {HOMOGRAPHY_PX:g} px)")):
        ax.set_title(title)
        ax.set_xlabel(AXIS_LABELS[axis])
        ax.grid(alpha=0.3)
        if axis in ("scale", "tilt"):
            ax.set_xscale("log", base=2)
    ax1.set_ylim(0, 1)
    ax3.set_ylim(-0.02, 1.02)
    ax1.legend(fontsize=8)
    fig.suptitle(f"invariance: {axis}")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def write_outputs(run: dict, out_dir, plot: bool = True) -> dict:
    """Write results.json (spec -> axis -> steps, plus settings), results.csv, per_pair.json and
    <axis>.png into out_dir. Returns {kind: path}."""
    from ..io.atomic import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    data = dict(run["results"])
    write_text_atomic(out / "results.json", json.dumps(data, indent=1))
    paths["json"] = out / "results.json"
    write_text_atomic(out / "settings.json", json.dumps(run["settings"], indent=1))
    write_text_atomic(out / "per_pair.json", json.dumps(run["per_pair"]))
    rows = [["model", "axis", "value", "mma1", "mma3", "mma5", "n_correct", "n_matches", "h_success", "n_pairs"]]
    for spec, per_axis in data.items():
        for axis, steps in per_axis.items():
            for r in steps:
                rows.append([spec, axis, r["value"], f"{r['mma']['1']:.4f}", f"{r['mma']['3']:.4f}",
                             f"{r['mma']['5']:.4f}", r["n_correct"], f"{r['n_matches']:.1f}",
                             f"{r['h_success']:.3f}", r["n_pairs"]])
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    write_text_atomic(out / "results.csv", buf.getvalue())
    paths["csv"] = out / "results.csv"
    if plot:
        axes = sorted({a for per_axis in data.values() for a in per_axis}, key=AXES.index)
        for a in axes:
            paths[a] = plot_axis(data, a, out / f"{a}.png")
    return paths
