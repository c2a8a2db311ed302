"""The arrows of the pipeline as functions that read and write files: `extract` and `match`.

Both are resumable (what the output already holds is skipped) and crash-safe (see
`localfeat.io.h5`). Images are decoded and resized in a background thread while the model computes.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
from tqdm import tqdm

from .io.h5 import FeatureStore, MatchStore
from .io.images import ImageReadError, list_images, name_images, read_image
from .pairs import read_pairs
from .registry import get_class, load_extractor
from .types import ContractError

logger = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a batch run did: names processed, skipped (already done), and failures with reasons."""

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (name, message)

    def summary(self) -> str:
        text = f"{len(self.done)} done, {len(self.skipped)} already present, {len(self.failed)} failed"
        for name, message in self.failed:
            text += f"\n  failed: {name}: {message}"
        return text


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `extract` / `match`: what was done so far is saved in `output` (the store is closed
    cleanly), and rerunning the same call resumes. `report` says what was done."""

    def __init__(self, report: RunReport, output):
        super().__init__(f"interrupted: {report.summary()}")
        self.report, self.output = report, output


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


def prefetch(pool: ThreadPoolExecutor, func, items, depth: int = 2):
    """Yield func(item) for each item in order, computing at most `depth` results ahead in `pool`
    (unlike `pool.map`, which would submit every item at once and hold all results in memory)."""
    pending = deque()
    items = iter(items)
    for item in items:
        pending.append(pool.submit(func, item))
        if len(pending) >= depth:
            break
    for item in items:
        yield pending.popleft().result()
        pending.append(pool.submit(func, item))
    while pending:
        yield pending.popleft().result()


def _progress(iterable, total, desc):
    # disable=None: a bar on a terminal, quiet in logs and CI.
    return tqdm(iterable, total=total, desc=desc, unit="img" if desc == "extract" else "pair",
                disable=None, dynamic_ncols=True)


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
    from .engines import check_engine

    check_engine(engine)
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    items = image_items(images, root)
    if extractor is None:
        extractor = load_extractor(model, **(conf or {}))
    if engine != "local":
        from .engines import run_engine_extract

        return run_engine_extract(engine, items, output, extractor=extractor, model=model, conf=conf,
                                  on_error=on_error, overwrite=overwrite, layout=layout, options=engine_options)
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


# cv2.error / MemoryError: e.g. an image too large for the model's buffers
_EXTRACT_ERRORS = (ContractError, ValueError, RuntimeError, MemoryError, cv2.error)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {getattr(exc, 'err', None) or exc}"


def extract_into(store: FeatureStore, extractor, todo: Sequence[tuple[str, Path]], report: RunReport,
                 on_error: str = "skip", progress: bool = True, prefetch_images: int = 1) -> None:
    """Extract the images `todo` ((name, path), in order) into the open `store`: the one loop of every
    engine (the local engine over all images, a Ray worker over one shard). A bad image (unreadable, or
    one the model rejects) is added to `report.failed` and skipped, or raises `ImageReadError` when
    `on_error` is 'fail'; done names go to `report.done`.

    prefetch_images: how many images a background thread prepares (decode + resize, `Extractor.prepare`)
    ahead of the one the network works on (default 1: image i + 1 while the network runs on image i); memory
    holds at most prefetch_images + 1 prepared images. 0 = everything in this thread. The features are the
    same either way."""
    if isinstance(prefetch_images, bool) or not isinstance(prefetch_images, int) or prefetch_images < 0:
        raise ValueError(f"prefetch_images must be an integer >= 0 (0 = no background thread), "
                         f"got {prefetch_images!r}")
    mode = getattr(extractor, "input_mode", "rgb")
    # An Extractor prepares apart from its network; any other object with `extract` is given decoded images.
    prepare = getattr(extractor, "prepare", None)
    run = extractor.extract_prepared if prepare is not None else extractor.extract

    def load(item):
        name, path = item
        try:
            return name, (prepare(path) if prepare is not None else read_image(path, mode)), None
        except (ImageReadError, OSError) as exc:
            return name, None, str(exc)
        except _EXTRACT_ERRORS as exc:
            return name, None, _error_text(exc)

    with ThreadPoolExecutor(max_workers=1) as pool:
        # Prepare ahead: the next images are decoded and resized while the model works on this one.
        loaded = prefetch(pool, load, todo, prefetch_images + 1) if prefetch_images else map(load, todo)
        for name, image, error in (_progress(loaded, len(todo), "extract") if progress else loaded):
            if error is None:
                try:
                    store.put(name, run(image))
                    report.done.append(name)
                    continue
                except _EXTRACT_ERRORS as exc:
                    error = _error_text(exc)
            report.failed.append((name, error))
            logger.warning("skipping %s: %s", name, error)
            if on_error == "fail":
                raise ImageReadError(f"{name}: {error}")


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
    from .engines import check_engine

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
    if engine != "local":
        from .engines import run_engine_match

        return run_engine_match(engine, features, output, pairs, matcher=matcher, conf=matcher_conf,
                                overwrite=overwrite, features1=features1, layout=layout, options=engine_options)
    with MatchStore(output, mode="w" if overwrite else "a", layout=layout) as store:
        todo = []
        for a, b in pairs:
            (report.skipped if store.has_pair(a, b) else todo).append((a, b))
        try:
            match_into(store, matcher_obj, feats0, feats1, todo, report)
        except KeyboardInterrupt as exc:  # the store's __exit__ saves what was done
            raise RunInterrupted(report, output) from exc
    return report


def match_into(store: MatchStore, matcher_obj, feats0: FeatureStore, feats1: FeatureStore,
               todo: Sequence[tuple[str, str]], report: RunReport, progress: bool = True) -> None:
    """Match the pairs `todo` (in order) into the open `store`: the one loop of every engine. A pair
    naming an image absent from the features is added to `report.failed`; done pairs to `report.done`
    as 'name0 name1'. Features are read through a small cache (a pair list is grouped by first image)."""
    cache: dict = {}

    def get(source, name):
        key = (id(source), name)
        if key not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[key] = source.get(name)
        return cache[key]

    for a, b in (_progress(todo, len(todo), "match") if progress else todo):
        missing = [n for n, s in ((a, feats0), (b, feats1)) if n not in s]
        if missing:
            report.failed.append((f"{a} {b}", f"no features for {missing}"))
            continue
        f0 = get(feats0, a)
        store.put(a, b, matcher_obj.match(f0, get(feats1, b)), num_keypoints0=len(f0))
        report.done.append(f"{a} {b}")
