"""HPatches-sequences evaluation by the D2-Net protocol, with homography accuracy, repeatability,
matching score, a results cache that cannot go stale, tables and the MMA figure.

    from localfeat.eval.hpatches import evaluate_hpatches, ExtractorSource, NpzSource
    results = evaluate_hpatches("hpatches-sequences-release", [ExtractorSource("sift")], "out/")

Per pair (1, k): mutual nearest neighbours on the descriptors, image-1 keypoints reprojected with
H_1_k, accuracy(t) = mean(dist <= t) for t = 1..15 (see `localfeat.eval.metrics`); RANSAC
homography on the same matches (`RansacParams`, default OpenCV RANSAC 3 px / 2000 iterations /
0.995 as ALIKE's evaluation), mean corner error; the "refined" MMA on the RANSAC inliers only;
repeatability and matching score at 3 px.

Cache: ``<cache_dir>/<method>__<config hash>__<dataset fingerprint>.json`` holds the per-pair
results. The config hash covers the extractor's full config (or the content of the given feature
files) and every evaluation setting; the dataset fingerprint covers the content of every image
and homography. Entries are written atomically after each sequence, so a killed run resumes.
Feature sources live in `localfeat.eval.sources`, the cache in `localfeat.eval.cache` (shared with the
pose evaluation), the tables and figure in `localfeat.eval.reports`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..datasets.hpatches import D2NET_EXCLUDED, HPatchesSequences, Pair
from ..geometry import RansacParams, corner_error, estimate_homography
from ..types import Features
from . import metrics
from .cache import cache_path, load_cache, write_cache

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass(frozen=True)
class EvalSettings:
    """What, besides the features, determines a result (all part of the cache key).

    top_k:          keep the `top_k` highest-scoring keypoints of every image, selected as the
                    D2-Net notebook does (``np.argsort(scores)[-top_k:]``); None = all.
    ransac:         robust homography estimation (also used for the refined MMA).
    pixel_threshold: distance threshold (px) of repeatability and matching score.
    """

    top_k: Optional[int] = None
    ransac: RansacParams = field(default_factory=RansacParams)
    pixel_threshold: float = 3.0

    def to_dict(self) -> dict:
        return {"top_k": self.top_k, "ransac": self.ransac.to_dict(), "pixel_threshold": self.pixel_threshold,
                "mma_thresholds": list(metrics.MMA_THRESHOLDS),
                "homography_thresholds": list(metrics.HOMOGRAPHY_THRESHOLDS),
                "auc_thresholds": list(metrics.AUC_THRESHOLDS), "matcher": "mutual_nearest_neighbours",
                "protocol": "d2net-hpatches-sequences", "cache_version": CACHE_VERSION}


# Feature sources and reports live in their own modules; re-exported for existing callers.
from .sources import CallableSource, ExtractorSource, FeatureSource, NpzSource, StoreSource  # noqa: E402,F401
from .reports import SUMMARY_COLUMNS, summary_at, summary_row, write_outputs  # noqa: E402,F401


# ---------------------------------------------------------------------------------- one pair
def select_top_k(features: Features, top_k: Optional[int]) -> Features:
    """The `top_k` best keypoints as the D2-Net notebook keeps them: ``np.argsort(scores)[-top_k:]``."""
    if top_k is None or top_k >= len(features):
        return features
    return features.select(np.argsort(features.scores)[-top_k:])


def evaluate_pair(features_a: Features, features_b: Features, H: np.ndarray, settings: EvalSettings,
                  timing: Optional[dict] = None) -> dict:
    """All per-pair measures of image 1 (features_a) vs image k (features_b) with H = H_1_k.

    Returns a JSON-able dict: n_feats_a/b, n_matches, n_correct[15], accuracy[15], n_inliers,
    accuracy_refined[15], H_est (or None), corner_error (None = no homography found),
    repeatability, matching_score.
    """
    import time

    t0 = time.perf_counter()
    matches = metrics.mutual_nn_matches(features_a.descriptors, features_b.descriptors)
    t1 = time.perf_counter()
    dist = metrics.reprojection_distances(features_a.keypoints, features_b.keypoints, matches, H)
    src = features_a.keypoints[matches[:, 0]]
    dst = features_b.keypoints[matches[:, 1]]
    H_est, inliers = estimate_homography(src, dst, settings.ransac)
    err = corner_error(H, H_est, features_a.image_size)
    thr = settings.pixel_threshold
    out = {
        "n_feats_a": len(features_a), "n_feats_b": len(features_b), "n_matches": int(len(matches)),
        "n_correct": metrics.correct_counts(dist).tolist(),
        "accuracy": metrics.matching_accuracy(dist).tolist(),
        "n_inliers": int(inliers.sum()),
        "accuracy_refined": metrics.matching_accuracy(dist[inliers] if H_est is not None else []).tolist(),
        "H_est": None if H_est is None else H_est.tolist(),
        "corner_error": None if not math.isfinite(err) else err,
        "repeatability": metrics.repeatability(features_a.keypoints, features_b.keypoints, H,
                                               features_a.image_size, features_b.image_size, thr),
        "matching_score": metrics.matching_score(features_a.keypoints, features_b.keypoints, matches, H,
                                                 features_a.image_size, features_b.image_size, thr),
    }
    if timing is not None:
        timing["match"] = timing.get("match", 0.0) + (t1 - t0)
        timing["other"] = timing.get("other", 0.0) + (time.perf_counter() - t1)
    return out


# ---------------------------------------------------------------------------------- aggregation
def _curve(values) -> Optional[list]:
    return None if values is None else [float(v) for v in np.atleast_1d(values)]


def aggregate(pairs: dict, order: Sequence[Pair]) -> dict:
    """Summary of per-pair results {'seq/k': record} over the pairs `order` (pair-weighted means)."""
    recs = [pairs[p.key] for p in order]
    kinds = [p.kind for p in order]
    acc = np.array([r["accuracy"] for r in recs], np.float64).reshape(len(recs), -1)
    ref = np.array([r["accuracy_refined"] for r in recs], np.float64).reshape(len(recs), -1)
    errors = np.array([np.inf if r["corner_error"] is None else r["corner_error"] for r in recs], np.float64)
    mma = metrics.aggregate_over_pairs(acc, kinds)
    mma_ref = metrics.aggregate_over_pairs(ref, kinds)
    kinds_arr = np.array(kinds)
    hom = {}
    for group, mask in (("overall", np.ones(len(kinds), bool)), ("illumination", kinds_arr == "i"),
                        ("viewpoint", kinds_arr == "v")):
        values = metrics.homography_accuracy(errors[mask]) if mask.any() else None
        hom[group] = None if values is None else {str(t): float(v) for t, v in
                                                  zip(metrics.HOMOGRAPHY_THRESHOLDS, values)}
    auc = metrics.error_auc(errors)
    # n_features: every image once (image 1 of a sequence once, as the D2-Net notebook counts).
    n_feats, seen = [], set()
    for p, r in zip(order, recs):
        if p.sequence not in seen:
            seen.add(p.sequence)
            n_feats.append(r["n_feats_a"])
        n_feats.append(r["n_feats_b"])
    finite = errors[np.isfinite(errors)]
    return {
        "thresholds": list(metrics.MMA_THRESHOLDS),
        "mma_overall": _curve(mma["overall"]), "mma_illumination": _curve(mma["illumination"]),
        "mma_viewpoint": _curve(mma["viewpoint"]),
        "mma_refined_overall": _curve(mma_ref["overall"]),
        "mma_refined_illumination": _curve(mma_ref["illumination"]),
        "mma_refined_viewpoint": _curve(mma_ref["viewpoint"]),
        "homography_accuracy": hom["overall"],
        "homography_accuracy_illumination": hom["illumination"],
        "homography_accuracy_viewpoint": hom["viewpoint"],
        "homography_auc": {str(t): float(v) for t, v in zip(metrics.AUC_THRESHOLDS, auc)},
        "mean_corner_error": float(finite.mean()) if len(finite) else None,
        "n_homography_failures": int((~np.isfinite(errors)).sum()),
        "repeatability": float(np.mean([r["repeatability"] for r in recs])) if recs else None,
        "matching_score": float(np.mean([r["matching_score"] for r in recs])) if recs else None,
        "n_features": float(np.mean(n_feats)) if n_feats else None,
        "n_matches": float(np.mean([r["n_matches"] for r in recs])) if recs else None,
        "n_inliers": float(np.mean([r["n_inliers"] for r in recs])) if recs else None,
        "n_pairs": {"overall": len(recs), "illumination": int((kinds_arr == "i").sum()),
                    "viewpoint": int((kinds_arr == "v").sum())},
    }


def per_sequence(pairs: dict, order: Sequence[Pair]) -> dict:
    """{sequence: summary over its 5 pairs}: MMA@1,3,5,10, matches, homography accuracy@3, corner error."""
    out = {}
    for seq in dict.fromkeys(p.sequence for p in order):
        recs = [pairs[p.key] for p in order if p.sequence == seq]
        acc = np.mean([r["accuracy"] for r in recs], axis=0)
        errors = [np.inf if r["corner_error"] is None else r["corner_error"] for r in recs]
        out[seq] = {"kind": seq[0], "n_pairs": len(recs),
                    **{f"mma@{t}": float(acc[t - 1]) for t in (1, 3, 5, 10)},
                    "n_matches": float(np.mean([r["n_matches"] for r in recs])),
                    "homography_accuracy@3": float(np.mean(np.array(errors) <= 3)),
                    "mean_corner_error": float(np.mean([e for e in errors if np.isfinite(e)]))
                    if any(np.isfinite(errors)) else None}
    return out


# ---------------------------------------------------------------------------------- the runner
def cache_state(source: FeatureSource, dataset: HPatchesSequences, settings: EvalSettings, work_dir: Path,
                fingerprint: str) -> tuple[dict, Path, dict, list]:
    """(identity, cache file, cached per-pair results, pairs still to evaluate) of a source."""
    eval_hash = hashlib.sha256(json.dumps(
        {"source": source.config_hash(dataset), "settings": settings.to_dict()}, sort_keys=True).encode()
    ).hexdigest()[:16]
    identity = {"method": source.method, "label": source.label, "config": source.config(),
                "config_hash": eval_hash, "dataset_fingerprint": fingerprint, "settings": settings.to_dict()}
    identity = json.loads(json.dumps(identity, default=str))
    path = cache_path(Path(work_dir) / "cache", source.method, eval_hash, fingerprint)
    pairs = load_cache(path, identity)
    return identity, path, pairs, [p for p in dataset.pairs() if p.key not in pairs]


def evaluate_source(source: FeatureSource, dataset: HPatchesSequences, settings: EvalSettings,
                    work_dir: Path, fingerprint: Optional[str] = None, workers: Optional[int] = None,
                    timing: Optional[dict] = None) -> dict:
    """Evaluate one feature source on `dataset`; per-pair results are cached under `work_dir`/cache.

    Returns the method's result dict (see `aggregate`) plus `method`, `kind`, `config`,
    `config_hash`, `dataset`, `settings`, `per_sequence`, `pairs` and `cache_file`.
    workers: threads evaluating pairs (None = os.cpu_count(), at most 2); results do not depend on it.
    """
    work_dir = Path(work_dir)
    fingerprint = fingerprint or dataset.fingerprint()
    identity, path, pairs, todo = cache_state(source, dataset, settings, work_dir, fingerprint)
    eval_hash, order = identity["config_hash"], dataset.pairs()
    logger.info("%s: %d of %d pairs cached in %s", source.label, len(order) - len(todo), len(order), path)
    if todo:
        sequences = list(dict.fromkeys(p.sequence for p in todo))
        names = [dataset.image_name(s, k) for s in sequences for k in (1, 2, 3, 4, 5, 6)]
        source.prepare(dataset, names, work_dir)
        workers = workers or min(2, os.cpu_count() or 1)
        bar = tqdm(total=len(todo), desc=f"evaluate {source.label}", unit="pair", disable=None)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for seq in sequences:
                feats = {k: select_top_k(source.get(dataset, dataset.image_name(seq, k)), settings.top_k)
                         for k in (1, 2, 3, 4, 5, 6)}
                seq_pairs = [p for p in todo if p.sequence == seq]
                timings = [dict() for _ in seq_pairs]
                jobs = [pool.submit(evaluate_pair, feats[1], feats[p.k], dataset.homography(seq, p.k),
                                    settings, t) for p, t in zip(seq_pairs, timings)]
                for p, job in zip(seq_pairs, jobs):
                    pairs[p.key] = job.result()
                    bar.update(1)
                if timing is not None:
                    for t in timings:
                        for key, value in t.items():
                            timing[key] = timing.get(key, 0.0) + value
                write_cache(path, identity, pairs)
        bar.close()
    result = {"method": source.method, "label": source.label, "kind": source.kind,
              "config": identity["config"], "config_hash": eval_hash,
              "dataset": {"root": str(dataset.root), "fingerprint": fingerprint,
                          "sequences": dict(dataset.counts), "excluded": dataset.excluded},
              "settings": settings.to_dict(), "cache_file": str(path)}
    result.update(aggregate(pairs, order))
    result["per_sequence"] = per_sequence(pairs, order)
    result["pairs"] = {p.key: pairs[p.key] for p in order}
    return result


def evaluate_hpatches(root, sources: Sequence[FeatureSource], out_dir, settings: EvalSettings = EvalSettings(),
                      exclude=D2NET_EXCLUDED, compare_published: Sequence[str] = (), workers: Optional[int] = None,
                      cache_dir=None, plot: bool = True) -> dict:
    """Evaluate every source on the HPatches sequences in `root`; write the outputs to `out_dir`.

    Writes results.json (per method: MMA curves t = 1..15, homography accuracy / AUC, repeatability,
    matching score, counts, config and hash), results.md, results.csv, per_sequence.csv and mma.png
    (three panels: overall, illumination, viewpoint). `compare_published`: D2-Net cache files
    ('PATH' or 'LABEL=PATH', loaded with pickle: only files you trust) drawn beside.
    Returns the content of results.json.
    """
    from . import published

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = HPatchesSequences(root, exclude=exclude)
    fingerprint = dataset.fingerprint()
    work_dir = Path(cache_dir) if cache_dir is not None else out_dir
    labels = [s.label for s in sources]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two methods have the same label in {labels}; give them distinct labels")
    # Fail before hours of work, not after: every source with work to do must be able to run.
    for source in sources:
        if cache_state(source, dataset, settings, work_dir, fingerprint)[3]:
            source.check()
    methods = {}
    for source in sources:
        methods[source.label] = evaluate_source(source, dataset, settings, work_dir, fingerprint, workers)
    refs = {}
    for item in compare_published:
        ref = published.load_published(item)
        refs[ref.label] = ref.to_dict()
    results = {"protocol": "D2-Net HPatches sequences (MMA), ALIKE homography accuracy",
               "dataset": {"root": str(dataset.root), "fingerprint": fingerprint,
                           "sequences": dict(dataset.counts), "n_pairs": len(dataset.pairs()),
                           "excluded": dataset.excluded},
               "settings": settings.to_dict(), "methods": methods, "published": refs}
    write_outputs(results, out_dir, plot=plot)
    return results
