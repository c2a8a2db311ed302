"""The local engine: the loops that extract images and match pairs into an open store, in this process.

`localfeat.pipeline.extract` / `match` run them over a whole collection; the Ray engine
(`localfeat.engines.ray`) runs the same loops over one shard in each worker, so both engines write the
same arrays in the same order.
"""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
from tqdm import tqdm

from ..io.h5 import FeatureStore, MatchStore
from ..io.images import ImageReadError, read_image
from ..types import ContractError

logger = logging.getLogger(__name__)

# cv2.error / MemoryError: e.g. an image too large for the model's buffers
_EXTRACT_ERRORS = (ContractError, ValueError, RuntimeError, MemoryError, cv2.error)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {getattr(exc, 'err', None) or exc}"


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
