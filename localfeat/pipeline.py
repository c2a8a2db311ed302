"""The arrows of the pipeline as functions that read and write files: `extract` and `match`.

Both are resumable (what the output already holds is skipped) and crash-safe (see
`localfeat.io.h5`). Images are decoded and resized in a background thread while the model computes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from .engines import check_engine
# The loops and the run report live with the local engine (the Ray engine runs the same loops);
# re-exported here, where callers have always found them.
from .engines.local import RunInterrupted, RunReport, extract_into, match_into, prefetch  # noqa: F401
from .io.h5 import FeatureStore, MatchStore
from .io.images import list_images, name_images
from .pairs import read_pairs
from .registry import get_class, load_extractor

logger = logging.getLogger(__name__)


def image_items(images, root=None) -> list[tuple[str, Path]]:
    """(name, path) of every image of IMAGES: a folder, a glob, a list file, one image, a list of paths,
    or a list of (name, path) tuples (names kept). Names follow `localfeat.io.images.name_images`."""
    if isinstance(images, (str, os.PathLike)):
        base, names = list_images(images, root)
        return [(name, base / name) for name in names]
    images = list(images)
    if images and all(isinstance(i, (tuple, list)) and len(i) == 2 for i in images):
        return [(str(n), Path(p)) for n, p in images]
    if all(isinstance(i, (str, os.PathLike)) for i in images):
        base, names = name_images(images, root)
        return [(name, base / name) for name in names]
    raise TypeError("images must be a folder, a glob, a list file, a list of image paths or a list of "
                    f"(name, path) tuples; got a list holding {type(images[0]).__name__}")


def extract(images: Union[str, os.PathLike, Sequence], output: Union[str, os.PathLike],
            model: str = "sift", conf: Optional[dict] = None, on_error: str = "skip",
            overwrite: bool = False, extractor=None, root: Union[str, os.PathLike, None] = None,
            layout: Optional[str] = None, engine: str = "local", engine_options=None,
            prefetch_images: int = 1) -> RunReport:
    """Extract features of IMAGES into the FeatureStore `output`.

    images:   a folder (recursive), a glob, a text file listing images, a list of image paths, or a
              list of (name, path) tuples. Image names are paths relative to `root` (default: the folder,
              the list file's folder, or the deepest folder holding every image; see `name_images`).
    conf:     the model's config (strict); `resize_max` is one of its keys.
    on_error: 'skip' (report at the end, keep going) or 'fail' (stop at the first bad image;
              what was written stays).
    layout:   None (the file's own; "localfeat" for a new file) or "hloc": descriptors stored (D, N) and
              `image_size` as a dataset, as hloc's readers expect (`localfeat.io.h5.LAYOUTS`).
    engine:   "local" (this process) or "ray" (shards on a Ray cluster, merged into `output`; the same
              arrays in the same order; `engine_options`: a `localfeat.engines.ray.RayOptions` or a dict
              of its fields, e.g. {"address": "head:6379"}; see docs/scale.md).
    prefetch_images: images decoded and resized ahead of the network by a background thread (see
              `extract_into`; 0 = none).
    Ctrl-C raises `RunInterrupted` after saving what was done (rerun to resume).
    """
    check_engine(engine)
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    items = image_items(images, root)
    if extractor is None:
        extractor = load_extractor(model, **(conf or {}))
    if engine == "ray":
        from .engines import ray

        return ray.extract(items, output, extractor=extractor, on_error=on_error, overwrite=overwrite,
                           layout=layout, options=engine_options)
    report = RunReport()
    with FeatureStore(output, mode="w" if overwrite else "a", model=extractor.name,
                      conf=extractor.conf, conf_hash=extractor.conf_hash, layout=layout) as store:
        todo = []
        for name, path in items:
            (report.skipped if name in store else todo).append((name, path))
        try:
            extract_into(store, extractor, todo, report, on_error, prefetch_images=prefetch_images)
        except KeyboardInterrupt as exc:  # the store's __exit__ saves what was done
            raise RunInterrupted(report, output) from exc
    return report


def match(features: Union[str, os.PathLike], output: Union[str, os.PathLike],
          pairs: Union[str, os.PathLike, Sequence[tuple[str, str]]], matcher: str = "nearest_neighbor",
          conf: Optional[dict] = None, overwrite: bool = False, features1: Optional[str] = None,
          layout: Optional[str] = None, engine: str = "local", engine_options=None) -> RunReport:
    """Match `pairs` of images of the FeatureStore `features` into the MatchStore `output`.

    pairs:     a list of (name0, name1), or a pairs file (`localfeat.pairs.read_pairs`; hloc's files work).
    matcher:   a registered matcher name; settings that depend on the extractor come from the model
               recorded in the store unless `conf` sets them (lightglue on ALIKED features loads ALIKED's
               LightGlue weights; see `Matcher.conf_for_features`).
    features1: an optional second FeatureStore holding the second image of each pair.
    layout:    None, "localfeat" or "hloc" (`matches0` / `matching_scores0`, as hloc's readers expect).
    engine:    "local" or "ray" (see `extract`).
    A pair naming an image absent from the features is reported as failed, the others go on.
    Ctrl-C raises `RunInterrupted` after saving what was done (rerun to resume).
    """
    check_engine(engine)
    if isinstance(pairs, (str, os.PathLike)):
        pairs = read_pairs(pairs)
    pairs = [(str(a), str(b)) for a, b in pairs]
    feats0 = FeatureStore(features, mode="r")
    feats1 = FeatureStore(features1, mode="r") if features1 else feats0
    identity = feats0.stored_identity()
    matcher_cls = get_class("matcher", matcher)
    matcher_conf = matcher_cls.conf_for_features(conf or {}, identity[0] if identity else None)
    matcher_obj = matcher_cls(**matcher_conf)  # also checks the config before any engine starts
    report = RunReport()
    if engine == "ray":
        from .engines import ray

        return ray.match(features, output, pairs, matcher=matcher, conf=matcher_conf, overwrite=overwrite,
                         features1=features1, layout=layout, options=engine_options)
    with MatchStore(output, mode="w" if overwrite else "a", layout=layout) as store:
        todo = []
        for a, b in pairs:
            (report.skipped if store.has_pair(a, b) else todo).append((a, b))
        try:
            match_into(store, matcher_obj, feats0, feats1, todo, report)
        except KeyboardInterrupt as exc:  # the store's __exit__ saves what was done
            raise RunInterrupted(report, output) from exc
    return report
