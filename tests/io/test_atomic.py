"""Atomic writes: whole files or nothing, fsynced, and the permissions a plain `open()` would give
(0o666 minus the umask: 0644 under umask 022), never mkstemp's 0600."""
import os
import stat
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from localfeat.io.atomic import (atomic_path, current_umask, new_file_mode, publish, torch_save_atomic,
                                 write_bytes_atomic, write_text_atomic)
from localfeat.io.h5 import FeatureStore, MatchStore
from localfeat.io.npz import write_npz
from localfeat.pairs import write_pairs
from localfeat.types import Features, Matches
from localfeat.viz import save_png
from localfeat.whitening import PCAWhitening


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o027, 0o640)])
def test_new_files_get_the_mode_of_the_umask(tmp_path, mask, expected):
    with umask(mask):
        assert current_umask() == mask
        assert new_file_mode() == expected
        write_text_atomic(tmp_path / "a.txt", "x")
        write_bytes_atomic(tmp_path / "sub" / "b.bin", b"\0\1")
    assert mode_of(tmp_path / "a.txt") == expected
    assert mode_of(tmp_path / "sub" / "b.bin") == expected
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\0\1"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer broke"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer broke")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_the_temporary_keeps_the_extension_and_a_recreated_temporary_is_published(tmp_path):
    with atomic_path(tmp_path / "x.npz") as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        tmp.unlink()  # writers such as pycolmap create their file afresh
        tmp.write_bytes(b"new")
    assert (tmp_path / "x.npz").read_bytes() == b"new"


def test_publish_moves_a_partial_download_into_place_with_the_umask_mode(tmp_path):
    part = tmp_path / "w.pth.part"
    part.write_bytes(b"weights")
    os.chmod(part, 0o600)
    with umask(0o022):
        publish(part, tmp_path / "w.pth")
    assert not part.exists() and (tmp_path / "w.pth").read_bytes() == b"weights"
    assert mode_of(tmp_path / "w.pth") == 0o644


def _features(n=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    desc = rng.normal(size=(n, d)).astype(np.float32)
    return Features(keypoints=rng.uniform(0, 30, (n, 2)).astype(np.float32),
                    scores=rng.uniform(size=n).astype(np.float32),
                    descriptors=desc / np.linalg.norm(desc, axis=1, keepdims=True), image_size=(32, 32))


def test_every_kind_of_output_file_is_0644_under_umask_022(tmp_path):
    """One writer of each kind (HDF5 stores, PNG, npz, torch, pairs, PCA) through the shared helper."""
    with umask(0o022):
        with FeatureStore(tmp_path / "features.h5", mode="a") as store:
            store.put("a.jpg", _features())
            store.put("b.jpg", _features(seed=1))
        with MatchStore(tmp_path / "matches.h5", mode="a") as store:
            store.put("a.jpg", "b.jpg", Matches(np.array([[0, 1], [2, 3]]), np.array([0.9, 0.5], np.float32)))
        save_png(tmp_path / "p.png", np.zeros((4, 4, 3), np.uint8))
        write_npz(tmp_path / "a.jpg.r2d2", _features())
        torch_save_atomic({"w": torch.ones(2)}, tmp_path / "ckpt" / "last.pt")
        write_pairs(tmp_path / "pairs.txt", [("a.jpg", "b.jpg")])
        PCAWhitening.fit(np.random.default_rng(0).normal(size=(50, 8)), dim=4).save(tmp_path / "pca.npz")
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"features.h5", "matches.h5", "p.png", "a.jpg.r2d2", "last.pt", "pairs.txt",
                                       "pca.npz"}
    assert {p.name: oct(mode_of(p)) for p in files} == {p.name: oct(0o644) for p in files}
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert FeatureStore(tmp_path / "features.h5", mode="r").names() == ["a.jpg", "b.jpg"]
