"""Structure-from-motion with pycolmap: images -> features -> matches -> database -> verified -> sparse model.

    from localfeat.sfm import reconstruct
    summary = reconstruct("photos/", "out/", model="sift", conf={"max_keypoints": 4096})

Every stage reads and writes files in the output folder, so a run can be inspected and resumed:

    OUT/features.h5        extracted features (resumed)
    OUT/pairs.txt          the image pairs matched
    OUT/matches.h5         matches (resumed)
    OUT/database.db        COLMAP database (rewritten each run; keypoints +0.5 at this boundary)
    OUT/models/<k>/        every reconstruction pycolmap produced (binary)
    OUT/sparse/            the largest reconstruction, COLMAP binary format
    OUT/sparse_text/       the same, COLMAP text format
    OUT/summary.json       num_images, num_registered, num_points3d, mean_track_length,
                           mean_reprojection_error (pixels), plus the configuration and timings

Needs pycolmap (``pip install 'localfeat[sfm]'``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from tqdm import tqdm

from .io.atomic import write_text_atomic
from .io.colmap import ColmapError, _require_pycolmap, export_colmap
from .io.h5 import FeatureStore
from .io.images import list_images
from .pairs import exhaustive_pairs, read_pairs, sequential_pairs, write_pairs
from .pipeline import extract, match
from .presets import default_matcher_conf

logger = logging.getLogger(__name__)


# COLMAP's registration thresholds (30 absolute-pose inliers, inlier ratio 0.25) suit large photo
# collections; on small sets they leave weakly connected images (or whole clusters) out. Measured
# on the 10 Sacre Coeur photos (SIFT, 2048 keypoints, seeds 0-5): 9-10 images registered with
# these values, 3-10 with COLMAP's. Override with `mapper_options` / `--mapper`.
DEFAULT_MAPPER_OPTIONS = {"mapper.abs_pose_min_num_inliers": 15, "mapper.abs_pose_min_inlier_ratio": 0.1}

SUMMARY_KEYS = ("num_images", "num_registered", "num_points3d", "mean_track_length", "mean_reprojection_error")

PairsSpec = Union[str, Sequence]


def resolve_pairs(spec: PairsSpec, names: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs from a spec: 'exhaustive', ('sequential', K) / 'sequential K', a pairs file path, or a list of pairs."""
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], (list, tuple)):
        return [(str(a), str(b)) for a, b in spec]
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    parts = spec.split() if isinstance(spec, str) else [str(s) for s in spec]
    if not parts:
        raise ValueError("pairs: empty specification; use 'exhaustive', 'sequential K' or a pairs file")
    if parts[0] == "exhaustive" and len(parts) == 1:
        return exhaustive_pairs(names)
    if parts[0] == "sequential":
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"pairs: 'sequential' needs a window K, e.g. 'sequential 5'; got {' '.join(parts)!r}")
        return sequential_pairs(names, int(parts[1]))
    path = Path(spec if isinstance(spec, str) else " ".join(parts))  # a file name may hold spaces
    if not path.is_file():
        raise FileNotFoundError(f"pairs: {path} is neither 'exhaustive', 'sequential K' nor an existing pairs file")
    return _read_known_pairs(path, names)


def _read_known_pairs(path: Path, names: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs of a pairs file, every name among `names`."""
    pairs = read_pairs(path)
    known = set(names)
    unknown = sorted({n for p in pairs for n in p} - known)
    if unknown:
        raise ValueError(f"pairs file {path} names {len(unknown)} image(s) not among the images, e.g. {unknown[:3]}")
    return pairs


@contextlib.contextmanager
def colmap_log_level(verbose: bool):
    """Silence COLMAP's INFO log lines unless `verbose` (warnings and errors still show)."""
    pycolmap = _require_pycolmap()
    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = old if verbose else max(old, 1)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def _set_option(options, dotted: str, value) -> None:
    """Set `options.a.b = value` for dotted name 'a.b'; an unknown name is a ValueError naming the valid ones."""
    *parents, last = dotted.split(".")
    target = options
    for part in parents:
        if not hasattr(target, part):
            raise ValueError(f"mapper option {dotted!r}: no option group {part!r}")
        target = getattr(target, part)
    if not hasattr(target, last) or last.startswith("_") or callable(getattr(target, last)):
        valid = sorted(k for k in dir(target) if not k.startswith("_") and not callable(getattr(target, k)))
        raise ValueError(f"mapper option {dotted!r} does not exist; valid here: {valid}")
    setattr(target, last, value)


def reconstruction_summary(rec, num_images: int) -> dict:
    """The five summary numbers of a pycolmap Reconstruction (errors in pixels)."""
    return {
        "num_images": int(num_images),
        "num_registered": int(rec.num_reg_images()) if rec is not None else 0,
        "num_points3d": int(rec.num_points3D()) if rec is not None else 0,
        "mean_track_length": float(rec.compute_mean_track_length()) if rec is not None and rec.num_points3D() else 0.0,
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()) if rec is not None and rec.num_points3D() else float("nan"),
    }


def reconstruct(images: Union[str, os.PathLike], output: Union[str, os.PathLike], model: str = "sift",
                conf: Optional[dict] = None, matcher: str = "nearest_neighbor",
                matcher_conf: Optional[dict] = None, pairs: PairsSpec = "exhaustive",
                camera_model: str = "SIMPLE_RADIAL", camera_per_folder: bool = False,
                default_focal_factor: float = 1.2, min_num_inliers: int = 15, seed: Optional[int] = 0,
                num_threads: int = -1, mapper_options: Optional[dict] = None, verbose: bool = False,
                quantize_cell: float = 8.0) -> dict:
    """Run the whole SfM pipeline on IMAGES into the folder `output` (layout in the module docstring).

    conf / matcher_conf: strict configs of the extractor and matcher; matcher_conf None takes
    `presets.default_matcher_conf(model, matcher)` (Lowe's ratio test for SIFT, mutual nearest
    neighbours for other models).
    pairs: 'exhaustive', 'sequential K', a pairs file, or a list of (name0, name1).
    seed: fixes COLMAP's RANSAC and mapper randomness (None = random).
    mapper_options: pycolmap IncrementalPipelineOptions fields over `DEFAULT_MAPPER_OPTIONS`, e.g.
        {"min_model_size": 3, "mapper.abs_pose_min_num_inliers": 30} (dotted names reach nested groups).
    A detector-free `model` (`loftr`, `efficientloftr`, `xfeat_star`; `conf` is its config) matches the image
    pairs directly (OUT/pair_matches.h5); its matches are quantised to grid cells of `quantize_cell` pixels
    (`localfeat.dense.quantize`) into OUT/features.h5 and OUT/matches.h5; `matcher` is then unused.
    Returns the summary dict (also written to OUT/summary.json).
    """
    from .dense import is_detector_free, match_pairs, quantize

    pycolmap = _require_pycolmap()
    # Options first: a wrong option name fails before any work is done.
    pipeline_options = pycolmap.IncrementalPipelineOptions()
    pipeline_options.num_threads = int(num_threads)
    if seed is not None:
        pipeline_options.random_seed = int(seed)
    mapper_options = {**DEFAULT_MAPPER_OPTIONS, **(mapper_options or {})}
    for key, value in mapper_options.items():
        _set_option(pipeline_options, key, value)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    root, names = list_images(images)
    if matcher_conf is None:
        matcher_conf = default_matcher_conf(model, matcher)
    stages = ["extract", "pairs", "match", "database", "verify", "map", "write"]
    timings: dict[str, float] = {}
    bar = tqdm(total=len(stages), desc="sfm", unit="stage", disable=None, position=0)

    def stage(name):
        bar.set_postfix_str(name)
        logger.info("sfm stage %d/%d: %s", stages.index(name) + 1, len(stages), name)
        timings[name] = time.perf_counter()

    def done(name):
        timings[name] = round(time.perf_counter() - timings[name], 3)
        bar.update(1)

    stage("extract")
    features = out / "features.h5"
    detector_free = is_detector_free(model)
    if not detector_free:  # detector-free models (LoFTR family, XFeat*) make their keypoints while matching
        report = extract([(n, root / n) for n in names], features, model=model, conf=conf)
        if report.failed:
            logger.warning("sfm: %d image(s) could not be read and are left out: %s", len(report.failed),
                           ", ".join(n for n, _ in report.failed))
        names = [n for n in names if n in FeatureStore(features, mode="r")]
    done("extract")

    stage("pairs")
    pair_list = resolve_pairs(pairs, names)
    write_pairs(out / "pairs.txt", pair_list)
    done("pairs")

    stage("match")
    if detector_free:  # pair matches, then per-image keypoints by quantising to a grid (tracks form)
        report = match_pairs(root, out / "pair_matches.h5", pair_list, model=model, conf=conf)
        pair_list = [p for p in pair_list if f"{p[0]} {p[1]}" not in dict(report.failed)]
        quantize(out / "pair_matches.h5", features, out / "matches.h5", cell=quantize_cell, pairs=pair_list)
        names = [n for n in names if n in FeatureStore(features, mode="r")]
        matcher, matcher_conf = model, conf or {}
    else:
        match(features, out / "matches.h5", pair_list, matcher=matcher, conf=matcher_conf)
    done("match")

    stage("database")
    database = out / "database.db"
    export_colmap(features, out / "matches.h5", database, images=root, pairs=pair_list,
                  camera_model=camera_model, default_focal_factor=default_focal_factor,
                  camera_per_folder=camera_per_folder, overwrite=True, names=names)
    done("database")

    with colmap_log_level(verbose):
        if seed is not None:
            pycolmap.set_random_seed(int(seed))
        stage("verify")
        options = pycolmap.TwoViewGeometryOptions()
        options.min_num_inliers = int(min_num_inliers)
        if seed is not None:
            options.ransac.random_seed = int(seed)
        # Every matched pair of the database (exactly `pair_list`), without COLMAP's pairs-file reader,
        # which splits lines at spaces and so cannot name "photo 1.jpg".
        verifier = pycolmap.GeometricVerifierOptions()
        verifier.num_threads = int(num_threads)
        pycolmap.geometric_verification(str(database), verifier_options=verifier,
                                         two_view_geometry_options=options)
        done("verify")

        stage("map")
        models_dir = out / "models"
        shutil.rmtree(models_dir, ignore_errors=True)  # no stale models of a previous run
        models_dir.mkdir()
        map_bar = tqdm(total=len(names), desc="register", unit="img", disable=None, position=1, leave=False)
        reconstructions = pycolmap.incremental_mapping(
            str(database), str(root), str(models_dir), options=pipeline_options,
            next_image_callback=lambda: map_bar.update(1))
        map_bar.close()
        done("map")

    stage("write")
    best = max(reconstructions.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()), default=None)
    if best is None:
        logger.warning("sfm: pycolmap registered no images (too few verified matches?)")
    else:
        for folder, writer in (("sparse", best.write_binary), ("sparse_text", best.write_text)):
            shutil.rmtree(out / folder, ignore_errors=True)
            (out / folder).mkdir()
            writer(str(out / folder))
    summary = reconstruction_summary(best, len(names))
    summary.update({
        "num_reconstructions": len(reconstructions),
        "model": model, "conf": conf or {}, "matcher": matcher, "matcher_conf": matcher_conf,
        "num_pairs": len(pair_list), "camera_model": camera_model, "seed": seed,
        "mapper_options": mapper_options,
        "registered_images": sorted(best.images[i].name for i in best.reg_image_ids()) if best else [],
        "timings_s": timings,
    })
    done("write")
    bar.close()
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


__all__ = ["reconstruct", "resolve_pairs", "reconstruction_summary", "SUMMARY_KEYS", "DEFAULT_MAPPER_OPTIONS",
           "ColmapError"]
