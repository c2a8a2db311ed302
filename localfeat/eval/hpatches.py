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
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..datasets.hpatches import D2NET_EXCLUDED, HPatchesSequences, Pair
from ..geometry import RansacParams, corner_error, estimate_homography
from ..io.atomic import write_text_atomic
from ..registry import conf_hash, get_class, load_extractor, merge_conf, parse_model_spec
from ..types import Features
from . import metrics

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


def _digest_files(paths: Sequence[Path]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        digest.update(str(path.name).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "method"


# ---------------------------------------------------------------------------------- feature sources
class FeatureSource:
    """Where the features of a method come from. Subclasses set `label`, `method`, `config`."""

    label: str = ""
    method: str = ""
    kind: str = ""

    def config(self) -> dict:
        raise NotImplementedError

    def config_hash(self, dataset: HPatchesSequences) -> str:
        raise NotImplementedError

    def check(self) -> None:
        """Raise now if this source cannot produce features (e.g. missing weights)."""

    def prepare(self, dataset: HPatchesSequences, names: Sequence[str], work_dir: Path) -> None:
        """Make features of `names` available (extract what is missing)."""

    def get(self, dataset: HPatchesSequences, name: str) -> Features:
        raise NotImplementedError


class ExtractorSource(FeatureSource):
    """Features of a registered extractor, given as a SPEC ('NAME' or 'NAME:key=value,...').

    Extracted features are kept in ``<work_dir>/features/<name>-<config hash>.h5`` with the content
    digest of each image beside it; an image whose content changed is extracted again.
    `max_size` sets the extractor's `resize_max` unless the spec sets it.
    """

    kind = "extractor"

    def __init__(self, spec: str, max_size: Optional[int] = None, conf: Optional[dict] = None):
        name, spec_conf = parse_model_spec(spec)
        spec_conf.update(conf or {})
        if max_size is not None and "resize_max" not in spec_conf:
            spec_conf["resize_max"] = int(max_size)
        self.method = name
        self.label = spec
        cls = get_class("extractor", name)
        self._conf = dict(spec_conf)
        # Resolve the full config now (strict: a bad key fails before any work).
        self._full_conf = merge_conf(cls.all_defaults(), spec_conf, where=f"model {name!r}")
        self._full_conf.pop("device", None)  # where it runs does not change the result
        self._extractor = None
        self._store = None

    def config(self) -> dict:
        return dict(self._full_conf)

    def config_hash(self, dataset) -> str:
        return conf_hash(self.method, self._full_conf)

    def check(self) -> None:
        """Load the extractor (finds or downloads its weights; the error names the file and URL)."""
        _ = self.extractor

    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor = load_extractor(self.method, **self._conf)
        return self._extractor

    def prepare(self, dataset, names, work_dir: Path) -> None:
        from ..io.h5 import FeatureStore

        ext = self.extractor
        path = Path(work_dir) / "features" / f"{_safe(self.method)}-{ext.conf_hash}.h5"
        digests_path = path.with_name(path.name + ".digests.json")
        digests = json.loads(digests_path.read_text()) if digests_path.exists() else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        todo = []
        with FeatureStore(path, mode="a", model=ext.name, conf=ext.conf, conf_hash=ext.conf_hash) as store:
            for name in names:
                digest = dataset.file_digest(dataset.root / name)
                if name not in store or digests.get(name) != digest:
                    todo.append((name, digest))
            for i, (name, digest) in enumerate(tqdm(todo, desc=f"extract {self.label}", unit="img",
                                                     disable=None)):
                store.put(name, ext.extract(str(dataset.root / name)))
                digests[name] = digest
                if i % 16 == 15:  # journal the features first, then record their digests
                    store.flush()
                    write_text_atomic(digests_path, json.dumps(digests, indent=0, sort_keys=True))
        write_text_atomic(digests_path, json.dumps(digests, indent=0, sort_keys=True))
        self._store = FeatureStore(path, mode="r")

    def get(self, dataset, name: str) -> Features:
        return self._store.get(name)


class StoreSource(FeatureSource):
    """Features computed elsewhere, in a FeatureStore whose image names are '<seq>/<k>.ppm'."""

    kind = "features"

    def __init__(self, path, label: Optional[str] = None):
        from ..io.h5 import FeatureStore

        self.path = Path(path)
        self.store = FeatureStore(self.path, mode="r")
        self.label = label or self.path.stem
        self.method = self.label

    def config(self) -> dict:
        return {"features": str(self.path), "format": "featurestore"}

    def config_hash(self, dataset) -> str:
        files = [self.path] if self.path.exists() else []
        files += sorted(self.store.journal_dir.glob("*.h5"))  # entries not yet merged into the main file
        return _digest_files(files)

    def prepare(self, dataset, names, work_dir) -> None:
        missing = [n for n in names if n not in self.store]
        if missing:
            raise FileNotFoundError(f"{self.path} has no features for {len(missing)} image(s), e.g. {missing[:3]}; "
                                    "image names must be '<seq>/<k>.ppm' relative to the dataset root")

    def get(self, dataset, name: str) -> Features:
        return self.store.get(name)


class NpzSource(FeatureSource):
    """Features computed elsewhere, as D2-Net-style per-image npz files '<folder>/<seq>/<k>.ppm.<ext>'
    (keys keypoints (N, 2+), descriptors (N, D), scores (N,)), e.g. R2D2's or D2-Net's outputs."""

    kind = "features"

    def __init__(self, folder, ext: str, label: Optional[str] = None):
        self.folder = Path(folder)
        self.ext = ext.lstrip(".")
        if not self.folder.is_dir():
            raise FileNotFoundError(f"--features {self.folder}: no such folder")
        self.label = label or self.ext
        self.method = self.label

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.{self.ext}"

    def config(self) -> dict:
        return {"features": str(self.folder), "ext": self.ext, "format": "npz"}

    def config_hash(self, dataset) -> str:
        names = tuple(dataset.image_names())
        stamp = tuple((self.path(n).stat().st_mtime_ns, self.path(n).stat().st_size) if self.path(n).exists()
                      else None for n in names)
        if getattr(self, "_hash_memo", (None,))[0] != (names, stamp):  # hash once per state of the files
            self._hash_memo = ((names, stamp), _digest_files([self.path(n) for n in names]))
        return self._hash_memo[1]

    def prepare(self, dataset, names, work_dir) -> None:
        missing = [str(self.path(n)) for n in names if not self.path(n).exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} feature file(s) missing, e.g. {missing[:3]} "
                                    f"(expected <folder>/<seq>/<k>.ppm.{self.ext})")

    def get(self, dataset, name: str) -> Features:
        from ..io.npz import read_npz

        seq, k = name.split("/")
        return read_npz(self.path(name), image_size=dataset.image_size(seq, int(k.split(".")[0])))


class CallableSource(FeatureSource):
    """Features from a Python function `get(name) -> Features` (tests, benchmarks, notebooks).

    `config` must describe everything the features depend on: it is hashed into the cache key.
    """

    kind = "callable"

    def __init__(self, label: str, get: Callable[[str], Features], config: dict):
        self.label = self.method = label
        self._get, self._config = get, dict(config)

    def config(self) -> dict:
        return dict(self._config)

    def config_hash(self, dataset) -> str:
        return conf_hash(self.label, self._config)

    def get(self, dataset, name: str) -> Features:
        return self._get(name)


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
def cache_path(cache_dir: Path, method: str, config_hash: str, fingerprint: str) -> Path:
    return Path(cache_dir) / f"{_safe(method)}__{config_hash}__{fingerprint}.json"


def _load_cache(path: Path, identity: dict) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("ignoring unreadable cache %s", path)
        return {}
    if data.get("identity") != identity:  # a hash collision or a hand-edited file: never trust it
        logger.warning("cache %s was written for another configuration; recomputing", path)
        return {}
    return data.get("pairs", {})


def _write_cache(path: Path, identity: dict, pairs: dict) -> None:
    write_text_atomic(path, json.dumps({"identity": identity, "pairs": pairs}, indent=1, sort_keys=True))


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
    pairs = _load_cache(path, identity)
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
                _write_cache(path, identity, pairs)
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


# ---------------------------------------------------------------------------------- outputs
SUMMARY_COLUMNS = ("MMA@1", "MMA@3", "MMA@5", "MMA@10", "MMA-i@3", "MMA-v@3", "MHA@1", "MHA@3", "MHA@5",
                   "AUC@1", "AUC@3", "AUC@5", "rep", "MS", "#feat", "#match")


def summary_row(m: dict) -> list:
    """The values of `SUMMARY_COLUMNS` for one method's result (None where undefined)."""
    thresholds = list(m.get("thresholds") or metrics.MMA_THRESHOLDS)

    def at(curve, t):
        if curve is None or t not in thresholds:
            return None
        return curve[thresholds.index(t)]

    hom = m.get("homography_accuracy") or {}
    auc = m.get("homography_auc") or {}
    return [at(m["mma_overall"], 1), at(m["mma_overall"], 3), at(m["mma_overall"], 5), at(m["mma_overall"], 10),
            at(m["mma_illumination"], 3), at(m["mma_viewpoint"], 3), hom.get("1"), hom.get("3"), hom.get("5"),
            auc.get("1"), auc.get("3"), auc.get("5"), m.get("repeatability"), m.get("matching_score"),
            m.get("n_features"), m.get("n_matches")]


def summary_at(m: dict, t: int):
    """MMA overall at threshold t, or '' when the curve does not reach t."""
    ts = list(m.get("thresholds") or [])
    return m["mma_overall"][ts.index(t)] if t in ts else ""


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def write_outputs(results: dict, out_dir, plot: bool = True) -> dict:
    """results.json, results.md, results.csv, per_sequence.csv and (plot) mma.png in `out_dir`; returns paths."""
    import csv
    import io

    out_dir = Path(out_dir)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md", "csv": out_dir / "results.csv",
             "per_sequence": out_dir / "per_sequence.csv"}
    light = json.loads(json.dumps(results))
    for m in light["methods"].values():
        m.pop("pairs", None)  # per-pair records stay in the cache file
    write_text_atomic(paths["json"], json.dumps(light, indent=1))
    rows = [(label, summary_row(m)) for label, m in results["methods"].items()]
    pub = [(f"{label} (published)", summary_row(p)) for label, p in results.get("published", {}).items()]
    ds = results["dataset"]
    lines = [f"# HPatches sequences: {ds['sequences'].get('i', 0)} illumination + {ds['sequences'].get('v', 0)} "
             f"viewpoint sequences, {ds['n_pairs']} pairs (dataset fingerprint {ds['fingerprint']})", ""]
    if ds.get("excluded"):
        lines += [f"Excluded as in the D2-Net protocol: {', '.join(ds['excluded'])}.", ""]
    r = results["settings"]["ransac"]
    lines += [f"MMA: mutual nearest neighbours, pair-weighted mean of mean(dist <= t). MHA / AUC: corner error of "
              f"a {r['method']} RANSAC homography (threshold {r['threshold']} px, {r['max_iters']} iterations, "
              f"confidence {r['confidence']}). rep / MS: repeatability / matching score at "
              f"{results['settings']['pixel_threshold']} px. #feat per image, #match per pair.", ""]
    lines.append("| method | " + " | ".join(SUMMARY_COLUMNS) + " |")
    lines.append("|---" * (len(SUMMARY_COLUMNS) + 1) + "|")
    for label, row in rows + pub:
        lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in row) + " |")
    for label, m in results["methods"].items():
        lines += ["", f"## {label}", "", f"config hash {m['config_hash']}: `{json.dumps(m['config'], sort_keys=True)}`",
                  "", "| t (px) | " + " | ".join(str(t) for t in m["thresholds"]) + " |",
                  "|---" * (len(m["thresholds"]) + 1) + "|"]
        for key in ("mma_overall", "mma_illumination", "mma_viewpoint", "mma_refined_overall"):
            if m[key] is not None:
                lines.append(f"| {key} | " + " | ".join(f"{v:.3f}" for v in m[key]) + " |")
    write_text_atomic(paths["md"], "\n".join(lines) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "config_hash"] + list(SUMMARY_COLUMNS) + [f"mma_overall_t{t}" for t in range(1, 16)])
    for label, m in results["methods"].items():
        writer.writerow([label, m["config_hash"]] + ["" if v is None else v for v in summary_row(m)]
                        + m["mma_overall"])
    for label, p in results.get("published", {}).items():
        writer.writerow([f"{label} (published)", ""] + ["" if v is None else v for v in summary_row(p)]
                        + [summary_at(p, t) for t in range(1, 16)])
    write_text_atomic(paths["csv"], buf.getvalue())
    buf = io.StringIO()
    writer = csv.writer(buf)
    cols = ["kind", "n_pairs", "mma@1", "mma@3", "mma@5", "mma@10", "n_matches", "homography_accuracy@3",
            "mean_corner_error"]
    writer.writerow(["method", "sequence"] + cols)
    for label, m in results["methods"].items():
        for seq, s in m["per_sequence"].items():
            writer.writerow([label, seq] + ["" if s[c] is None else s[c] for c in cols])
    write_text_atomic(paths["per_sequence"], buf.getvalue())
    if plot:
        from .plots import plot_mma

        paths["png"] = plot_mma(results, out_dir / "mma.png")
    return paths
