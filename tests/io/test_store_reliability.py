"""Reliability of the stores (issue 19): concurrent writers, full disks, malformed and corrupt files,
out-of-range match indices, hloc files whose N equals D."""
import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from localfeat.io.h5 import FeatureStore, MatchStore, StoreError
from localfeat.types import ContractError, Features, Matches


def features_for(name: str, n: int = 6, d: int = 8) -> Features:
    """Deterministic features of an image name (so that any process can check any entry)."""
    rng = np.random.default_rng(sum(name.encode()) * 7919 + len(name))
    desc = rng.normal(size=(n, d))
    return Features(rng.uniform(0, 60, (n, 2)), rng.uniform(size=n), desc / np.linalg.norm(desc, axis=1)[:, None],
                    (64, 48))


WRITER = textwrap.dedent("""
    import sys, time, random
    from test_store_reliability import features_for
    from localfeat.io.h5 import FeatureStore
    path, names = sys.argv[1], sys.argv[2:]
    random.seed(hash(tuple(names)))
    with FeatureStore(path, "a", model="m", conf={}, conf_hash="h", flush_every=2) as store:
        for name in names:
            if name not in store:
                store.put(name, features_for(name))
                time.sleep(random.uniform(0, 0.004))
    print("ok", len(names))
""")


def run_writers(path, name_lists):
    # The writers import `features_for` from this module: its folder goes first on their path.
    path_entries = [os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in path_entries if p))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), *names], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for names in name_lists]
    return [(p.wait(timeout=120), *p.communicate()) for p in procs]


@pytest.mark.parametrize("writers,overlap", [(2, False), (4, False), (4, True)])
def test_concurrent_writers_lose_nothing(tmp_path, writers, overlap):
    for trial in range(3):
        path = tmp_path / f"t{trial}" / "features.h5"
        if overlap:  # every writer does half of its list in common with the next one
            name_lists = [[f"img{(w * 10 + i) % (writers * 10):03d}.png" for i in range(20)] for w in range(writers)]
        else:
            name_lists = [[f"w{w}/img{i:03d}.png" for i in range(20)] for w in range(writers)]
        results = run_writers(path, name_lists)
        for rc, out, err in results:
            assert rc == 0 and err == "", err
        expected = sorted({n for names in name_lists for n in names})
        store = FeatureStore(path, "r")
        assert store.names() == expected
        for name in expected:
            assert store.get(name).equals(features_for(name))
        assert not path.with_name("features.h5.journal").exists()  # every chunk merged, none left behind
        with h5py.File(path, "r") as f:  # the main file alone holds everything
            found = []
            f.visititems(lambda key, obj: found.append(key) if key.endswith("/keypoints") else None)
            assert sorted(k[: -len("/keypoints")] for k in found) == expected


def test_a_journal_merged_while_it_is_listed_is_read_from_the_main_file(tmp_path, monkeypatch):
    """The race behind a rare failure of the test above: another writer merges the journal (and deletes
    its folder) between a store's check that the folder exists and its listing of the chunks."""
    path = tmp_path / "features.h5"
    opts = dict(model="m", conf={}, conf_hash="h", flush_every=1000)
    with FeatureStore(path, "a", **opts) as store:
        store.put("a.png", features_for("a.png"))
    writer = FeatureStore(path, "a", **opts)
    writer.put("b.png", features_for("b.png"))
    writer.flush()  # one chunk in the journal, too small to trigger a merge
    journal = path.with_name("features.h5.journal")
    assert len(list(journal.iterdir())) == 1
    real_scandir, merged = os.scandir, []

    def scandir_while_another_writer_merges(folder):
        if not merged and os.fspath(folder) == os.fspath(journal):
            merged.append(True)
            FeatureStore(path, "a", **opts).consolidate()
            assert not journal.exists()
        return real_scandir(folder)

    monkeypatch.setattr(os, "scandir", scandir_while_another_writer_merges)
    reader = FeatureStore(path, "r")
    assert merged and reader.names() == ["a.png", "b.png"]
    assert reader.get("b.png").equals(features_for("b.png"))
    writer.close()


# ------------------------------------------------------------------------------------------- disk full
FILLER = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from localfeat.io.h5 import MatchStore
    from localfeat.types import Matches
    path, limit = sys.argv[1], int(sys.argv[2])
    # A file-size limit makes every write past `limit` bytes fail (EFBIG), like a full disk (ENOSPC) does;
    # HDF5 writing its own file there crashes the interpreter (exit 139), which is what this guards.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    idx = np.arange(8000).reshape(-1, 2)
    try:
        with MatchStore(path, "a", flush_every=8) as store:
            for i in range(400):
                store.put(f"new{i}", "b", Matches(idx, np.full(len(idx), i, np.float32)))
    except OSError as exc:
        print("ERROR", exc.errno, exc)
        sys.exit(1)
""")


@pytest.mark.parametrize("headroom", [2_000, 40_000, 300_000])
def test_full_disk_is_a_clean_error_and_keeps_the_old_file(tmp_path, headroom):
    path = tmp_path / "matches.h5"
    old = {f"old{i}": Matches(np.array([[i, i + 1], [i + 2, i]]), np.array([0.5, 0.25])) for i in range(10)}
    with MatchStore(path, "w") as store:
        for name, m in old.items():
            store.put(name, "b", m)
    limit = path.stat().st_size + headroom
    proc = subprocess.run([sys.executable, "-c", FILLER, str(path), str(limit)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]  # not -11 / 139
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith(f"ERROR {errno.EFBIG} ") and str(path) in line and "rerun" in line
    assert "Traceback" not in proc.stderr
    store = MatchStore(path, "r")  # the previous file opens, with every old entry intact
    for name, m in old.items():
        got = store.get(name, "b")
        assert np.array_equal(got.indices, m.indices) and np.array_equal(got.scores, m.scores)
    for a, b in store.pairs():  # whatever was finished before the disk filled is whole
        if a.startswith("new"):
            got = store.get(a, b)
            assert got.indices.shape == (4000, 2) and np.all(got.scores == float(a[3:]))


def test_full_disk_during_merge_leaves_the_main_file_alone(tmp_path, monkeypatch):
    path = tmp_path / "features.h5"
    with FeatureStore(path, "w") as store:
        store.put("a", features_for("a"))
    before = path.read_bytes()
    store = FeatureStore(path, "a")
    store.put("b", features_for("b"))
    store.flush()

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(OSError, match="cannot merge the journal into it: No space left on device") as info:
        store.consolidate()
    assert info.value.errno == errno.ENOSPC and str(path) in str(info.value)
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no half-written copy left
    monkeypatch.undo()
    reopened = FeatureStore(path, "a")  # nothing lost: "b" waits in the journal, and merges once there is room
    assert reopened.names() == ["a", "b"]
    reopened.close()
    assert FeatureStore(path, "r").get("b").equals(features_for("b"))
    assert not path.with_name("features.h5.journal").exists()


# ----------------------------------------------------------------------------------- malformed stores
def _foreign_entry(path, name="a.jpg", **datasets):
    with h5py.File(path, "w") as f:
        g = f.create_group(name)
        for key, value in datasets.items():
            if isinstance(value, tuple):  # a declared shape, no data
                g.create_dataset(key, shape=value, dtype="f4")
            else:
                g[key] = value


def test_malformed_feature_entries_name_file_entry_and_dataset(tmp_path):
    f = features_for("x")
    cases = {
        "no_desc": (dict(keypoints=f.keypoints, image_size=np.array([64, 48])),
                    "entry 'a.jpg' has no dataset 'descriptors'"),
        "scalar_kpts": (dict(keypoints=np.float32(3), descriptors=f.descriptors, image_size=np.array([64, 48])),
                        "entry 'a.jpg' is malformed"),
        "bad_shape": (dict(keypoints=np.zeros((6, 3), np.float32), descriptors=f.descriptors,
                           image_size=np.array([64, 48])), "keypoints has shape \\(6, 3\\), expected \\(N, 2\\)"),
        "huge": (dict(keypoints=(2_000_000_000, 2), descriptors=f.descriptors, image_size=np.array([64, 48])),
                 "dataset 'keypoints' declares shape \\(2000000000, 2\\) \\(15258.8 MiB\\) but the file holds"),
        "strings": (dict(keypoints=np.array([b"ab", b"cd"]), descriptors=f.descriptors,
                         image_size=np.array([64, 48])), "dataset 'keypoints' has dtype"),
    }
    for label, (datasets, message) in cases.items():
        path = tmp_path / f"{label}.h5"
        _foreign_entry(path, **datasets)
        assert path.stat().st_size < 20_000  # the "huge" case declares 15 GiB in a few KB
        with pytest.raises(StoreError, match=message) as info:
            FeatureStore(path, "r").get("a.jpg")
        assert str(path) in str(info.value), label


def test_dangling_links_are_store_errors(tmp_path):
    path = tmp_path / "links.h5"
    f = features_for("x")
    _foreign_entry(path, keypoints=f.keypoints, image_size=np.array([64, 48]))
    with h5py.File(path, "a") as h:
        h["a.jpg/descriptors"] = h5py.SoftLink("/nowhere")
        h["a.jpg/scores"] = h5py.ExternalLink(str(tmp_path / "absent.h5"), "/x")
    with pytest.raises(StoreError, match=f"{path}: entry 'a.jpg', dataset '(descriptors|scores)' cannot be opened"):
        FeatureStore(path, "r").get("a.jpg")


def test_every_flipped_byte_in_stored_data_is_reported(tmp_path):
    path = tmp_path / "features.h5"
    feats = features_for("a.jpg", n=10)
    with FeatureStore(path, "w") as store:
        store.put("a.jpg", feats)
    with h5py.File(path, "r") as h:
        offsets = {}
        for name in ("keypoints", "descriptors", "scores"):
            info = h["a.jpg"][name].id.get_chunk_info(0)
            offsets[name] = (info.byte_offset, info.size)
    data = bytearray(path.read_bytes())
    flips = 0
    for name, (start, size) in offsets.items():
        for pos in range(start, start + size, 3):  # every third byte of the data and its checksum
            data[pos] ^= 0xFF
            path.write_bytes(data)
            with pytest.raises(StoreError, match=f"dataset '{name}' cannot be read \\(checksum mismatch"):
                FeatureStore(path, "r").get("a.jpg")
            data[pos] ^= 0xFF
            flips += 1
    assert flips > 100
    path.write_bytes(data)
    assert FeatureStore(path, "r").get("a.jpg").equals(feats)


# ------------------------------------------------------------------------------------- match indices
def test_out_of_range_and_overflowing_match_indices_are_refused(tmp_path):
    path = tmp_path / "matches.h5"
    with MatchStore(path, "w") as store:
        store.put("a.jpg", "b.jpg", Matches(np.array([[0, 1], [5, 1_000_000]]), np.array([0.5, 0.5])))
    store = MatchStore(path, "r")
    assert store.get("a.jpg", "b.jpg").indices[1, 1] == 1_000_000  # without counts: read as stored
    with pytest.raises(StoreError, match=f"{path}: entry 'a.jpg/b.jpg' is malformed: indices\\[:, 1\\] reaches "
                                         "1000000 but image 1 has only 6 keypoints"):
        store.get("a.jpg", "b.jpg", num_keypoints=(6, 6))
    with pytest.raises(StoreError, match="indices\\[:, 0\\] reaches 1000000 but image 0 has only 6"):
        store.get("b.jpg", "a.jpg", num_keypoints=(6, 6))  # the reverse pair, swapped
    with pytest.raises(ContractError, match="indices holds 18446744073709551615, beyond int64"):
        Matches(np.array([[0, 2**64 - 1]], np.uint64))


def test_export_colmap_refuses_indices_beyond_the_keypoints(tmp_path):
    pytest.importorskip("pycolmap")
    from localfeat.io.colmap import export_colmap

    feats, matches = tmp_path / "features.h5", tmp_path / "matches.h5"
    with FeatureStore(feats, "w") as store:
        for name in ("a.jpg", "b.jpg"):
            store.put(name, features_for(name))
    with MatchStore(matches, "w") as store:
        store.put("a.jpg", "b.jpg", Matches(np.array([[0, 1], [2, 1_000_000]])))
    with pytest.raises(StoreError, match="entry 'a.jpg/b.jpg' is malformed: indices\\[:, 1\\] reaches 1000000"):
        export_colmap(feats, matches, tmp_path / "db.db")
    assert not (tmp_path / "db.db").exists()


# ------------------------------------------------------------------------------------------ hloc N == D
def test_hloc_file_with_as_many_keypoints_as_dimensions(tmp_path):
    feats = features_for("a.jpg", n=16, d=16)
    path = tmp_path / "hloc.h5"
    with h5py.File(path, "w") as h:  # what hloc's extract_features writes
        g = h.create_group("a.jpg")
        g["keypoints"] = feats.keypoints
        g["scores"] = feats.scores
        g["descriptors"] = feats.descriptors.T  # (D, N)
        g["image_size"] = np.array(feats.image_size)
    got = FeatureStore(path, "r").get("a.jpg")
    assert np.array_equal(got.descriptors, feats.descriptors)  # transposed back, though N == D

    other = tmp_path / "unknown.h5"  # another tool, square descriptors, no hloc marker: refused, not guessed
    with h5py.File(other, "w") as h:
        g = h.create_group("a.jpg")
        g["keypoints"] = feats.keypoints
        g["descriptors"] = feats.descriptors
        g.attrs["image_size"] = np.array(feats.image_size)
    with pytest.raises(StoreError, match="descriptors are 16 x 16 for 16 keypoints, so their layout"):
        FeatureStore(other, "r").get("a.jpg")


def test_cli_match_on_a_full_disk_prints_one_line_and_exits_1(tmp_path):
    features = tmp_path / "features.h5"
    names = [f"im{i}.png" for i in range(12)]
    with FeatureStore(features, "w") as store:
        for name in names:
            store.put(name, features_for(name, n=300, d=128))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{a} {b}\n" for i, a in enumerate(names) for b in names[i + 1:]))
    out = tmp_path / "matches.h5"

    def limit_file_size():  # in the child: writes beyond 60 kB fail with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    proc = subprocess.run([sys.executable, "-m", "localfeat.cli", "match", str(features), "--pairs", str(pairs),
                           "-o", str(out)], capture_output=True, text=True,
                          preexec_fn=limit_file_size, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"localfeat match: error: [Errno {errno.EFBIG}] {out}: cannot ")


# ------------------------------------------------------------------------------------------ store kind
def test_a_store_knows_its_kind(tmp_path):
    from localfeat.pipeline import match

    feats, matches = tmp_path / "features.h5", tmp_path / "matches.h5"
    with FeatureStore(feats, "w") as store:
        store.put("a", features_for("a"))
        store.put("b", features_for("b"))
    before = feats.read_bytes()
    with pytest.raises(StoreError, match=f"{feats} is a features store, not a matches store: choose another"):
        match(feats, feats, [("a", "b")])  # `localfeat match F -o F`
    assert feats.read_bytes() == before
    with pytest.raises(StoreError, match="is a features store, not a matches store: read it as such"):
        MatchStore(feats, "r")
    match(feats, matches, [("a", "b")])
    with pytest.raises(StoreError, match=f"{matches} is a matches store, not a features store"):
        FeatureStore(matches, "a")
    with h5py.File(matches, "r") as f:
        assert f.attrs["kind"] == "matches"


# ------------------------------------------------------------------------------------------------ npz
def test_damaged_npz_files_are_value_errors_naming_the_file(tmp_path):
    from localfeat.io.npz import read_npz, write_npz

    good = tmp_path / "good.r2d2"
    write_npz(good, features_for("g"))
    data = good.read_bytes()
    cases = {"empty.r2d2": (b"", "not a readable npz file \\(EOFError"),
             "truncated.r2d2": (data[: len(data) // 2], "not a readable npz file \\(BadZipFile"),
             "five.r2d2": (b"hello", "not an npz file \\(neither a zip archive nor a .npy array; pickles are "
                                     "never loaded\\)")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"^{path}: {message}"):
            read_npz(path)
    bad_shape = tmp_path / "shape.r2d2"
    with open(bad_shape, "wb") as f:
        np.savez(f, keypoints=np.zeros(5, np.float32), descriptors=np.zeros((5, 4), np.float32), imsize=[4, 4])
    with pytest.raises(ValueError, match=f"^{bad_shape}: not a readable npz file \\(IndexError"):
        read_npz(bad_shape)
    assert read_npz(good).equals(features_for("g"))
