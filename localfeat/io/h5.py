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

Several writers at once (e.g. two `localfeat extract` runs on disjoint image lists into one file)
are safe: journal chunks have per-process names (time, PID, random), appending one holds the
advisory lock ``.<file>.lock`` shared, and a merge holds it exclusive and merges every writer's
chunks (`localfeat.io.lock`). A full disk is a clean `OSError` naming the store: chunks are built
in memory and written with plain writes, and a merge reserves its disk space before HDF5 writes.

Integrity. Datasets carry Fletcher32 checksums, verified on read; damaged or forged contents
(missing datasets, wrong shapes, sizes declared beyond the file's size, broken links, checksum
mismatches) raise `StoreError` naming the file, entry and dataset. The root attribute `kind`
records "features" or "matches", so one cannot be appended to the other.

Readers also accept hloc's layout (descriptors stored (D, N), `image_size` as a dataset;
matches as `matches0` / `matching_scores0`); see `import_imb_features` for the Image
Matching Benchmark layout.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

import h5py
import numpy as np

from ..types import Features, Matches, normalize_rows_if_needed
from .atomic import atomic_path
from .lock import file_lock

logger = logging.getLogger(__name__)

FORMAT_ATTR = "localfeat_format"
FORMAT_VERSION = 1
# Root attribute naming the layout of a file localfeat wrote: "localfeat" (DESIGN.md; the default) or
# "hloc" (what hloc's own readers expect: descriptors (D, N), `image_size` as a dataset, matches as
# `matches0` / `matching_scores0`). Files of other tools carry no FORMAT_ATTR: their layout is "foreign".
LAYOUT_ATTR = "layout"
LAYOUTS = ("localfeat", "hloc")
KIND_ATTR = "kind"  # root attribute: "features" or "matches" (files written before it have none)


class StoreError(ValueError):
    """A store is missing, of the wrong kind, or was written with another config."""


def pair_key(name0: str, name1: str) -> str:
    """Group name of a pair in matches.h5 (hloc's `names_to_pair` convention)."""
    return f"{name0.replace('/', '-')}/{name1.replace('/', '-')}"


def _check_writable_folder(path: Path) -> None:
    """Create the folder of `path` and make sure files can be written there, before any work is done
    (else a read-only folder would fail only at the first flush, after minutes of extraction)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.{os.getpid()}.probe"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise StoreError(f"cannot write {path}: its folder {path.parent} is not writable "
                         f"({exc.strerror or exc}); choose another output path") from exc


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _size(path: Path) -> int:
    """Size of a file in bytes, 0 when it vanished (a chunk merged by another writer)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _open_read(path: Path) -> h5py.File:
    """`h5py.File(path, "r")`, where a file that vanished while HDF5 opened it raises FileNotFoundError like
    a missing one: a journal chunk merged and deleted by another writer between HDF5's open() and its stat
    of the path fails with a plain OSError ("can't retrieve stat info for file")."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as exc:
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, f"{path} vanished while it was being opened") from exc
        raise


def file_entries(path) -> list:
    """Every group and dataset of an HDF5 file in file order, root first: (name, attributes) for groups,
    (name, attributes, dtype, shape, bytes) for datasets. Two files holding the same arrays, attributes and
    order give equal lists (used to check that engines write identical stores)."""
    def attrs_of(obj) -> dict:
        return {k: v if isinstance(v, str) else np.asarray(v).tolist() for k, v in obj.attrs.items()}

    out = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out.append((name, attrs_of(obj), str(obj.dtype), obj.shape, obj[()].tobytes()))
        else:
            out.append((name, attrs_of(obj)))

    with h5py.File(path, "r") as f:
        out.append(("/", attrs_of(f)))
        f.visititems(visit)
    return out


def _reserve(path: Path, nbytes: int) -> None:
    """Allocate `nbytes` of disk space for the file `path` before HDF5 writes to it, so that a full disk
    is a clean `OSError` here rather than a write failure inside HDF5 (which can crash the process).
    HDF5 truncates the file to its real end when it closes it."""
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, nbytes)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        missing = nbytes - os.fstat(fd).st_size - shutil.disk_usage(path.parent).free
        if missing > 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    finally:
        os.close(fd)


@contextlib.contextmanager
def _disk_errors(store: Path, what: str):
    """Turn a full disk (or quota, or file-size limit) into one clear `OSError` naming the store."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        raise OSError(exc.errno, f"{store}: cannot {what} it: {os.strerror(exc.errno)} in {store.parent}. "
                      f"The store holds every entry finished before; free some space and rerun to "
                      f"finish (done entries are skipped)") from None


class _H5Store:
    """Common machinery: main file + journal of complete chunk files (see module docstring)."""

    entry_dataset = ""  # a dataset whose presence marks a group as an entry
    kind = ""  # "features" or "matches", recorded in the root attribute KIND_ATTR

    def __init__(self, path: str | os.PathLike, mode: str = "a", flush_every: int = 64,
                 flush_seconds: float = 5.0, flush_bytes: int = 64 << 20, layout: Optional[str] = None):
        """layout: None (the file's own, "localfeat" for a new file), "localfeat" or "hloc" (see LAYOUT_ATTR).
        Appending to a file of another layout, or to a file another tool wrote, is refused."""
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        self.path = Path(path)
        self.journal_dir = self.path.with_name(self.path.name + ".journal")
        self.mode = mode
        self.flush_every, self.flush_seconds, self.flush_bytes = flush_every, flush_seconds, flush_bytes
        if mode != "r":
            _check_writable_folder(self.path)
        if mode == "w":
            with file_lock(self.path, exclusive=True):
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
        with self._damage_is_store_error("cannot be opened"):
            self._scan()
            self.layout = self._check_layout(layout)
            self._check_kind()

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
        """The journal's complete chunks, oldest first. A concurrent merge may delete the journal folder
        at any moment (also while it is listed): a vanished folder is an empty journal."""
        try:
            with os.scandir(self.journal_dir) as entries:
                names = [e.name for e in entries if e.name.endswith(".h5") and not e.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [self.journal_dir / name for name in sorted(names)]

    def _scan(self) -> None:
        """Index the journal, then the main file. In this order a concurrent merge (which replaces the
        main file before deleting the chunks it merged) cannot hide an entry: a chunk that vanished
        was merged, and the main file read afterwards holds its entries."""
        self._journal_index, self._main_keys = {}, set()
        for chunk in self._chunk_files():
            try:
                with _open_read(chunk) as f:
                    for key in self._entry_keys(f):
                        self._journal_index[key] = chunk
            except FileNotFoundError:  # merged by another writer meanwhile
                continue
            except (OSError, RuntimeError):  # cannot happen for renamed chunks; be robust to foreign files
                logger.warning("ignoring unreadable journal file %s", chunk)
        if self.path.exists():
            try:
                with h5py.File(self.path, "r") as f:
                    self._main_keys = set(self._entry_keys(f))
            except (OSError, RuntimeError, KeyError) as exc:
                raise StoreError(f"{self.path}: cannot list the entries ({exc}); the file is damaged") from exc

    @contextlib.contextmanager
    def _damage_is_store_error(self, what: str):
        """Damaged HDF5 metadata surfaces as many exception types (OSError, RuntimeError, KeyError,
        UnicodeDecodeError, ...): turn them into one `StoreError` naming the file."""
        try:
            yield
        except StoreError:
            raise
        except FileNotFoundError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.path} {what}: the file is damaged ({type(exc).__name__}: {exc})") from exc

    def _open_sources(self) -> Iterator[h5py.File]:
        """The main file, then each journal chunk, opened for reading (chunks merged meanwhile are skipped)."""
        for source in [self.path] + self._chunk_files():
            try:
                f = _open_read(source)
            except FileNotFoundError:
                continue
            with f:
                yield f

    def file_layout(self) -> Optional[str]:
        """Layout of what is already stored: "localfeat", "hloc", "foreign" (entries written by another
        tool, e.g. hloc itself), or None when nothing is stored yet."""
        for f in self._open_sources():
            if FORMAT_ATTR in f.attrs:
                return str(f.attrs.get(LAYOUT_ATTR, "localfeat"))
        return "foreign" if self._main_keys else None

    def _check_layout(self, requested: Optional[str]) -> str:
        existing = self.file_layout()
        if self.mode == "a" and existing == "foreign":
            raise StoreError(
                f"{self.path} was not written by localfeat (e.g. an hloc file): localfeat reads it but does not "
                "append to it, since entries of another model would mix with its own; write to a new file, "
                "or overwrite it")
        if self.mode == "a" and requested is not None and existing is not None and requested != existing:
            raise StoreError(f"{self.path} has the {existing} layout, not {requested}: write to a new file, "
                             f"or overwrite it")
        if existing is not None and existing != "foreign":
            return existing
        return requested or "localfeat"

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
        for attempt in range(2):
            source = self._journal_index.get(key)
            if source is None:
                if key not in self._main_keys:
                    raise KeyError(f"{key!r} is not in {self.path}")
                source = self.path
            try:
                arrays, attrs = self._read_entry(source, key)
                break
            except FileNotFoundError:
                if attempt:
                    raise
                self._scan()  # another writer merged the chunk meanwhile: the entry is in the main file now
        try:
            return reader(arrays, attrs)
        except StoreError:
            raise
        except (KeyError, TypeError, IndexError, ValueError) as exc:  # ContractError is a ValueError
            what = f"has no dataset {exc}" if isinstance(exc, KeyError) else f"is malformed: {exc}"
            raise StoreError(f"{source}: entry {key!r} {what}") from exc

    @staticmethod
    def _read_entry(source: Path, key: str) -> tuple[dict, dict]:
        """Datasets and attributes of the group `key` of `source`; damaged or implausible contents raise
        `StoreError` naming the file, entry and dataset, before anything large is allocated."""
        try:
            f = _open_read(source)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StoreError(f"{source}: not a readable HDF5 file ({exc})") from exc
        with f:
            file_size = os.path.getsize(source)
            try:
                group = f[key]
                if not isinstance(group, h5py.Group):
                    raise StoreError(f"{source}: entry {key!r} is a {type(group).__name__}, not a group")
                names = list(group.keys())
                attrs = {k: v for k, v in group.attrs.items()}
                file_attrs = dict(f.attrs)
            except StoreError:
                raise
            except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
                raise StoreError(f"{source}: entry {key!r} cannot be read ({exc})") from exc
            arrays = {}
            for name in names:
                where = f"{source}: entry {key!r}, dataset {name!r}"
                try:  # dangling or broken links, damaged headers
                    dset = group[name]
                    if not isinstance(dset, h5py.Dataset):
                        continue
                    dtype, shape, compression, fletcher32 = dset.dtype, dset.shape, dset.compression, dset.fletcher32
                except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
                    raise StoreError(f"{where} cannot be opened ({exc})") from exc
                if dtype.kind not in "biuf":
                    raise StoreError(f"{where} has dtype {dtype}, expected numbers")
                nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                # Uncompressed data cannot be larger than the file that holds it; compressed data
                # expands at most ~1000x (deflate's limit). Check before reading, not after allocating.
                limit = file_size if compression is None else 1100 * max(file_size, 1 << 20)
                if nbytes > limit:
                    raise StoreError(f"{where} declares shape {shape} ({nbytes / 2**20:.1f} MiB) but the "
                                     f"file holds {file_size / 2**20:.1f} MiB: the file is damaged or forged")
                try:
                    arrays[name] = dset[()]
                except (OSError, RuntimeError, ValueError) as exc:
                    hint = " (checksum mismatch: the data changed after it was written)" if fletcher32 else ""
                    raise StoreError(f"{where} cannot be read{hint}: {exc}; re-create the entry "
                                     "(rerun with --overwrite, or delete the file)") from exc
            attrs["__file_attrs__"] = file_attrs
        return arrays, attrs

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

    def copy_entry(self, source: "_H5Store", key: str) -> None:
        """Add the entry `key` of the store `source` (same kind and layout) as it is stored: the same
        arrays, dtypes and attributes, byte for byte (the Ray engine merges its shard files with it)."""
        if source.kind != self.kind or source.layout != self.layout:
            raise StoreError(f"cannot copy {key!r} from {source.path} ({source.kind}, {source.layout} layout) "
                             f"into {self.path} ({self.kind}, {self.layout} layout)")
        arrays, attrs = source._read_group(key, lambda arrays, attrs: (arrays, dict(attrs)))
        attrs.pop("__file_attrs__", None)
        self._put(key, arrays, attrs)

    @staticmethod
    def _write_entry(f: h5py.File, key: str, arrays: dict, attrs: dict) -> None:
        if key in f:
            del f[key]
        group = f.create_group(key)
        for name, value in arrays.items():
            # Fletcher32 checksums: a flipped byte is reported on read instead of read silently.
            group.create_dataset(name, data=value, fletcher32=np.ndim(value) > 0)
        for name, value in attrs.items():
            group.attrs[name] = value

    def _root_attrs(self) -> dict:
        return {FORMAT_ATTR: FORMAT_VERSION, LAYOUT_ATTR: self.layout, KIND_ATTR: self.kind}

    def _check_kind(self) -> None:
        """Refuse a features file opened as matches and the other way round (files that record it)."""
        for f in self._open_sources():
            stored = f.attrs.get(KIND_ATTR)
            if stored is not None and str(stored) != self.kind:
                raise StoreError(f"{self.path} is a {stored} store, not a {self.kind} store: "
                                 f"{'read it as such' if self.mode == 'r' else 'choose another output file'}")
            if stored is not None:
                return

    def flush(self) -> None:
        """Write buffered entries as one complete journal chunk.

        The chunk is built in memory and written with plain file writes: a full disk then raises a
        clean `OSError` (HDF5 failing to write a file on a full disk can crash the interpreter). Its
        name is unique per process (time, PID, random), so concurrent writers never replace each
        other's chunks; the shared lock keeps a concurrent merge from deleting the journal under it.
        """
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        data = io.BytesIO()
        with h5py.File(data, "w") as f:
            f.attrs.update(self._root_attrs())
            for key, (arrays, attrs) in self._buffer.items():
                self._write_entry(f, key, arrays, attrs)
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.h5"  # sorted = time order
        chunk = self.journal_dir / name
        with _disk_errors(self.path, "write a journal chunk of"), file_lock(self.path, exclusive=False):
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(chunk) as tmp:
                tmp.write_bytes(data.getbuffer())
        for key in self._buffer:
            self._journal_index[key] = chunk
        self._buffer.clear()
        self._buffer_bytes = 0
        # Keep the main file current for other HDF5 readers: create it at the first flush, and merge
        # when the journal outgrows it (each merge copies the main file, so the total cost stays
        # within a small multiple of the final size).
        journal_bytes = sum(_size(p) for p in self._chunk_files())
        if not self.path.exists() or journal_bytes > max(_size(self.path), 16 << 20):
            self.consolidate()

    def consolidate(self) -> None:
        """Merge the journal into the main file (copy, append, fsync, atomic rename).

        Under the store's exclusive lock, so that concurrent writers merge one at a time and each
        merge starts from the previous one's result; every chunk present (this process's and the
        others') is merged, then deleted. Disk space for the new file is reserved before HDF5 writes
        to it, so a full disk is a clean `OSError` and the previous file stays as it was.
        """
        if self._buffer:
            self.flush()
        with _disk_errors(self.path, "merge the journal into"), file_lock(self.path, exclusive=True):
            chunks = self._chunk_files()
            if not chunks:
                return
            with atomic_path(self.path) as tmp:
                needed = 2 * sum(_size(c) for c in chunks) + (1 << 20)
                if self.path.exists():
                    shutil.copyfile(self.path, tmp)
                else:
                    empty = io.BytesIO()
                    with h5py.File(empty, "w"):
                        pass
                    tmp.write_bytes(empty.getbuffer())
                _reserve(tmp, _size(tmp) + needed)
                with h5py.File(tmp, "a") as out:
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
            # No other writer can add a chunk while the exclusive lock is held, so the whole journal
            # (including temporary files of killed processes) can go.
            for chunk in chunks:
                chunk.unlink(missing_ok=True)
            shutil.rmtree(self.journal_dir, ignore_errors=True)
        self._scan()

    def close(self) -> None:
        if self.mode != "r":
            self.consolidate()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        try:  # keep what was computed, but let the original error be the one reported
            self.close()
        except Exception as close_exc:  # e.g. the disk that failed the run is still full
            same = isinstance(exc, OSError) and getattr(close_exc, "errno", None) == exc.errno
            (logger.debug if same else logger.warning)(
                "%s: could not merge the journal after an error (%s); rerun to finish", self.path, close_exc)


class FeatureStore(_H5Store):
    """features.h5: `put(name, Features)`, `get(name) -> Features`, `names()`, `name in store`."""

    entry_dataset = "keypoints"
    kind = "features"

    def __init__(self, path, mode: str = "a", model: Optional[str] = None, conf: Optional[dict] = None,
                 conf_hash: Optional[str] = None, **kwargs):
        """With `model` and `conf_hash`, appending to a store written by another model/config is refused."""
        self.model, self.conf, self.conf_hash = model, conf, conf_hash
        super().__init__(path, mode, **kwargs)
        if mode == "a" and conf_hash is not None and self._main_keys | set(self._journal_index):
            with self._damage_is_store_error("cannot be opened"):
                existing = self.stored_identity()
            if existing is not None and existing != (model, conf_hash):
                raise StoreError(
                    f"{self.path} holds features of {existing[0]} (config hash {existing[1]}), not "
                    f"{model} (config hash {conf_hash}){self._conf_difference(existing[0], model)}: "
                    "write to a new file, or overwrite it")

    def _root_attrs(self) -> dict:
        attrs = super()._root_attrs()
        if self.model is not None:
            attrs["model"] = self.model
            attrs["conf_hash"] = self.conf_hash or ""
            attrs["conf"] = json.dumps(self.conf or {}, sort_keys=True, default=str)
        return attrs

    def stored_conf(self) -> Optional[dict]:
        """The full extractor config recorded in the store, or None when unknown (e.g. an hloc file)."""
        for f in self._open_sources():
            if "conf" in f.attrs:
                return json.loads(str(f.attrs["conf"]))
        return None

    def _conf_difference(self, stored_model: str, model: Optional[str]) -> str:
        """'; differing keys: k (stored a, now b), ...' for the refusal message, or '' when unknown."""
        stored = self.stored_conf()
        if stored is None or self.conf is None or stored_model != model:
            return ""
        now = json.loads(json.dumps(self.conf, sort_keys=True, default=str))  # the same encoding as stored
        keys = sorted(k for k in set(stored) | set(now) if stored.get(k, "<absent>") != now.get(k, "<absent>"))
        if not keys:
            return ""
        return "; differing keys: " + ", ".join(
            f"{k} (stored {stored.get(k, '<absent>')!r}, now {now.get(k, '<absent>')!r})" for k in keys)

    def stored_identity(self) -> Optional[tuple[str, str]]:
        """(model, conf_hash) recorded in the store, or None when unknown (e.g. an hloc file)."""
        for f in self._open_sources():
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
        if self.layout == "hloc":  # hloc's extract_features: descriptors (D, N), image_size a dataset (W, H)
            arrays["descriptors"] = np.ascontiguousarray(features.descriptors.T)
            arrays["image_size"] = attrs.pop("image_size")
        if self.model is not None:
            attrs["model"] = self.model
            attrs["conf_hash"] = self.conf_hash or ""
        self._put(name, arrays, attrs)

    def get(self, name: str) -> Features:
        def reader(arrays, attrs):
            if "__file_attrs__" in attrs:  # read from a file, else from the write buffer (our layout)
                file_attrs = attrs["__file_attrs__"]
                layout = str(file_attrs.get(LAYOUT_ATTR, "localfeat")) if FORMAT_ATTR in file_attrs else "foreign"
            else:
                layout = self.layout
            desc = np.asarray(arrays["descriptors"])
            n = len(arrays["keypoints"])
            if layout == "hloc":
                desc = desc.T
            elif layout == "foreign" and desc.ndim == 2 and desc.shape[1] == n:
                # hloc stores (D, N), and `image_size` as a dataset: that tells its layout apart when N == D.
                if n and desc.shape[0] == n and "image_size" not in arrays:
                    raise StoreError(
                        f"{self.path}: entry {name!r}: descriptors are {n} x {n} for {n} keypoints, so their "
                        "layout ((N, D) or hloc's (D, N)) cannot be told from the shape, and the file carries no "
                        "hloc marker (an `image_size` dataset); re-export it with localfeat or hloc")
                desc = desc.T
            if "image_size" in attrs:
                size = attrs["image_size"]
            elif "image_size" in arrays:
                size = arrays["image_size"]
            else:
                raise StoreError(f"{self.path}: {name!r} has no image_size")
            scores = arrays.get("scores", arrays.get("keypoint_scores"))  # hloc's newer models: keypoint_scores
            if scores is None:
                scores = np.ones(n, np.float32)
            return Features(keypoints=arrays["keypoints"], scores=scores, descriptors=desc,
                            image_size=tuple(np.asarray(size).tolist()),
                            scales=arrays.get("scales"), orientations=arrays.get("orientations"))
        return self._read_group(name, reader)


class MatchStore(_H5Store):
    """matches.h5: `put(name0, name1, Matches)`, `get(name0, name1) -> Matches`, `pairs()`."""

    entry_dataset = "indices"
    kind = "matches"

    def _is_entry(self, group) -> bool:
        return "indices" in group or "matches0" in group  # ours or hloc's

    def put(self, name0: str, name1: str, matches: Matches, num_keypoints0: Optional[int] = None) -> None:
        """Store the matches of (name0, name1). The hloc layout stores `matches0` (N0,) (index into image 1,
        or -1) and `matching_scores0` (N0,), so it needs `num_keypoints0` = N0."""
        arrays = matches.to_dict()
        if self.layout == "hloc":
            if num_keypoints0 is None:
                raise ValueError(f"{self.path}: the hloc layout needs num_keypoints0 (keypoints of {name0})")
            m0 = np.full(int(num_keypoints0), -1, np.int32)
            scores0 = np.zeros(int(num_keypoints0), np.float32)
            first = matches.indices[:, 0]
            if len(first) and (first.max() >= num_keypoints0 or len(np.unique(first)) != len(first)):
                raise ValueError(f"{self.path}: matches of ({name0}, {name1}) are not one per keypoint of "
                                 f"{name0} (out of range or repeated), which hloc's matches0 cannot store")
            m0[first] = matches.indices[:, 1]
            scores0[first] = matches.scores
            arrays = {"matches0": m0, "matching_scores0": scores0}
        self._put(pair_key(name0, name1), arrays, {"name0": name0, "name1": name1})

    def has_pair(self, name0: str, name1: str) -> bool:
        return self.has_key(pair_key(name0, name1))

    def get(self, name0: str, name1: str, num_keypoints: Optional[tuple[int, int]] = None) -> Matches:
        """Matches of (name0, name1) (or of the stored reverse pair, swapped).

        num_keypoints: (N0, N1), the keypoint counts of the two images; with it, an index out of range
        raises `StoreError` naming the file and pair (every reader that indexes keypoints passes it).
        """
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
            if num_keypoints is not None:
                matches.check_against(*num_keypoints)
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
            with self._damage_is_store_error(f"entry {key!r} cannot be read"):
                try:
                    names = self._pair_names(self._journal_index.get(key, self.path), key)
                except FileNotFoundError:  # the chunk was merged by another writer meanwhile
                    self._scan()
                    names = self._pair_names(self._journal_index.get(key, self.path), key)
            out.append(names)
        return out

    @staticmethod
    def _pair_names(source: Path, key: str) -> tuple[str, str]:
        with _open_read(source) as f:
            attrs = f[key].attrs
            if "name0" in attrs:
                return str(attrs["name0"]), str(attrs["name1"])
        return tuple(key.split("/", 1))


def import_imb_features(folder: str | os.PathLike, store: FeatureStore) -> int:
    """Import the Image Matching Benchmark layout (keypoints.h5, descriptors.h5, optional scores.h5,
    each with one dataset per image key) into `store`. Image sizes are unknown in that layout,
    so they are set to the keypoints' bounding box (rounded up). Returns the number imported."""
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
