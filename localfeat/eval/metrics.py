"""Evaluation metrics as pure functions of arrays (no files, no models).

Protocols:
- MMA (mean matching accuracy) exactly as the D2-Net HPatches-sequences notebook
  (mihaidusmanu/d2-net, hpatches_sequences/HPatches-Sequences-Matching-Benchmark.ipynb):
  mutual nearest neighbours on the descriptors, image-1 keypoints reprojected with H_1_k,
  per-pair accuracy = mean(dist <= t) (0 without matches), averaged over PAIRS.
- Homography accuracy as ALIKE's hseq/eval.py: RANSAC on the matches, mean corner error,
  correct when error <= t; plus the AUC of the corner error (as SuperGlue/LightGlue report).
- Repeatability and matching score as defined in their docstrings (SuperPoint's definitions).

Units: pixels. Keypoints (N, 2) are (x, y), pixel-centre origin; H maps image-A pixels to image-B.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from ..geometry import inside_image, warp_points

MMA_THRESHOLDS = tuple(range(1, 16))           # D2-Net: t = 1..15 px
HOMOGRAPHY_THRESHOLDS = (1, 2, 3, 4, 5)        # ALIKE: t = 1..5 px
AUC_THRESHOLDS = (1, 3, 5)

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def mutual_nn_matches(desc0, desc1) -> np.ndarray:
    """Mutual nearest neighbours of descriptors (N0, D), (N1, D) by similarity Da Db^T.

    Returns int64 (M, 2) sorted by the first index. Ties go to the lowest index (as torch.max
    and argmax do), computed blockwise by `localfeat.matchers.nearest_neighbor` with its first pass in
    bfloat16 where the CPU (AVX-512 BF16, AMX) or GPU computes it natively, else float32: the matches are
    the exact float64 ones either way (the precision is a matter of speed only).
    """
    from ..matchers.nearest_neighbor import match_nearest_neighbours

    indices, _ = match_nearest_neighbours(desc0, desc1, mutual=True, precision="auto")
    return indices


def reprojection_distances(keypoints0, keypoints1, matches, H) -> np.ndarray:
    """Distance (M,) float64, pixels, between H(keypoints0[i]) and keypoints1[j] for each match (i, j).

    keypoints0 (N0, 2) of image A, keypoints1 (N1, 2) of image B, matches (M, 2), H (3, 3) A -> B.
    Promoted to float64 before warping, as the D2-Net notebook does.
    """
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if len(matches) == 0:
        return np.zeros(0, np.float64)
    p0 = np.asarray(keypoints0, np.float64)[matches[:, 0], :2]
    p1 = np.asarray(keypoints1, np.float64)[matches[:, 1], :2]
    return np.linalg.norm(warp_points(p0, H) - p1, axis=1)


def matching_accuracy(distances, thresholds: Sequence[float] = MMA_THRESHOLDS) -> np.ndarray:
    """Per-pair accuracy (T,): fraction of `distances` (M,) <= t for each threshold t (inclusive).

    A pair without matches has accuracy 0 at every threshold (the notebook sets dist = [inf]).
    """
    d = np.asarray(distances, np.float64).ravel()
    if d.size == 0:
        return np.zeros(len(thresholds), np.float64)
    return np.array([np.mean(d <= t) for t in thresholds], np.float64)


def correct_counts(distances, thresholds: Sequence[float] = MMA_THRESHOLDS) -> np.ndarray:
    """Number of `distances` <= t for each threshold (T,) int64."""
    d = np.asarray(distances, np.float64).ravel()
    return np.array([int(np.sum(d <= t)) for t in thresholds], np.int64)


def sequence_type(sequence: str) -> str:
    """'i' (illumination) or 'v' (viewpoint): the first letter of an HPatches sequence name."""
    kind = sequence[:1]
    if kind not in ("i", "v"):
        raise ValueError(f"sequence {sequence!r}: HPatches names start with 'i_' or 'v_'")
    return kind


def aggregate_over_pairs(values, kinds: Iterable[str]) -> dict:
    """Pair-weighted means of per-pair values (P,) or (P, T) by sequence kind ('i' / 'v').

    Returns {'overall', 'illumination', 'viewpoint'}: each the mean over the pairs of that
    group (None when the group is empty). The overall score is the mean over ALL pairs
    (pair-weighted), not the mean of the illumination and viewpoint scores.
    """
    values = np.asarray(values, np.float64)
    kinds = np.asarray(list(kinds))
    if len(kinds) != len(values):
        raise ValueError(f"{len(values)} values but {len(kinds)} sequence kinds")

    def mean(mask):
        if not mask.any():
            return None
        return values[mask].mean(axis=0)

    every = np.ones(len(kinds), bool)
    return {"overall": mean(every), "illumination": mean(kinds == "i"), "viewpoint": mean(kinds == "v")}


def homography_accuracy(errors, thresholds: Sequence[float] = HOMOGRAPHY_THRESHOLDS) -> np.ndarray:
    """Fraction (T,) of corner errors (P,) <= t (inf counts as wrong); zeros for no pairs."""
    e = np.asarray(errors, np.float64).ravel()
    if e.size == 0:
        return np.zeros(len(thresholds))
    return np.array([np.mean(e <= t) for t in thresholds], np.float64)


def error_auc(errors, thresholds: Sequence[float] = AUC_THRESHOLDS) -> np.ndarray:
    """Area under the recall-vs-error curve up to each threshold t, divided by t (T,), in [0, 1].

    Computed exactly as SuperGlue's `pose_auc` (which LightGlue and others reuse for homography
    AUC): the points (0, 0) and (e_i, i / n) over the sorted errors, joined by the trapezoid rule,
    closed at (t, recall of the last error below t). Infinite errors never count.
    """
    e = np.sort(np.asarray(errors, np.float64).ravel())
    n = len(e)
    if n == 0:
        return np.zeros(len(thresholds))
    recall = np.arange(1, n + 1, dtype=np.float64) / n
    e = np.concatenate([[0.0], e])
    recall = np.concatenate([[0.0], recall])
    out = []
    for t in thresholds:
        last = np.searchsorted(e, t)  # e[:last] < t
        xs = np.concatenate([e[:last], [t]])
        ys = np.concatenate([recall[:last], [recall[last - 1]]])
        out.append(_trapezoid(ys, x=xs) / t)
    return np.array(out, np.float64)


def _common_view(keypoints0, keypoints1, H, size0, size1):
    k0 = np.asarray(keypoints0, np.float64)[:, :2]
    k1 = np.asarray(keypoints1, np.float64)[:, :2]
    w0 = warp_points(k0, H)                         # image-A points in image B
    w1 = warp_points(k1, np.linalg.inv(np.asarray(H, np.float64)))  # image-B points in image A
    return k0, k1, w0, w1, inside_image(w0, size1), inside_image(w1, size0)


def repeatability(keypoints0, keypoints1, H, size0, size1, threshold: float = 3.0) -> float:
    """Repeatability of two keypoint sets (SuperPoint's definition), in [0, 1].

    keypoints0 (N0, 2) in image A of size size0 = (W, H); keypoints1 (N1, 2) in image B of
    size size1; H (3, 3) maps A to B; threshold in pixels.
    - Common view: a point of A counts only if H maps it inside B (0 <= x <= W_B - 1,
      0 <= y <= H_B - 1); a point of B only if H^-1 maps it inside A. Others are ignored.
    - A counted point of A is repeated if some counted point of B lies within `threshold`
      (<=, Euclidean, measured in image B) of its warped position; a counted point of B is
      repeated if some counted point of A, warped into B, lies within `threshold` of it.
    - repeatability = (repeated_A + repeated_B) / (counted_A + counted_B); 0 when nothing is counted.
    """
    from scipy.spatial import cKDTree

    k0, k1, w0, _, in0, in1 = _common_view(keypoints0, keypoints1, H, size0, size1)
    a, b = w0[in0], k1[in1]
    if len(a) + len(b) == 0:
        return 0.0
    if len(a) == 0 or len(b) == 0:
        return 0.0
    da, _ = cKDTree(b).query(a, k=1)
    db, _ = cKDTree(a).query(b, k=1)
    return float((np.sum(da <= threshold) + np.sum(db <= threshold)) / (len(a) + len(b)))


def matching_score(keypoints0, keypoints1, matches, H, size0, size1, threshold: float = 3.0) -> float:
    """Matching score (SuperPoint's definition), in [0, 1].

    A match (i, j) is correct when keypoints0[i] lies in the common view (H maps it inside
    image B), keypoints1[j] lies in the common view (H^-1 maps it inside image A), and
    ||H(keypoints0[i]) - keypoints1[j]|| <= threshold pixels. With n_A, n_B the numbers of
    keypoints of A and B in the common view:
    matching score = (correct / n_A + correct / n_B) / 2, a term being 0 when its n is 0.
    """
    k0, k1, w0, _, in0, in1 = _common_view(keypoints0, keypoints1, H, size0, size1)
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    if len(matches) == 0:
        return 0.0
    i, j = matches[:, 0], matches[:, 1]
    dist = np.linalg.norm(w0[i] - k1[j], axis=1)
    correct = int(np.sum(in0[i] & in1[j] & (dist <= threshold)))
    n_a, n_b = int(in0.sum()), int(in1.sum())
    terms = [correct / n if n else 0.0 for n in (n_a, n_b)]
    return float(sum(terms) / 2)


def mma_from_published_sums(err_sums: dict, n_pairs: int, thresholds: Optional[Sequence[int]] = None) -> np.ndarray:
    """MMA curve (T,) from a D2-Net cache's summed accuracies {t: sum over pairs} and the number of pairs."""
    if thresholds is None:
        thresholds = sorted(int(t) for t in err_sums)
    lookup = {int(k): float(v) for k, v in err_sums.items()}
    return np.array([lookup[int(t)] / n_pairs for t in thresholds], np.float64)
