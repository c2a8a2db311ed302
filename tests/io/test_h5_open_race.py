"""A journal chunk merged and deleted by another writer while HDF5 opens it: HDF5 then fails with a plain
OSError ("can't retrieve stat info for file"), which the store must treat like a missing chunk (the
reliability benchmark's 4-writer trials hit it once in 80)."""
from __future__ import annotations

import numpy as np
import pytest

import localfeat.io.h5 as h5mod
from localfeat.io.h5 import FeatureStore
from localfeat.types import Features


def _features(seed: int) -> Features:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(5, 8))
    return Features(rng.uniform(0, 9, (5, 2)), rng.uniform(size=5), d / np.linalg.norm(d, axis=1)[:, None], (10, 10))


def _vanishing_open(monkeypatch, victim_suffix: str, at_open: int = 1):
    """h5py.File that, at the `at_open`-th read-open of a path ending in `victim_suffix`, deletes it and fails
    as HDF5 does in the race."""
    real = h5mod.h5py.File
    seen = [0]

    def fake(path, mode="r", *args, **kwargs):
        if mode == "r" and str(path).endswith(victim_suffix):
            seen[0] += 1
        if mode == "r" and str(path).endswith(victim_suffix) and seen[0] == at_open:
            h5mod.Path(path).unlink()
            raise OSError("Unable to synchronously open file (can't retrieve stat info for file)")
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(h5mod.h5py, "File", fake)


def test_open_read_turns_the_vanished_file_race_into_file_not_found(tmp_path, monkeypatch):
    path = tmp_path / "chunk.h5"
    with h5mod.h5py.File(path, "w"):
        pass
    _vanishing_open(monkeypatch, "chunk.h5")
    with pytest.raises(FileNotFoundError, match="vanished"):
        h5mod._open_read(path)


def test_open_read_keeps_other_errors(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(OSError) as info:
        h5mod._open_read(bad)
    assert not isinstance(info.value, FileNotFoundError)


def test_a_chunk_vanishing_during_open_is_skipped_not_a_damaged_store(tmp_path, monkeypatch):
    """As when concurrent writers start on a new store: no main file yet, entries only in journal chunks,
    and another writer's merge deletes a chunk while this one reads the layout from it."""
    path = tmp_path / "f.h5"
    store = FeatureStore(path, "a")
    store.put("a.png", _features(0))
    store.flush()                                    # the first flush creates the main file
    store.put("b.png", _features(1))
    store.flush()                                    # one complete journal chunk, not merged
    chunks = store._chunk_files()
    assert len(chunks) == 1
    path.unlink()                                    # the journal alone, as before the first merge
    # 1st read-open of the chunk: the journal scan; 2nd: reading the layout and kind from each source.
    _vanishing_open(monkeypatch, chunks[0].name, at_open=2)
    other = FeatureStore(path, "r")                  # no StoreError "the file is damaged"
    assert other.file_layout() is None and not chunks[0].exists()
