"""Crash-safe, resumable HDF5 stores of features and matches.

Layout (DESIGN.md):
- features.h5: one group per image, named by the image path relative to the image root
  (nested names are nested groups), holding `keypoints` (N, 2), `scores` (N,),
  `descriptors` (N, D), optional `scales`, `orientations`; attributes `image_size` (W, H),
  `model` and `conf_hash`.
- matches.h5: group `<name0>/<name1>` ('/' inside an image name becomes '-', as in hloc; the
  exact names are kept in the attributes `name0`, `name1`) holding `indices` (M, 2) and `scores` (M,).

Crash safety. HDF5 has no journal: a process killed while it modifies an HDF5 file can leave
it unreadable. So the main file is never modified in place. New entries are buffered and
written in small, complete HDF5 files in ``<file>.journal/`` (each written to a temporary
name, fsynced, and renamed); on `close()` (and whenever the journal outgrows the main file) the journal is
merged into a copy of the main file, which then atomically replaces it. After a SIGKILL at any moment, the main file is the
previous complete version, every journal file is complete, and reopening the store sees the
entries of both, so a rerun skips them. Readers of this class see journal entries too; other
HDF5 readers see them once the writing run has closed the store.

Readers also accept hloc's layout (descriptors stored (D, N), `image_size` as a dataset;
matches as `matches0` / `matching_scores0`); see `import_imb_features` for the Image
Matching Benchmark layout.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

import h5py
import numpy as np

from ..types import Features, Matches
from .atomic import atomic_path

logger = logging.getLogger(__name__)

FORMAT_ATTR = "localfeat_format"
FORMAT_VERSION = 1


class StoreError(ValueError):
    """A store is missing, of the wrong kind, or was written with another config."""


def pair_key(name0: str, name1: str) -> str:
    """Group name of a pair in matches.h5 (hloc's `names_to_pair` convention)."""
    return f"{name0.replace('/', '-')}/{name1.replace('/', '-')}"


class _H5Store:
    """Common machinery: main file + journal of complete chunk files (see module docstring)."""

    entry_dataset = ""  # a dataset whose presence marks a group as an entry

    def __init__(self, path: str | os.PathLike, mode: str = "a", flush_every: int = 64,
                 flush_seconds: float = 5.0, flush_bytes: int = 64 << 20):
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        self.path = Path(path)
        self.journal_dir = self.path.with_name(self.path.name + ".journal")
        self.mode = mode
        self.flush_every, self.flush_seconds, self.flush_bytes = flush_every, flush_seconds, flush_bytes
        if mode == "w":
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.journal_dir, ignore_errors=True)
        if mode == "r" and not self.path.exists() and not self.journal_dir.exists():
            raise FileNotFoundError(f"{self.path}: no such store")
        if self.path.exists():
            try:
                with h5py.File(self.path, "r"):
                    pass
            except OSError as exc:
                raise StoreError(f"{self.path} is not a readable HDF5 file ({exc})") from exc
        self._buffer: dict[str, tuple[dict, dict]] = {}
        self._buffer_bytes = 0
        self._last_flush = time.monotonic()
        self._journal_index: dict[str, Path] = {}
        self._main_keys: set[str] = set()
        self._scan()

    # ------------------------------------------------------------------ reading
    def _entry_keys(self, f: h5py.File) -> list[str]:
        keys = []

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and self._is_entry(obj):
                keys.append(name)

        f.visititems(visit)
        return keys

    def _is_entry(self, group: h5py.Group) -> bool:
        return self.entry_dataset in group

    def _chunk_files(self) -> list[Path]:
        if not self.journal_dir.is_dir():
            return []
        return sorted(p for p in self.journal_dir.glob("*.h5") if not p.name.startswith("."))

    def _scan(self) -> None:
        if self.path.exists():
            with h5py.File(self.path, "r") as f:
                self._main_keys = set(self._entry_keys(f))
        for chunk in self._chunk_files():
            try:
                with h5py.File(chunk, "r") as f:
                    for key in self._entry_keys(f):
                        self._journal_index[key] = chunk
            except OSError:  # cannot happen for renamed chunks; be robust to foreign files
                logger.warning("ignoring unreadable journal file %s", chunk)

    def keys(self) -> list[str]:
        return sorted(self._main_keys | set(self._journal_index) | set(self._buffer))

    def has_key(self, key: str) -> bool:
        return key in self._buffer or key in self._journal_index or key in self._main_keys

    def __len__(self) -> int:
        return len(self.keys())

    def _read_group(self, key: str, reader) :
        if key in self._buffer:
            arrays, attrs = self._buffer[key]
            return reader(arrays, attrs)
        source = self._journal_index.get(key)
        if source is None:
            if key not in self._main_keys:
                raise KeyError(f"{key!r} is not in {self.path}")
            source = self.path
        with h5py.File(source, "r") as f:
            group = f[key]
            arrays = {k: v[()] for k, v in group.items() if isinstance(v, h5py.Dataset)}
            attrs = {k: v for k, v in group.attrs.items()}
            attrs["__file_attrs__"] = dict(f.attrs)
        return reader(arrays, attrs)

    # ------------------------------------------------------------------ writing
    def _check_writable(self):
        if self.mode == "r":
            raise StoreError(f"{self.path} was opened read-only")

    def _put(self, key: str, arrays: dict, attrs: dict) -> None:
        self._check_writable()
        self._buffer[key] = (arrays, attrs)
        self._buffer_bytes += sum(np.asarray(a).nbytes for a in arrays.values())
        if (len(self._buffer) >= self.flush_every or self._buffer_bytes >= self.flush_bytes
                or time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    @staticmethod
    def _write_entry(f: h5py.File, key: str, arrays: dict, attrs: dict) -> None:
        if key in f:
            del f[key]
        group = f.create_group(key)
        for name, value in arrays.items():
            group.create_dataset(name, data=value)
        for name, value in attrs.items():
            group.attrs[name] = value

    def _root_attrs(self) -> dict:
        return {FORMAT_ATTR: FORMAT_VERSION}

    def flush(self) -> None:
        """Write buffered entries as one complete journal chunk."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        existing = self._chunk_files()
        number = int(existing[-1].stem) + 1 if existing else 0
        chunk = self.journal_dir / f"{number:08d}.h5"
        with atomic_path(chunk) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs.update(self._root_attrs())
                for key, (arrays, attrs) in self._buffer.items():
                    self._write_entry(f, key, arrays, attrs)
        for key in self._buffer:
            self._journal_index[key] = chunk
        self._buffer.clear()
        self._buffer_bytes = 0
        # Keep the main file current for other HDF5 readers: create it at the first flush, and merge
        # when the journal outgrows it (each merge copies the main file, so the total cost stays
        # within a small multiple of the final size).
        journal_bytes = sum(p.stat().st_size for p in self._chunk_files())
        if not self.path.exists() or journal_bytes > max(self.path.stat().st_size, 16 << 20):
            self.consolidate()

    def consolidate(self) -> None:
        """Merge the journal into the main file (copy, append, fsync, atomic rename)."""
        if self._buffer:
            self.flush()
        chunks = self._chunk_files()
        if not chunks:
            return
        with atomic_path(self.path) as tmp:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
                mode = "a"
            else:
                mode = "w"
            with h5py.File(tmp, mode) as out:
                out.attrs.update(self._root_attrs())
                for chunk in chunks:
                    with h5py.File(chunk, "r") as f:
                        for key in self._entry_keys(f):
                            if key in out:
                                del out[key]
                            parent = os.path.dirname(key)
                            if parent:
                                out.require_group(parent)
                            f.copy(f[key], out, name=key)
        # The main file now holds everything; a crash before this cleanup only leaves duplicates.
        for chunk in chunks:
            chunk.unlink(missing_ok=True)
        shutil.rmtree(self.journal_dir, ignore_errors=True)
        self._main_keys |= set(self._journal_index)
        self._journal_index.clear()

    def close(self) -> None:
        if self.mode != "r":
            self.consolidate()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()


class FeatureStore(_H5Store):
    """features.h5: `put(name, Features)`, `get(name) -> Features`, `names()`, `name in store`."""

    entry_dataset = "keypoints"

    def __init__(self, path, mode: str = "a", model: Optional[str] = None, conf: Optional[dict] = None,
                 conf_hash: Optional[str] = None, **kwargs):
        """With `model` and `conf_hash`, appending to a store written by another model/config is refused."""
        self.model, self.conf, self.conf_hash = model, conf, conf_hash
        super().__init__(path, mode, **kwargs)
        if mode == "a" and conf_hash is not None and self._main_keys | set(self._journal_index):
            existing = self.stored_identity()
            if existing is not None and existing != (model, conf_hash):
                raise StoreError(
                    f"{self.path} holds features of {existing[0]} (config hash {existing[1]}), not "
                    f"{model} (config hash {conf_hash}): write to a new file, or overwrite it")

    def _root_attrs(self) -> dict:
        attrs = super()._root_attrs()
        if self.model is not None:
            attrs["model"] = self.model
            attrs["conf_hash"] = self.conf_hash or ""
            attrs["conf"] = json.dumps(self.conf or {}, sort_keys=True, default=str)
        return attrs

    def stored_identity(self) -> Optional[tuple[str, str]]:
        """(model, conf_hash) recorded in the store, or None when unknown (e.g. an hloc file)."""
        for source in [self.path] + self._chunk_files():
            if source.exists():
                with h5py.File(source, "r") as f:
                    if "model" in f.attrs:
                        return str(f.attrs["model"]), str(f.attrs.get("conf_hash", ""))
        return None

    def names(self) -> list[str]:
        return self.keys()

    def __contains__(self, name: str) -> bool:
        return self.has_key(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def put(self, name: str, features: Features) -> None:
        arrays = {k: v for k, v in features.to_dict().items() if k != "image_size"}
        attrs = {"image_size": np.asarray(features.image_size, np.int64)}
        if self.model is not None:
            attrs["model"] = self.model
            attrs["conf_hash"] = self.conf_hash or ""
        self._put(name, arrays, attrs)

    def get(self, name: str) -> Features:
        def reader(arrays, attrs):
            file_attrs = attrs.get("__file_attrs__", {})
            ours = FORMAT_ATTR in file_attrs or "__file_attrs__" not in attrs
            desc = np.asarray(arrays["descriptors"])
            n = len(arrays["keypoints"])
            if not ours and desc.ndim == 2 and desc.shape[0] != n and desc.shape[1] == n:
                desc = desc.T  # hloc stores (D, N)
            if "image_size" in attrs:
                size = attrs["image_size"]
            elif "image_size" in arrays:
                size = arrays["image_size"]
            else:
                raise StoreError(f"{self.path}: {name!r} has no image_size")
            scores = arrays.get("scores")
            if scores is None:
                scores = np.ones(n, np.float32)
            return Features(keypoints=arrays["keypoints"], scores=scores, descriptors=desc,
                            image_size=tuple(np.asarray(size).tolist()),
                            scales=arrays.get("scales"), orientations=arrays.get("orientations"))
        return self._read_group(name, reader)


class MatchStore(_H5Store):
    """matches.h5: `put(name0, name1, Matches)`, `get(name0, name1) -> Matches`, `pairs()`."""

    entry_dataset = "indices"

    def _is_entry(self, group) -> bool:
        return "indices" in group or "matches0" in group  # ours or hloc's

    def put(self, name0: str, name1: str, matches: Matches) -> None:
        self._put(pair_key(name0, name1), matches.to_dict(), {"name0": name0, "name1": name1})

    def has_pair(self, name0: str, name1: str) -> bool:
        return self.has_key(pair_key(name0, name1))

    def get(self, name0: str, name1: str) -> Matches:
        key, swapped = pair_key(name0, name1), False
        if not self.has_key(key) and self.has_key(pair_key(name1, name0)):
            key, swapped = pair_key(name1, name0), True

        def reader(arrays, attrs):
            if "indices" in arrays:
                matches = Matches(arrays["indices"], arrays["scores"])
            else:  # hloc: matches0[i] = j or -1
                m0 = np.asarray(arrays["matches0"]).astype(np.int64)
                valid = m0 > -1
                scores = arrays.get("matching_scores0", np.ones(len(m0), np.float32))
                matches = Matches(np.stack([np.flatnonzero(valid), m0[valid]], 1), np.asarray(scores)[valid])
            if swapped:
                order = np.argsort(matches.indices[:, 1], kind="stable")
                matches = Matches(matches.indices[order][:, ::-1], matches.scores[order])
            return matches
        return self._read_group(key, reader)

    def pairs(self) -> list[tuple[str, str]]:
        """(name0, name1) of every stored pair (exact names when written by localfeat)."""
        out = []
        for key in self.keys():
            if key in self._buffer:
                attrs = self._buffer[key][1]
                out.append((attrs["name0"], attrs["name1"]))
                continue
            source = self._journal_index.get(key, self.path)
            with h5py.File(source, "r") as f:
                attrs = f[key].attrs
                if "name0" in attrs:
                    out.append((str(attrs["name0"]), str(attrs["name1"])))
                else:
                    out.append(tuple(key.split("/", 1)))
        return out


def import_imb_features(folder: str | os.PathLike, store: FeatureStore) -> int:
    """Import the Image Matching Benchmark layout (keypoints.h5, descriptors.h5, optional scores.h5,
    each with one dataset per image key) into `store`. Image sizes are unknown in that layout,
    so they are set to the keypoints' bounding box (rounded up). Returns the number imported."""
    from .npz import normalize_rows_if_needed

    folder = Path(folder)
    count = 0
    with h5py.File(folder / "keypoints.h5", "r") as fk, h5py.File(folder / "descriptors.h5", "r") as fd:
        fs = h5py.File(folder / "scores.h5", "r") if (folder / "scores.h5").exists() else None
        try:
            for key in fk.keys():
                kpts = fk[key][()][:, :2]
                desc = fd[key][()]
                scores = fs[key][()] if fs is not None else np.ones(len(kpts), np.float32)
                if desc.dtype != np.uint8:
                    desc = normalize_rows_if_needed(desc)
                size = (int(np.ceil(kpts[:, 0].max() + 1)) if len(kpts) else 1,
                        int(np.ceil(kpts[:, 1].max() + 1)) if len(kpts) else 1)
                store.put(key, Features(kpts, np.asarray(scores).reshape(-1), desc, size))
                count += 1
        finally:
            if fs is not None:
                fs.close()
    return count
