"""Evaluation of detector-free matchers (LoFTR, EfficientLoFTR, XFeat*): HPatches from their pair matches.

Per HPatches pair (1, k) the matcher's `PairMatches` are judged directly (there are no per-image keypoints
or descriptors to pair by mutual nearest neighbours):
- MMA(t): fraction of matches with ||H_1_k(keypoints0) - keypoints1|| <= t, t = 1..15 px (0 without
  matches), averaged over pairs (pair-weighted, overall / illumination / viewpoint), as the D2-Net protocol;
- homography: RANSAC (`RansacParams`, OpenCV 3 px as ALIKE's evaluation) on the matches, mean corner error;
  accuracy at 1..5 px and AUC at 1/3/5 px (`localfeat.eval.metrics`).

Results are cached as one JSON per (model, config hash, evaluation settings, dataset fingerprint), written
after each sequence, so a killed run resumes and a stale result cannot be read. Relative poses (ScanNet
sample and any pair file) go through `localfeat.eval.pose.evaluate_pose`, which accepts detector-free models.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..datasets.hpatches import D2NET_EXCLUDED, HPatchesSequences
from ..geometry import RansacParams, corner_error, estimate_homography, warp_points
from ..io.atomic import write_text_atomic
from ..registry import conf_hash, load_matcher
from ..types import PairMatches
from . import metrics

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


def evaluate_pair_matches(pm: PairMatches, H: np.ndarray, image_size0, ransac: RansacParams = RansacParams()) -> dict:
    """Per-pair measures of matches between image A (keypoints0) and B (keypoints1), H mapping A to B.

    Returns a JSON-able dict: n_matches, accuracy[15] (MMA at 1..15 px), n_inliers, corner_error (None when
    RANSAC found no homography).
    """
    if len(pm):
        dist = np.linalg.norm(warp_points(pm.keypoints0.astype(np.float64), H) - pm.keypoints1, axis=1)
    else:
        dist = np.zeros(0)
    H_est, inliers = estimate_homography(pm.keypoints0, pm.keypoints1, ransac)
    err = corner_error(H, H_est, image_size0)
    return {"n_matches": int(len(pm)), "accuracy": metrics.matching_accuracy(dist).tolist(),
            "n_inliers": int(inliers.sum()), "corner_error": err if math.isfinite(err) else None}


def summarize(per_pair: dict) -> dict:
    """Aggregate per-pair results {'seq/k': dict}: MMA curves, homography accuracy and AUC, mean matches."""
    keys = sorted(per_pair)
    kinds = [metrics.sequence_type(k.split("/")[0]) for k in keys]
    acc = np.array([per_pair[k]["accuracy"] for k in keys]) if keys else np.zeros((0, len(metrics.MMA_THRESHOLDS)))
    errors = np.array([np.inf if per_pair[k]["corner_error"] is None else per_pair[k]["corner_error"] for k in keys])
    mma = metrics.aggregate_over_pairs(acc, kinds) if keys else {}
    out = {"num_pairs": len(keys),
           "mma": {g: (None if v is None else [float(x) for x in v]) for g, v in mma.items()},
           "mma_thresholds": list(metrics.MMA_THRESHOLDS),
           "homography_accuracy": dict(zip(map(str, metrics.HOMOGRAPHY_THRESHOLDS),
                                           metrics.homography_accuracy(errors).tolist())),
           "homography_auc": dict(zip(map(str, metrics.AUC_THRESHOLDS), metrics.error_auc(errors).tolist())),
           "mean_num_matches": float(np.mean([per_pair[k]["n_matches"] for k in keys])) if keys else 0.0}
    return out


def evaluate_hpatches_matcher(root, model: str, conf: Optional[dict] = None, out_dir=None,
                              sequences: Optional[Sequence[str]] = None, exclude=D2NET_EXCLUDED,
                              ransac: RansacParams = RansacParams(), matcher=None) -> dict:
    """Evaluate the detector-free matcher `model` (config `conf`) on HPatches sequences below `root`.

    Returns {'summary': `summarize(...)`, 'pairs': per-pair dicts, 'identity': what was run}; with `out_dir`
    the result is cached there as ``dense_<model>__<hash>__<fingerprint>.json`` (resumed, never stale).
    """
    dataset = HPatchesSequences(root, exclude=exclude, sequences=sequences)
    if matcher is None:
        matcher = load_matcher(model, **(conf or {}))
    fingerprint = dataset.fingerprint()
    identity = {"model": matcher.name, "conf_hash": matcher.conf_hash, "ransac": ransac.to_dict(),
                "dataset_fingerprint": fingerprint, "cache_version": CACHE_VERSION,
                "protocol": "hpatches-sequences pair matches"}
    key = conf_hash("dense-hpatches", identity)
    path = None if out_dir is None else Path(out_dir) / f"dense_{matcher.name}__{key}__{fingerprint}.json"
    per_pair: dict = {}
    if path is not None and path.exists():
        stored = json.loads(path.read_text())
        if stored.get("identity") == identity:
            per_pair = stored["pairs"]
    for seq in tqdm(dataset.sequences, desc=f"hpatches {matcher.name}", unit="seq", disable=None):
        todo = [k for k in range(2, 7) if f"{seq}/{k}" not in per_pair]
        if not todo:
            continue
        for k in todo:
            pm = matcher.match_images(dataset.image_path(seq, 1), dataset.image_path(seq, k))
            per_pair[f"{seq}/{k}"] = evaluate_pair_matches(pm, dataset.homography(seq, k),
                                                           dataset.image_size(seq, 1), ransac)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps({"identity": identity, "pairs": per_pair}) + "\n")
    return {"summary": summarize(per_pair), "pairs": per_pair, "identity": identity}


__all__ = ["evaluate_pair_matches", "summarize", "evaluate_hpatches_matcher"]
