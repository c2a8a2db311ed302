"""`affine_sim`: affine simulation around any extractor (ASIFT / IMAS style).

    load_extractor('affine_sim', base='sift', tilts=[1, 2, 4])

The image is viewed under simulated camera tilts t and longitudes phi (ASIFT, Morel & Yu 2009): rotate
by phi, blur along x with a Gaussian of sigma 0.8 * sqrt(t^2 - 1) (anti-aliasing), subsample x by 1/t.
For t = 1 only phi = 0 is used; for t > 1, phi = 0, b/t, 2b/t, ... < 180 degrees with b = `phi_step`
(ASIFT: 72). The base extractor runs on every view; keypoints are mapped back to the original image
through the inverse of the view's affine map (scales by sqrt(|det|), orientations through the linear
part). Points near the border of a view's valid region (the black corners of a rotated canvas) are
dropped. Duplicates, keypoints of different views within `dedup_radius` pixels whose descriptors have a
cosine similarity >= `dedup_similarity`, keep only the highest score, so the union holds one copy of
each repeated point but keeps the descriptors that differ between views (what makes tilted matching
work). Any matcher then matches the union; `match_views` instead matches every pair of views and
keeps the best view pairs (IMAS).
"""
from __future__ import annotations

import logging
from typing import Optional

import cv2
import numpy as np

from ..config import check_range, short_repr
from ..registry import ConfigError, load_extractor, parse_model_spec
from ..types import Features, Matches
from .base import Extractor

logger = logging.getLogger(__name__)

MAX_TILT = 32.0
MAX_VIEWS = 1000


def simulated_views(tilts, phi_step: float = 72.0) -> list[tuple[float, float]]:
    """(t, phi degrees) of the ASIFT sampling: t = 1 with phi = 0; for t > 1, phi = k * phi_step / t < 180."""
    check_range("affine_sim", "phi_step", phi_step, 0, 180, low_open=True)
    if isinstance(tilts, (str, bytes)) or not hasattr(tilts, "__len__") or not len(tilts):
        raise ConfigError(f"affine_sim: tilts must be a non-empty list of numbers >= 1, got {short_repr(tilts)}")
    views = []
    for t in tilts:
        # ASIFT uses t <= 4 * sqrt(2); beyond 32 a view is a few pixels wide and the views never end.
        check_range("affine_sim", "tilts", t, 1, MAX_TILT)
        t = float(t)
        if t == 1:
            views.append((1.0, 0.0))
            continue
        step = phi_step / t
        count = int(np.ceil(180.0 / step - 1e-9))
        if len(views) + count > MAX_VIEWS:  # checked before the list is built
            raise ConfigError(f"affine_sim: tilts {short_repr(tilts)} with phi_step={phi_step} make more than "
                              f"{MAX_VIEWS} views; use fewer or smaller tilts, or a larger phi_step")
        views += [(t, k * step) for k in range(count)]
    return views


def simulate_view(image: np.ndarray, t: float, phi_deg: float, blur: float = 0.8):
    """The view of `image` (H, W[, C]) uint8 under tilt t and longitude phi.

    Returns (view uint8, valid mask uint8 (h, w), A (2, 3)) with A mapping original pixel centres to view
    pixel centres: the rotation by phi about the image centre onto a canvas holding the whole rotated
    image, then x -> (x + 0.5) / t - 0.5.
    """
    h, w = image.shape[:2]
    a = np.deg2rad(phi_deg)
    c, s = np.cos(a), np.sin(a)
    R = np.array([[c, -s], [s, c]])
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)
    rc = corners @ R.T
    lo = np.floor(rc.min(0))
    size = np.ceil(rc.max(0) - lo).astype(int) + 1
    A = np.concatenate([R, -lo[:, None]], 1)
    view = cv2.warpAffine(image, A, (int(size[0]), int(size[1])), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = cv2.warpAffine(np.full((h, w), 255, np.uint8), A, (int(size[0]), int(size[1])),
                          flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if t > 1:
        sigma = blur * np.sqrt(t * t - 1)
        radius = int(np.ceil(4 * sigma))
        kernel = cv2.getGaussianKernel(2 * radius + 1, sigma)
        view = cv2.sepFilter2D(view, -1, kernel, np.ones((1, 1)), borderType=cv2.BORDER_REPLICATE)
        nw = max(1, int(round(size[0] / t)))
        view = cv2.resize(view, (nw, int(size[1])), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (nw, int(size[1])), interpolation=cv2.INTER_NEAREST)
        fx = nw / size[0]
        S = np.array([[fx, 0, 0.5 * fx - 0.5], [0, 1, 0]])
        A = S @ np.vstack([A, [0, 0, 1]])
    return view, mask, A


def _dedup(kpts: np.ndarray, scores: np.ndarray, desc: np.ndarray, views: np.ndarray, radius: float,
           similarity: Optional[float]) -> np.ndarray:
    """Indices kept, best score first: a point is dropped when a better-scoring point of ANOTHER view lies
    within `radius` px and (similarity None or) their descriptors' cosine similarity >= `similarity`."""
    order = np.argsort(-scores, kind="stable")
    if radius <= 0 or len(order) == 0:
        return order
    cell = {}
    keep = []
    r2 = radius * radius
    for i in order.tolist():
        cx, cy = int(np.floor(kpts[i, 0] / radius)), int(np.floor(kpts[i, 1] / radius))
        dup = False
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in cell.get((cx + dx, cy + dy), ()):
                    if views[j] == views[i]:
                        continue
                    if ((kpts[i] - kpts[j]) ** 2).sum() <= r2 and (
                            similarity is None or float(desc[i] @ desc[j]) >= similarity):
                        dup = True
                        break
                if dup:
                    break
            if dup:
                break
        if not dup:
            keep.append(i)
            cell.setdefault((cx, cy), []).append(i)
    return np.asarray(keep, np.int64)


class AffineSim(Extractor):
    """Run `base` on ASIFT-simulated views and map everything back.

    Config:
      base:             registered extractor as NAME or NAME:key=value,... (default 'sift').
      base_conf:        dict of config for the base extractor.
      tilts:            list of tilts t >= 1 (default [1, 2, 4]; ASIFT uses 1, sqrt2, 2, ..., 4 sqrt2).
      phi_step:         longitude step numerator b in degrees (phi step b / t; ASIFT 72).
      border:           drop keypoints closer than this (view pixels) to the view's invalid region (5).
      dedup_radius:     pixels (1.0); 0 keeps every point of every view.
      dedup_similarity: cosine similarity for duplicates (0.9); None = position only.
      max_keypoints:    None or keep the best-scoring K after the union.
    Output: Features of the union in original pixels; `scales` and `orientations` when the base has them.
    """

    name = "affine_sim"
    input_mode = "rgb"
    default_conf = {"base": "sift", "base_conf": {}, "tilts": [1, 2, 4], "phi_step": 72.0, "border": 5,
                    "dedup_radius": 1.0, "dedup_similarity": 0.9, "max_keypoints": None}

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        from ..registry import get_class

        name, base_conf = parse_model_spec(str(conf.get("base", cls.default_conf["base"])))
        base_conf.update(conf.get("base_conf") or {})
        return get_class("extractor", name).weight_specs(base_conf)

    def __init__(self, **conf):
        super().__init__(**conf)
        name, base_conf = parse_model_spec(str(self.conf["base"]))
        base_conf.update(self.conf["base_conf"] or {})
        base_conf.setdefault("device", self.conf["device"])
        self.base = load_extractor(name, **base_conf)
        self.views = simulated_views(self.conf["tilts"], float(self.conf["phi_step"]))

    def _base_input(self, image: np.ndarray) -> np.ndarray:
        if self.base.input_mode == "gray" and image.ndim == 3:
            return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return image

    def extract_views(self, image: np.ndarray) -> list[Features]:
        """Per view, the base extractor's Features mapped back to `image` pixels (border points dropped)."""
        img = self._base_input(image)
        h, w = img.shape[:2]
        out = []
        k = int(self.conf["border"])
        for t, phi in self.views:
            view, mask, A = simulate_view(img, t, phi)
            feats = self.base.extract(view)
            if k > 0:
                eroded = cv2.erode(mask, np.ones((2 * k + 1, 2 * k + 1), np.uint8), borderType=cv2.BORDER_CONSTANT,
                                   borderValue=0)
                ij = np.round(feats.keypoints).astype(int)
                ij[:, 0] = ij[:, 0].clip(0, mask.shape[1] - 1)
                ij[:, 1] = ij[:, 1].clip(0, mask.shape[0] - 1)
                feats = feats.select(eroded[ij[:, 1], ij[:, 0]] > 0)
            A3 = np.vstack([A, [0, 0, 1]])
            Ainv = np.linalg.inv(A3)[:2]
            L = Ainv[:, :2]
            pts = feats.keypoints.astype(np.float64) @ L.T + Ainv[:, 2]
            inside = (pts[:, 0] >= -0.5) & (pts[:, 0] <= w - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] <= h - 0.5)
            feats = feats.select(inside)
            pts = pts[inside]
            scales = None if feats.scales is None else feats.scales * np.sqrt(abs(np.linalg.det(L)))
            ori = None
            if feats.orientations is not None:
                d = np.stack([np.cos(feats.orientations), np.sin(feats.orientations)], 1) @ L.T
                ori = np.mod(np.arctan2(d[:, 1], d[:, 0]), 2 * np.pi)
            out.append(Features(pts, feats.scores, feats.descriptors, (w, h), scales=scales, orientations=ori))
        return out

    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        per_view = self.extract_views(image)
        allf = [f for f in per_view]
        kpts = np.concatenate([f.keypoints for f in allf])
        scores = np.concatenate([f.scores for f in allf])
        desc = np.concatenate([f.descriptors for f in allf])
        views = np.concatenate([np.full(len(f), i) for i, f in enumerate(allf)])
        has_s = all(f.scales is not None for f in allf)
        has_o = all(f.orientations is not None for f in allf)
        keep = _dedup(kpts, scores, desc.astype(np.float32), views, float(self.conf["dedup_radius"]),
                      self.conf["dedup_similarity"])
        if self.conf["max_keypoints"] is not None:
            keep = keep[: int(self.conf["max_keypoints"])]
        return Features(kpts[keep], scores[keep], desc[keep], (w, h),
                        scales=np.concatenate([f.scales for f in allf])[keep] if has_s else None,
                        orientations=np.concatenate([f.orientations for f in allf])[keep] if has_o else None)


def match_views(views0: list[Features], views1: list[Features], matcher, best: Optional[int] = 5) -> Matches:
    """IMAS-style matching: match every pair of simulated views, keep the `best` view pairs (most matches;
    None = all), and return their matches as indices into the concatenations of `views0` and `views1`
    (duplicate index pairs removed).
    """
    off0 = np.cumsum([0] + [len(f) for f in views0])
    off1 = np.cumsum([0] + [len(f) for f in views1])
    results = []
    for i, f0 in enumerate(views0):
        for j, f1 in enumerate(views1):
            if len(f0) == 0 or len(f1) == 0:
                continue
            m = matcher.match(f0, f1)
            results.append((len(m), i, j, m))
    results.sort(key=lambda r: -r[0])
    chosen = results if best is None else results[:best]
    idx = [m.indices + [off0[i], off1[j]] for _, i, j, m in chosen]
    sc = [m.scores for _, _, _, m in chosen]
    if not idx:
        return Matches(np.zeros((0, 2), np.int64), np.zeros(0, np.float32))
    idx, sc = np.concatenate(idx), np.concatenate(sc)
    _, first = np.unique(idx, axis=0, return_index=True)
    first = np.sort(first)
    return Matches(idx[first], sc[first])
