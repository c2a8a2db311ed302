"""FeatureStore / MatchStore: layout, resume, crash safety (SIGKILL), foreign layouts."""
import os
import signal
import subprocess
import sys
import time

import cv2
import h5py
import numpy as np
import pytest

from localfeat.pipeline import extract
from localfeat.io.h5 import FeatureStore, MatchStore, StoreError, import_imb_features, pair_key
from localfeat.types import Features, Matches


def make_features(n, seed, d=8, size=(100, 80)):
    rng = np.random.default_rng(seed)
    desc = rng.normal(size=(n, d))
    return Features(rng.uniform(0, 79, (n, 2)), rng.uniform(size=n), desc / np.linalg.norm(desc, axis=1)[:, None],
                    size, scales=rng.uniform(1, 9, n))


def test_layout_round_trip_and_nested_names(tmp_path):
    path = tmp_path / "f.h5"
    feats = {"a.jpg": make_features(5, 0), "sub/dir/b.png": make_features(0, 1)}
    with FeatureStore(path, "w", model="sift", conf={"k": 1}, conf_hash="abc") as store:
        for name, f in feats.items():
            store.put(name, f)
        assert "a.jpg" in store  # visible before closing (buffer)
    assert not (tmp_path / "f.h5.journal").exists()
    with h5py.File(path, "r") as f:  # the DESIGN.md layout, readable by plain h5py
        g = f["sub/dir/b.png"]
        assert set(g.keys()) == {"keypoints", "scores", "descriptors", "scales"}
        assert g["descriptors"].shape == (0, 8) and list(g.attrs["image_size"]) == [100, 80]
        assert f["a.jpg"].attrs["model"] == "sift" and f["a.jpg"].attrs["conf_hash"] == "abc"
    store = FeatureStore(path, "r")
    assert store.names() == ["a.jpg", "sub/dir/b.png"]
    for name, f in feats.items():
        assert store.get(name).equals(f)


def test_append_with_another_config_is_refused(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w", model="sift", conf={}, conf_hash="h1") as store:
        store.put("a", make_features(3, 0))
    with pytest.raises(StoreError, match="holds features of sift \\(config hash h1\\), not sift \\(config hash h2\\)"):
        FeatureStore(path, "a", model="sift", conf={}, conf_hash="h2")
    with FeatureStore(path, "w", model="sift", conf={}, conf_hash="h2") as store:  # overwrite is explicit
        assert len(store) == 0


def test_journal_entries_survive_without_close(tmp_path):
    path = tmp_path / "f.h5"
    store = FeatureStore(path, "w", flush_every=2)
    for i in range(5):
        store.put(f"img{i}", make_features(4, i))
    # No close(): as after a crash. Entries flushed to the journal (and the main file) are visible.
    reopened = FeatureStore(path, "r")
    assert reopened.names() == ["img0", "img1", "img2", "img3"]
    assert reopened.get("img3").equals(make_features(4, 3))
    with h5py.File(path, "r"):
        pass


def test_match_store_pairs_and_swapped_lookup(tmp_path):
    path = tmp_path / "m.h5"
    m = Matches(np.array([[0, 3], [2, 1], [5, 0]]), np.array([0.9, 0.8, 0.7]))
    with MatchStore(path, "w") as store:
        store.put("dir/a.jpg", "b.jpg", m)
    store = MatchStore(path, "r")
    assert store.pairs() == [("dir/a.jpg", "b.jpg")]
    assert pair_key("dir/a.jpg", "b.jpg") == "dir-a.jpg/b.jpg"
    got = store.get("dir/a.jpg", "b.jpg")
    assert np.array_equal(got.indices, m.indices) and np.array_equal(got.scores, m.scores)
    rev = store.get("b.jpg", "dir/a.jpg")
    assert rev.indices.tolist() == [[0, 5], [1, 2], [3, 0]] and np.allclose(rev.scores, [0.7, 0.8, 0.9])


def test_reads_hloc_layout(tmp_path):
    path = tmp_path / "hloc.h5"
    f = make_features(6, 2, d=4)
    with h5py.File(path, "w") as h:
        g = h.create_group("db/1.jpg")
        g["keypoints"] = f.keypoints
        g["scores"] = f.scores
        g["descriptors"] = f.descriptors.T  # hloc: (D, N)
        g["image_size"] = np.array(f.image_size)
        pair = h.create_group("db-1.jpg/db-2.jpg")
        pair["matches0"] = np.array([2, -1, 0, -1])
        pair["matching_scores0"] = np.array([0.5, 0, 0.25, 0], np.float32)
    got = FeatureStore(path, "r").get("db/1.jpg")
    assert np.array_equal(got.descriptors, f.descriptors) and got.image_size == f.image_size
    m = MatchStore(path, "r").get("db/1.jpg", "db/2.jpg")
    assert m.indices.tolist() == [[0, 2], [2, 0]] and np.allclose(m.scores, [0.5, 0.25])


def test_imports_image_matching_benchmark_layout(tmp_path):
    f = make_features(5, 4, d=4)
    for name, data in (("keypoints", np.c_[f.keypoints, np.ones(5)]), ("descriptors", f.descriptors * 3),
                       ("scores", f.scores)):
        with h5py.File(tmp_path / f"{name}.h5", "w") as h:
            h["img_a"] = data
    with FeatureStore(tmp_path / "out.h5", "w") as store:
        assert import_imb_features(tmp_path, store) == 1
    got = FeatureStore(tmp_path / "out.h5", "r").get("img_a")
    assert np.allclose(got.descriptors, f.descriptors, atol=1e-6) and np.array_equal(got.keypoints, f.keypoints)


def _texture(seed, size=128):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 2)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


N_KILL = 260  # images; the journal flushes every 64, so the kill lands after >= 2 flushes


def _extract_cmd(images, out):
    return [sys.executable, "-m", "localfeat.cli", "extract", str(images), "-o", str(out), "--model", "sift"]


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(N_KILL):
        cv2.imwrite(str(images / f"{i:04d}.png"), _texture(i))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reference = tmp_path / "reference.h5"
    extract(images, reference, model="sift")  # uninterrupted, in this process

    out = tmp_path / "killed.h5"
    proc = subprocess.Popen(_extract_cmd(images, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        journal = tmp_path / "killed.h5.journal"
        if out.exists() and journal.exists() and len(list(journal.glob("*.h5"))) >= 2:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "extraction finished before it could be killed: make the run longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    with h5py.File(out, "r"):  # the main file opens
        pass
    partial = FeatureStore(out, "r")
    ref = FeatureStore(reference, "r")
    assert 0 < len(partial) < N_KILL
    for name in partial.names():  # every entry present is complete and right
        assert partial.get(name).equals(ref.get(name))

    rerun = subprocess.run(_extract_cmd(images, out), env=env, capture_output=True, text=True, check=True)
    assert f"{N_KILL - len(partial)} done, {len(partial)} already present, 0 failed" in rerun.stdout
    final = FeatureStore(out, "r")
    assert final.names() == ref.names()
    for name in ref.names():
        assert final.get(name).equals(ref.get(name))
    assert not (tmp_path / "killed.h5.journal").exists()
