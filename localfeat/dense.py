"""The detector-free arrow of the pipeline: image pairs -> pair matches file -> (quantised) features.h5 +
matches.h5, so that LoFTR, EfficientLoFTR and XFeat* feed the same export, SfM and evaluation as the
detector-based models.

Files:
- pair matches (e.g. dense_matches.h5): group `<name0>/<name1>` (as matches.h5, `pair_key`) holding
  `keypoints0` (M, 2), `keypoints1` (M, 2) float32 in original-image pixels (pixel-centre origin) and
  `scores` (M,); attributes `name0`, `name1`, `image_size0`, `image_size1`; root attributes `model`,
  `conf_hash`. Crash-safe and resumable like every store (`localfeat.io.h5`).
- `quantize` turns it into features.h5 (per image: `keypoints` (N, 2), `scores` (N,) = the best score of the
  matches that fell into the keypoint's grid cell, `descriptors` (N, 0): none) and matches.h5 (`indices`,
  `scores`), hloc's way of forming tracks from dense matches: a point is snapped to the grid cell
  round(p / cell) of its image, every cell becomes one keypoint (at the position of its best-scoring match),
  and per pair each keypoint keeps its best-scoring match only (so tracks do not fork).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from .io.h5 import FeatureStore, MatchStore, StoreError, _H5Store, pair_key
from .io.images import ImageReadError, list_images
from .registry import get_class, load_matcher
from .types import Features, Matches, PairMatches

logger = logging.getLogger(__name__)


def is_detector_free(model: str) -> bool:
    """True when `model` names a registered detector-free matcher (images in, `PairMatches` out)."""
    from .matchers.base import DetectorFreeMatcher
    try:
        return issubclass(get_class("matcher", model), DetectorFreeMatcher)
    except Exception:  # not a matcher name at all
        return False


class PairMatchStore(_H5Store):
    """Pair matches of a detector-free matcher: `put(name0, name1, PairMatches)`, `get`, `pairs()`."""

    entry_dataset = "keypoints0"

    def __init__(self, path, mode: str = "a", model: Optional[str] = None, conf_hash: Optional[str] = None,
                 **kwargs):
        self.model, self.conf_hash = model, conf_hash
        super().__init__(path, mode, **kwargs)

    def _root_attrs(self) -> dict:
        attrs = super()._root_attrs()
        if self.model is not None:
            attrs["model"], attrs["conf_hash"] = self.model, self.conf_hash or ""
        return attrs

    def put(self, name0: str, name1: str, matches: PairMatches) -> None:
        attrs = {"name0": name0, "name1": name1}
        arrays = matches.to_dict()
        for key in ("image_size0", "image_size1"):
            if key in arrays:
                attrs[key] = arrays.pop(key)
        self._put(pair_key(name0, name1), arrays, attrs)

    def has_pair(self, name0: str, name1: str) -> bool:
        return self.has_key(pair_key(name0, name1))

    def get(self, name0: str, name1: str) -> PairMatches:
        """The matches of (name0, name1), or of the stored pair (name1, name0) with the images swapped."""
        key, swapped = pair_key(name0, name1), False
        if not self.has_key(key) and self.has_key(pair_key(name1, name0)):
            key, swapped = pair_key(name1, name0), True

        def reader(arrays, attrs):
            sizes = {k: tuple(np.asarray(attrs[k]).tolist()) for k in ("image_size0", "image_size1") if k in attrs}
            pm = PairMatches(arrays["keypoints0"], arrays["keypoints1"], arrays["scores"], **sizes)
            if swapped:
                pm = PairMatches(pm.keypoints1, pm.keypoints0, pm.scores, pm.image_size1, pm.image_size0)
            return pm
        return self._read_group(key, reader)

    def pairs(self) -> list[tuple[str, str]]:
        """(name0, name1) of every stored pair."""
        out = []
        for key in self.keys():
            pm_attrs = self._read_group(key, lambda arrays, attrs: (str(attrs["name0"]), str(attrs["name1"])))
            out.append(pm_attrs)
        return out


def match_pairs(images: Union[str, os.PathLike], output: Union[str, os.PathLike], pairs: Sequence[tuple[str, str]],
                model: str = "xfeat_star", conf: Optional[dict] = None, overwrite: bool = False, matcher=None):
    """Match `pairs` of images (names relative to the folder `images`) with the detector-free matcher `model`
    into the pair matches file `output` (resumable: pairs already there are skipped). Returns a `RunReport`."""
    from .pipeline import RunReport

    root = Path(images)
    if not root.is_dir():
        root, _ = list_images(images)
    if matcher is None:
        if not is_detector_free(model):
            raise ValueError(f"{model!r} is not a detector-free matcher (images in, pair matches out)")
        matcher = load_matcher(model, **(conf or {}))
    report = RunReport()
    with PairMatchStore(output, mode="w" if overwrite else "a", model=matcher.name,
                        conf_hash=matcher.conf_hash) as store:
        todo = []
        for a, b in pairs:
            (report.skipped if store.has_pair(a, b) else todo).append((a, b))
        for a, b in tqdm(todo, desc="match", unit="pair", disable=None):
            try:
                store.put(a, b, matcher.match_images(root / a, root / b))
                report.done.append(f"{a} {b}")
            except (ImageReadError, OSError, ValueError) as exc:
                report.failed.append((f"{a} {b}", f"{type(exc).__name__}: {exc}"))
                logger.warning("skipping pair %s %s: %s", a, b, exc)
    return report


def quantize_pair_matches(pair_matches: dict, cell: float = 8.0):
    """Per-image keypoints and per-pair indices from detector-free matches, by snapping to a grid.

    pair_matches: {(name0, name1): PairMatches}. A point p of an image falls in grid cell round(p / cell);
    each occupied cell becomes one keypoint, placed at its best-scoring point, with that score. Per pair, a
    keypoint keeps only its best-scoring match (greedy one-to-one by score). Returns
    ({name: Features with descriptors (N, 0)}, {(name0, name1): Matches}).
    """
    if not cell > 0:
        raise ValueError(f"cell must be > 0, got {cell!r}")
    points: dict[str, list] = {}
    sizes: dict[str, tuple] = {}
    for (a, b), pm in pair_matches.items():
        for name, kpts, size in ((a, pm.keypoints0, pm.image_size0), (b, pm.keypoints1, pm.image_size1)):
            points.setdefault(name, []).append(np.concatenate([kpts, pm.scores[:, None]], 1))
            if size is not None:
                sizes[name] = size
    grids, features = {}, {}
    for name, rows in points.items():
        rows = np.concatenate(rows).astype(np.float64)
        q = np.round(rows[:, :2] / cell).astype(np.int64)
        key = _cell_key(q)
        order = np.argsort(-rows[:, 2], kind="stable")             # best score first
        uniq, first = np.unique(key[order], return_index=True)      # sorted keys, their best point
        best = rows[order[first]]
        grids[name] = uniq
        size = sizes.get(name)
        if size is None:
            size = (int(np.ceil(rows[:, 0].max())) + 1, int(np.ceil(rows[:, 1].max())) + 1)
        features[name] = Features(best[:, :2], best[:, 2], np.zeros((len(best), 0), np.float32), size)
    matches = {}
    for (a, b), pm in pair_matches.items():
        i0 = np.searchsorted(grids[a], _cell_key(np.round(pm.keypoints0.astype(np.float64) / cell).astype(np.int64)))
        i1 = np.searchsorted(grids[b], _cell_key(np.round(pm.keypoints1.astype(np.float64) / cell).astype(np.int64)))
        order = np.argsort(-pm.scores, kind="stable")
        used0, used1, keep = set(), set(), []
        for m in order.tolist():
            if i0[m] in used0 or i1[m] in used1:
                continue
            used0.add(i0[m])
            used1.add(i1[m])
            keep.append(m)
        keep = np.asarray(sorted(keep), np.int64)
        matches[(a, b)] = Matches(np.stack([i0[keep], i1[keep]], 1) if len(keep) else np.zeros((0, 2), np.int64),
                                  pm.scores[keep])
    return features, matches


def _cell_key(q: np.ndarray) -> np.ndarray:
    """Integer grid cells (N, 2) -> one int64 key each (order-preserving in (x, y), any sign)."""
    return (q[:, 0] + (1 << 31)) * (1 << 32) + (q[:, 1] + (1 << 31))


def quantize(pair_matches_path: Union[str, os.PathLike], features: Union[str, os.PathLike],
             matches: Union[str, os.PathLike], cell: float = 8.0, pairs: Optional[Sequence] = None) -> int:
    """Quantise the pair matches file into a new features.h5 and matches.h5 (see `quantize_pair_matches`).
    `pairs`: the pairs to use (default: every stored pair). Returns the number of images written."""
    store = PairMatchStore(pair_matches_path, mode="r")
    pairs = store.pairs() if pairs is None else list(pairs)
    loaded = {}
    for a, b in pairs:
        if not store.has_pair(a, b) and not store.has_pair(b, a):
            raise StoreError(f"{pair_matches_path}: no matches for the pair ({a}, {b})")
        loaded[(a, b)] = store.get(a, b)
    feats, idx = quantize_pair_matches(loaded, cell)
    with FeatureStore(features, mode="w", model=f"quantized:{store_model(store)}",
                      conf={"cell": cell}, conf_hash=f"cell{cell}") as fs:
        for name, f in feats.items():
            fs.put(name, f)
    with MatchStore(matches, mode="w") as ms:
        for (a, b), m in idx.items():
            ms.put(a, b, m)
    return len(feats)


def store_model(store: _H5Store) -> str:
    for f in store._open_sources():
        if "model" in f.attrs:
            return str(f.attrs["model"])
    return "unknown"


__all__ = ["PairMatchStore", "match_pairs", "quantize_pair_matches", "quantize", "is_detector_free"]
