"""Image retrieval with local features: descriptor voting over a collection, then geometric re-ranking.

    from localfeat.retrieval import build_index, Retriever
    build_index("photos/", "index/", model="aliked", conf={"resize_max": 640})
    results = Retriever("index/").query("photos/a.jpg", top=5)       # [RetrievalResult(image, score, inliers, votes)]

An index is a folder: features.h5 (the collection's features, `localfeat.io.h5.FeatureStore`) and index.json
(format, model name and config, image root, image names). Any registered extractor works.

Query:
 1. voting: every query descriptor finds its `knn` nearest database descriptors (cosine similarity, over the
    whole collection, `block` database rows at a time, so memory is O(Nq x block) whatever the collection size);
    each (query descriptor, image) pair among those neighbours is one vote for the image (an image gets at
    most one vote per query descriptor);
 2. verification: the `shortlist` most voted images are matched to the query (mutual nearest neighbours,
    optional ratio test) and the matches filtered by RANSAC (fundamental matrix by default, or homography);
    the number of inliers re-ranks them (fewer than `min_inliers` counts as 0);
 3. ranking: by (inliers, votes); score = inliers + votes / (1 + max votes), so the integer part is the
    inlier count and the fraction breaks ties by votes. Images outside the shortlist follow with 0 inliers.
The query image itself (same file as an indexed image) is excluded.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from .io.atomic import write_text_atomic
from .io.h5 import FeatureStore
from .io.images import list_images, read_image
from .types import Features

logger = logging.getLogger(__name__)

INDEX_FORMAT = "localfeat-retrieval-index-1"


@dataclass
class RetrievalResult:
    """One ranked image: name (relative to the index root), score (see module docstring), inliers, votes."""

    image: str
    score: float
    inliers: int
    votes: int

    def to_json(self) -> dict:
        return {"image": self.image, "score": round(float(self.score), 6), "inliers": int(self.inliers)}


def build_index(images, output, model: str = "aliked", conf: Optional[dict] = None, overwrite: bool = False,
                extractor=None) -> Path:
    """Extract `model` features of IMAGES (folder, glob or list file, see `list_images`) into the index
    folder `output` (features.h5 + index.json). Resumable: images already in features.h5 are skipped."""
    from .pipeline import extract

    output = Path(output)
    root, names = list_images(images)
    output.mkdir(parents=True, exist_ok=True)
    meta_path = output / "index.json"
    if meta_path.exists() and not overwrite:
        old = json.loads(meta_path.read_text())
        if old.get("model") != model or old.get("conf") != (conf or {}):
            raise ValueError(f"{output} already holds an index of {old.get('model')} {old.get('conf')}; "
                             f"choose another folder or pass overwrite")
    report = extract(images, output / "features.h5", model=model, conf=conf or {}, overwrite=overwrite,
                     extractor=extractor)
    logger.info("retrieval index %s: %s", output, report.summary())
    store = FeatureStore(output / "features.h5", mode="r")
    done = set(store.names())
    store.close()
    kept = [n for n in names if n in done]
    meta = {"format": INDEX_FORMAT, "model": model, "conf": conf or {}, "root": str(Path(root).resolve()),
            "names": kept}
    write_text_atomic(meta_path, json.dumps(meta, indent=1))
    return output


def vote(query: torch.Tensor, database: torch.Tensor, owner: torch.Tensor, n_images: int, knn: int = 5,
         block: int = 65536, exclude: Optional[int] = None) -> np.ndarray:
    """Votes per image, int64 (n_images,).

    query (Nq, D) and database (Nd, D) L2-normalised; owner (Nd,) int64 image index of each database row.
    Each query row votes once for every distinct image among its `knn` most similar database rows
    (rows of image `exclude` left out). The database is scanned `block` rows at a time.
    """
    nq = len(query)
    if nq == 0 or len(database) == 0:
        return np.zeros(n_images, np.int64)
    q = query.float()
    best_s = torch.full((nq, 0), -float("inf"), device=q.device)
    best_i = torch.zeros((nq, 0), dtype=torch.long, device=q.device)
    with torch.inference_mode():
        for start in range(0, len(database), block):
            d = database[start:start + block].to(q.device).float()
            sim = q @ d.t()
            if exclude is not None:
                sim[:, owner[start:start + block].to(q.device) == exclude] = -float("inf")
            k = min(knn, sim.shape[1])
            s, i = sim.topk(k, dim=1)
            best_s = torch.cat([best_s, s], 1)
            best_i = torch.cat([best_i, i + start], 1)
            if best_s.shape[1] > knn:
                best_s, sel = best_s.topk(knn, dim=1)
                best_i = best_i.gather(1, sel)
        valid = torch.isfinite(best_s)
        img = owner.to(q.device)[best_i]
        img = torch.where(valid, img, torch.full_like(img, -1))
        # one vote per (query row, image): unique pairs via a sort of the (row, image) codes
        codes = torch.arange(nq, device=q.device)[:, None] * (n_images + 1) + (img + 1)
        codes = torch.unique(codes[valid])
        voted = codes % (n_images + 1) - 1
        return torch.bincount(voted, minlength=n_images).cpu().numpy().astype(np.int64)


def verify(f0: Features, f1: Features, method: str = "fundamental", threshold: float = 3.0,
           ratio: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest-neighbour matches (M, 2) of two `Features` and their RANSAC inlier mask (M,) bool.

    method 'fundamental' (cv2.findFundamentalMat, USAC MAGSAC, >= 8 matches) or 'homography'
    (`geometry.estimate_homography`, >= 4); threshold in pixels."""
    from .geometry import RansacParams, estimate_homography
    from .matchers.nearest_neighbor import match_nearest_neighbours

    if method not in ("fundamental", "homography"):
        raise ValueError(f"verification method must be 'fundamental' or 'homography', got {method!r}")
    m, _ = match_nearest_neighbours(f0.descriptors.astype(np.float32), f1.descriptors.astype(np.float32),
                                    mutual=True, ratio=ratio)
    inl = np.zeros(len(m), bool)
    if method == "homography":
        if len(m) >= 4:
            _, inl = estimate_homography(f0.keypoints[m[:, 0]], f1.keypoints[m[:, 1]],
                                         RansacParams(method="opencv-usac", threshold=threshold))
        return m, inl
    if len(m) >= 8:
        cv2.setRNGSeed(0)
        _, mask = cv2.findFundamentalMat(f0.keypoints[m[:, 0]].astype(np.float64),
                                         f1.keypoints[m[:, 1]].astype(np.float64), cv2.USAC_MAGSAC,
                                         float(threshold), 0.999, 10000)
        if mask is not None:
            inl = mask.ravel().astype(bool)
    return m, inl


class Retriever:
    """Queries against an index folder (see `build_index`). The collection's descriptors are held once,
    stacked (float16 when `half`, to halve the memory; similarities are computed in float32)."""

    def __init__(self, index, device: Optional[str] = None, half: bool = False, extractor=None):
        from .ops import resolve_device
        from .registry import load_extractor

        self.index = Path(index)
        meta_path = self.index / "index.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} does not exist: {self.index} is not a retrieval index "
                                    f"(build one with `localfeat retrieve index IMAGES -o {self.index}`)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{meta_path} is not a localfeat retrieval index (format {self.meta.get('format')})")
        self.names: list[str] = list(self.meta["names"])
        self.root = Path(self.meta["root"])
        self.device = resolve_device(device)
        self.store = FeatureStore(self.index / "features.h5", mode="r")
        descs, owner, self.sizes = [], [], []
        for i, n in enumerate(self.names):
            d = self.store.get(n).descriptors
            descs.append(torch.from_numpy(np.asarray(d, np.float32)).to(torch.float16 if half else torch.float32))
            owner.append(torch.full((len(d),), i, dtype=torch.long))
            self.sizes.append(len(d))
        self.database = torch.cat(descs).to(self.device) if descs else torch.zeros((0, 1))
        self.owner = torch.cat(owner).to(self.device) if owner else torch.zeros(0, dtype=torch.long)
        self._extractor = extractor
        self.last_matches: dict = {}
        self._load_extractor = lambda: load_extractor(self.meta["model"], **self.meta["conf"])

    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor = self._load_extractor()
        return self._extractor

    def features(self, name: str) -> Features:
        return self.store.get(name)

    def index_of(self, image) -> Optional[int]:
        """Index of `image` (a path) in the collection when it is one of the indexed files, else None."""
        if not isinstance(image, (str, os.PathLike)):
            return None
        p = Path(image).resolve()
        for i, n in enumerate(self.names):
            if (self.root / n).resolve() == p:
                return i
        return None

    def query(self, image, top: Optional[int] = 10, shortlist: int = 20, knn: int = 5, block: int = 65536,
              method: str = "fundamental", threshold: float = 3.0, ratio: Optional[float] = None,
              min_inliers: int = 15, features: Optional[Features] = None, exclude_self: bool = True) -> list:
        """Ranked `RetrievalResult`s (best first, at most `top`; None = all) for `image` (path or uint8 array).

        features: the query's features when already extracted with the index's model (else extracted)."""
        q = features if features is not None else self.extractor.extract(image)
        self_idx = self.index_of(image) if exclude_self else None
        n = len(self.names)
        votes = vote(torch.from_numpy(np.asarray(q.descriptors, np.float32)).to(self.device), self.database,
                     self.owner, n, knn=knn, block=block, exclude=self_idx)
        order = [i for i in np.argsort(-votes, kind="stable").tolist() if i != self_idx]
        inliers = np.zeros(n, np.int64)
        self.last_matches: dict = {}
        for i in order[:shortlist]:
            m, inl = verify(q, self.features(self.names[i]), method, threshold, ratio)
            inliers[i] = int(inl.sum()) if inl.sum() >= min_inliers else 0
            self.last_matches[self.names[i]] = (m, inl)
        vmax = max(1, int(votes.max()) if n else 1)
        ranked = sorted(order, key=lambda i: (-inliers[i], -votes[i], i))
        results = [RetrievalResult(self.names[i], float(inliers[i] + votes[i] / (1 + vmax)), int(inliers[i]),
                                   int(votes[i])) for i in ranked]
        return results if top is None else results[:top]

    def picture(self, image, results: Sequence[RetrievalResult], output, count: int = 3,
                height: int = 360, features: Optional[Features] = None) -> Path:
        """PNG of the query beside each of its `count` best results (one row each) with the inlier lines
        (green) of the verification (those of the last `query` when available); images scaled to `height`
        pixels. features: the query's features (else extracted)."""
        from .viz import draw_matches, save_png

        q_img = read_image(image) if isinstance(image, (str, os.PathLike)) else np.asarray(image)
        q = features if features is not None else self.extractor.extract(q_img)
        rows = []
        for r in list(results)[:count]:
            c_img = read_image(self.root / r.image)
            f1 = self.features(r.image)
            m, inl = self.last_matches[r.image] if r.image in self.last_matches else verify(q, f1)
            s0, s1 = height / q_img.shape[0], height / c_img.shape[0]
            a = cv2.resize(q_img, (round(q_img.shape[1] * s0), height), interpolation=cv2.INTER_AREA)
            b = cv2.resize(c_img, (round(c_img.shape[1] * s1), height), interpolation=cv2.INTER_AREA)
            k0 = (q.keypoints + 0.5) * np.float32([a.shape[1] / q_img.shape[1], s0]) - 0.5
            k1 = (f1.keypoints + 0.5) * np.float32([b.shape[1] / c_img.shape[1], s1]) - 0.5
            row = draw_matches(a, b, k0, k1, m[inl], inliers=np.ones(int(inl.sum()), bool), max_lines=200)
            cv2.putText(row, f"{r.image}: {r.inliers} inliers, {r.votes} votes", (8, height - 12),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2, cv2.LINE_AA)
            rows.append(row)
        if not rows:
            raise ValueError("no result to draw")
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
        return save_png(output, np.concatenate(rows, 0))


def write_json(results: Sequence[RetrievalResult], path) -> Path:
    """The results as a JSON list of {"image", "score", "inliers"}, best first."""
    return write_text_atomic(path, json.dumps([r.to_json() for r in results], indent=1))


def average_precision(ranked_relevant: Sequence[bool], n_relevant: int) -> float:
    """AP of a ranking: mean over the relevant items of precision at their rank (n_relevant of them in all;
    relevant items missing from the ranking count as 0)."""
    if n_relevant == 0:
        return float("nan")
    hits, total = 0, 0.0
    for rank, rel in enumerate(ranked_relevant, start=1):
        if rel:
            hits += 1
            total += hits / rank
    return total / n_relevant


__all__ = ["build_index", "Retriever", "RetrievalResult", "vote", "verify", "write_json", "average_precision"]
