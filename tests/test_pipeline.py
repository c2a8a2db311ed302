"""Batch extraction and matching through files: bad inputs, resume, on-error policy."""

import cv2
import numpy as np
import pytest

import localfeat
from localfeat.io.h5 import FeatureStore, MatchStore
from localfeat.io.images import ImageReadError
from localfeat.pairs import exhaustive_pairs, read_pairs, sequential_pairs, write_pairs
from conftest import shared


@pytest.fixture
def mixed_folder(tmp_path):
    """Good photos plus every kind of bad input of the acceptance list."""
    src = shared("sfm_sacre_coeur_hloc", "mapping")
    folder = tmp_path / "images"
    folder.mkdir()
    for name in sorted(p.name for p in src.glob("*.jpg"))[:2]:
        img = cv2.imread(str(src / name))
        cv2.imwrite(str(folder / name), cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2)))
    good = (folder / sorted(p.name for p in folder.glob("*.jpg"))[0]).read_bytes()
    (folder / "corrupt.jpg").write_bytes(good[: len(good) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image at all\n")
    deep = (cv2.cvtColor(cv2.imread(str(src / sorted(p.name for p in src.glob('*.jpg'))[0])), cv2.COLOR_BGR2GRAY)
            .astype(np.uint16) * 257)
    h, w = deep.shape
    deep = deep[h // 2 - 150: h // 2 + 150, w // 2 - 150: w // 2 + 150]  # textured centre
    cv2.imwrite(str(folder / "deep16.png"), deep)
    cv2.imwrite(str(folder / "one_pixel.png"), np.array([[[10, 20, 30]]], np.uint8))
    rgba = np.dstack([deep[:200, :200] // 257] * 3 + [np.full((200, 200), 255)]).astype(np.uint8)
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    return folder


BAD = {"corrupt.jpg": "truncated or corrupt JPEG", "empty.jpg": "empty file",
       "text.jpg": "not an image"}


def test_bad_inputs_are_reported_and_skipped(mixed_folder, tmp_path):
    out = tmp_path / "f.h5"
    report = localfeat.extract(mixed_folder, out, model="sift")
    assert sorted(n for n, _ in report.failed) == sorted(BAD)
    for name, message in report.failed:
        assert BAD[name] in message and name in message
    store = FeatureStore(out, "r")
    assert len(report.done) == 5 and sorted(store.names()) == sorted(report.done)
    assert store.get("one_pixel.png").image_size == (1, 1) and len(store.get("one_pixel.png")) == 0
    assert len(store.get("deep16.png")) > 50 and len(store.get("rgba.png")) > 20
    # Rerun: nothing to do for the good ones, the bad ones are retried and reported again.
    again = localfeat.extract(mixed_folder, out, model="sift")
    assert len(again.done) == 0 and len(again.skipped) == 5 and len(again.failed) == 3


def test_on_error_fail_stops_but_keeps_what_was_written(mixed_folder, tmp_path):
    out = tmp_path / "f.h5"
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        localfeat.extract(mixed_folder, out, model="sift", on_error="fail")
    # Sorted order: the two photos come first, then corrupt.jpg stops the run.
    assert len(FeatureStore(out, "r").names()) == 2


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no images in folder"):
        localfeat.extract(tmp_path / "none", tmp_path / "f.h5")
    assert not (tmp_path / "f.h5").exists()


def test_pairs_and_matching_resume(tmp_path, mixed_folder):
    assert exhaustive_pairs(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert sequential_pairs(["a", "b", "c", "d"], 2) == [("a", "b"), ("a", "c"), ("b", "c"), ("b", "d"), ("c", "d")]
    write_pairs(tmp_path / "written.txt", [("a", "b"), ("dir/c", "d")])
    assert read_pairs(tmp_path / "written.txt") == [("a", "b"), ("dir/c", "d")]
    (tmp_path / "pairs.txt").write_text("a b\n# comment\n\nc d extra\n")
    assert read_pairs(tmp_path / "pairs.txt") == [("a", "b"), ("c", "d")]
    (tmp_path / "bad.txt").write_text("lonely\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 'name0 name1'"):
        read_pairs(tmp_path / "bad.txt")

    feats = tmp_path / "f.h5"
    localfeat.extract(mixed_folder, feats, model="sift", conf={"max_keypoints": 500})
    names = FeatureStore(feats, "r").names()
    pairs = exhaustive_pairs(names) + [("missing.jpg", names[0])]
    report = localfeat.match(feats, tmp_path / "m.h5", pairs)
    assert len(report.done) == len(pairs) - 1 and report.failed[0][0] == f"missing.jpg {names[0]}"
    again = localfeat.match(feats, tmp_path / "m.h5", pairs)
    assert len(again.done) == 0 and len(again.skipped) == len(pairs) - 1
    store = MatchStore(tmp_path / "m.h5", "r")
    a, b = names[0], names[1]
    expected = localfeat.load_matcher("nearest_neighbor").match(FeatureStore(feats, "r").get(a),
                                                                  FeatureStore(feats, "r").get(b))
    assert np.array_equal(store.get(a, b).indices, expected.indices)


def test_prefetch_keeps_order_and_stays_bounded():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from localfeat.pipeline import prefetch

    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        return i * i

    with ThreadPoolExecutor(max_workers=1) as pool:
        out = []
        for value in prefetch(pool, work, range(10), depth=2):
            # When result k is consumed, at most k + 2 items have been started.
            with lock:
                assert len(started) <= len(out) + 2
            out.append(value)
    assert out == [i * i for i in range(10)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert list(prefetch(pool, work, [], depth=2)) == []
        assert list(prefetch(pool, work, [3], depth=2)) == [9]
