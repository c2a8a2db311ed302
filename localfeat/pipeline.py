"""The arrows of the pipeline as functions that read and write files: `extract` and `match`.

Both are resumable (what the output already holds is skipped) and crash-safe (see
`localfeat.io.h5`). Images are decoded in a background thread while the model computes.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from tqdm import tqdm

from .io.h5 import FeatureStore, MatchStore
from .io.images import ImageReadError, list_images, read_image
from .registry import load_extractor, load_matcher
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
            overwrite: bool = False, extractor=None) -> RunReport:
    """Extract features of IMAGES into the FeatureStore `output`.

    images:   a folder (recursive), a glob, a text file listing images, or a list of
              (name, path) tuples.
    conf:     the model's config (strict); `resize_max` is one of its keys.
    on_error: 'skip' (report at the end, keep going) or 'fail' (stop at the first bad image;
              what was written stays).
    """
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if isinstance(images, (str, os.PathLike)):
        root, names = list_images(images)
        items = [(name, root / name) for name in names]
    else:
        items = [(str(n), Path(p)) for n, p in images]
    if extractor is None:
        extractor = load_extractor(model, **(conf or {}))
    report = RunReport()
    with FeatureStore(output, mode="w" if overwrite else "a", model=extractor.name,
                      conf=extractor.conf, conf_hash=extractor.conf_hash) as store:
        todo = []
        for name, path in items:
            (report.skipped if name in store else todo).append((name, path))
        mode = getattr(extractor, "input_mode", "rgb")

        def load(item):
            name, path = item
            try:
                return name, read_image(path, mode), None
            except (ImageReadError, OSError) as exc:
                return name, None, str(exc)

        with ThreadPoolExecutor(max_workers=1) as pool:
            # Decode ahead: the next images are read while the model works on this one.
            for name, image, error in _progress(prefetch(pool, load, todo), len(todo), "extract"):
                if error is None:
                    try:
                        store.put(name, extractor.extract(image))
                        report.done.append(name)
                        continue
                    except (ContractError, ValueError, RuntimeError) as exc:
                        error = f"{type(exc).__name__}: {exc}"
                report.failed.append((name, error))
                logger.warning("skipping %s: %s", name, error)
                if on_error == "fail":
                    raise ImageReadError(f"{name}: {error}")
    return report


def match(features: Union[str, os.PathLike], output: Union[str, os.PathLike],
          pairs: Sequence[tuple[str, str]], matcher: str = "nearest_neighbor",
          conf: Optional[dict] = None, overwrite: bool = False, features1: Optional[str] = None) -> RunReport:
    """Match `pairs` of images of the FeatureStore `features` into the MatchStore `output`.

    A pair naming an image absent from the features is reported as failed, the others go on.
    `features1`: an optional second FeatureStore holding the second image of each pair.
    """
    matcher_obj = load_matcher(matcher, **(conf or {}))
    report = RunReport()
    feats0 = FeatureStore(features, mode="r")
    feats1 = FeatureStore(features1, mode="r") if features1 else feats0
    cache: dict = {}

    def get(store, name):
        key = (id(store), name)
        if key not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[key] = store.get(name)
        return cache[key]

    with MatchStore(output, mode="w" if overwrite else "a") as store:
        todo = []
        for a, b in pairs:
            (report.skipped if store.has_pair(a, b) else todo).append((a, b))
        for a, b in _progress(todo, len(todo), "match"):
            missing = [n for n, s in ((a, feats0), (b, feats1)) if n not in s]
            if missing:
                report.failed.append((f"{a} {b}", f"no features for {missing}"))
                continue
            store.put(a, b, matcher_obj.match(get(feats0, a), get(feats1, b)))
            report.done.append(f"{a} {b}")
    return report
