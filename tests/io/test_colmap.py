"""COLMAP database export/import: the 0.5 shift applied once each way, cameras, EXIF focal, dense arrays."""
from __future__ import annotations

import sqlite3

import zlib  # noqa: F401  (before pycolmap: see localfeat.io.colmap._require_pycolmap)

import numpy as np
import pytest

from conftest import shared
from localfeat.io.colmap import (ColmapDatabase, ColmapError, camera_for_image, exif_focal_length,
                                 export_colmap, from_colmap_keypoints, import_colmap, intrinsics_from_colmap,
                                 read_colmap_array, to_colmap_keypoints, write_colmap_array)
from localfeat.io.h5 import FeatureStore, MatchStore
from localfeat.types import Features, Matches

import pycolmap  # noqa: E402  (the sfm extra; installed in the dev environment)

SACRE = ("sfm_sacre_coeur_hloc", "mapping")


def _features(kpts, size=(64, 48)) -> Features:
    kpts = np.asarray(kpts, np.float32)
    desc = np.eye(len(kpts), 8, dtype=np.float32) if len(kpts) <= 8 else np.ones((len(kpts), 8), np.float32) / np.sqrt(8)
    return Features(kpts, np.ones(len(kpts), np.float32), desc, size)


def test_shift_hand_values():
    ours = np.array([[0.0, 0.0], [10.25, 3.5], [63.0, 47.0]], np.float32)
    colmap = to_colmap_keypoints(ours)
    np.testing.assert_array_equal(colmap, [[0.5, 0.5], [10.75, 4.0], [63.5, 47.5]])
    np.testing.assert_array_equal(from_colmap_keypoints(colmap), ours)
    K = intrinsics_from_colmap([[100, 0, 32], [0, 100, 24], [0, 0, 1]])
    np.testing.assert_array_equal(K, [[100, 0, 31.5], [0, 100, 23.5], [0, 0, 1]])


@pytest.fixture(scope="module")
def sacre_stores(tmp_path_factory):
    """SIFT features of 3 real photos and their exhaustive matches."""
    import localfeat
    from localfeat.pairs import exhaustive_pairs

    root = shared(*SACRE)
    names = sorted(p.name for p in root.glob("*.jpg"))[:3]
    tmp = tmp_path_factory.mktemp("colmap_stores")
    localfeat.extract([(n, root / n) for n in names], tmp / "f.h5", model="sift",
                      conf={"max_keypoints": 1024, "resize_max": 800})
    localfeat.match(tmp / "f.h5", tmp / "m.h5", exhaustive_pairs(names), conf={"ratio": 0.8})
    return tmp, names


def test_export_import_round_trip(sacre_stores, tmp_path):
    tmp, names = sacre_stores
    db_path = tmp_path / "db.db"
    ids = export_colmap(tmp / "f.h5", tmp / "m.h5", db_path, images=shared(*SACRE))
    assert sorted(ids) == names
    fstore, mstore = FeatureStore(tmp / "f.h5", mode="r"), MatchStore(tmp / "m.h5", mode="r")
    db = pycolmap.Database.open(str(db_path))
    try:
        assert db.num_images() == 3 and db.num_cameras() == 3 and db.num_frames() == 3
        for name in names:
            ours = fstore.get(name).keypoints
            # COLMAP (read back by COLMAP itself) holds our keypoints + 0.5, computed once in float32.
            np.testing.assert_array_equal(db.read_keypoints(ids[name])[:, :2], ours + np.float32(0.5))
            cam = db.read_camera(db.read_image(ids[name]).camera_id)
            assert (cam.width, cam.height) == fstore.get(name).image_size
            assert cam.params[0] == pytest.approx(1.2 * max(cam.width, cam.height))
        for a, b in mstore.pairs():
            np.testing.assert_array_equal(db.read_matches(ids[a], ids[b]), mstore.get(a, b).indices)
    finally:
        db.close()

    import_colmap(db_path, tmp_path / "imported.h5", matches_out=tmp_path / "imported_m.h5")
    imported = FeatureStore(tmp_path / "imported.h5", mode="r")
    exact = total = 0
    for name in names:
        ours, back = fstore.get(name).keypoints, imported.get(name).keypoints
        assert imported.get(name).image_size == fstore.get(name).image_size
        # -0.5 undoes +0.5 exactly wherever float32 could hold x + 0.5; elsewhere (x just below a
        # power of two, or x < 0.5) the export rounded by at most half a float32 step of x + 0.5.
        step = np.spacing(np.abs(ours) + np.float32(0.5))
        assert np.all(np.abs(back - ours) <= step / 2)
        representable = (ours + np.float32(0.5)) - np.float32(0.5) == ours
        np.testing.assert_array_equal(back[representable], ours[representable])
        exact += int(representable.sum())
        total += ours.size
    assert exact / total > 0.99
    imported_m = MatchStore(tmp_path / "imported_m.h5", mode="r")
    for a, b in mstore.pairs():
        np.testing.assert_array_equal(imported_m.get(a, b).indices, mstore.get(a, b).indices)

    # The other way round is bit-exact: database -> import -> export -> the same COLMAP keypoints.
    export_colmap(tmp_path / "imported.h5", None, tmp_path / "db2.db")
    with ColmapDatabase(db_path) as d1, ColmapDatabase(tmp_path / "db2.db") as d2:
        for name in names:
            np.testing.assert_array_equal(to_colmap_keypoints(d1.features(name).keypoints),
                                          to_colmap_keypoints(d2.features(name).keypoints))
    conn = sqlite3.connect(tmp_path / "db2.db")
    for (data,), name in zip(conn.execute("SELECT data FROM keypoints ORDER BY image_id"), names):
        raw = np.frombuffer(data, np.float32).reshape(-1, 2)
        np.testing.assert_array_equal(raw, to_colmap_keypoints(imported.get(name).keypoints))
    conn.close()


def test_swapped_pair_and_verified_geometry(tmp_path):
    with FeatureStore(tmp_path / "f.h5", mode="w") as fs:
        fs.put("a.png", _features([[1, 1], [2, 2], [3, 3]]))
        fs.put("b.png", _features([[5, 5], [6, 6]]))
    with MatchStore(tmp_path / "m.h5", mode="w") as ms:
        ms.put("b.png", "a.png", Matches(np.array([[0, 2], [1, 0]]), np.array([0.9, 0.2], np.float32)))
    export_colmap(tmp_path / "f.h5", tmp_path / "m.h5", tmp_path / "db.db", verified=True, min_match_score=0.5)
    with ColmapDatabase(tmp_path / "db.db") as db:
        np.testing.assert_array_equal(db.matches("b.png", "a.png").indices, [[0, 2]])
        np.testing.assert_array_equal(db.matches("a.png", "b.png").indices, [[2, 0]])
        np.testing.assert_array_equal(db.matches("a.png", "b.png", verified=True).indices, [[2, 0]])
        assert db.pairs(verified=True) == [("a.png", "b.png")]  # ordered by COLMAP image id
        np.testing.assert_array_equal(db.features("a.png").keypoints, [[1, 1], [2, 2], [3, 3]])
        assert db.features("a.png").descriptors.shape == (3, 0)


def test_existing_database_and_unknown_model(tmp_path):
    with FeatureStore(tmp_path / "f.h5", mode="w") as fs:
        fs.put("a.png", _features([[1, 1]]))
    export_colmap(tmp_path / "f.h5", None, tmp_path / "db.db")
    with pytest.raises(ColmapError, match="exists"):
        export_colmap(tmp_path / "f.h5", None, tmp_path / "db.db")
    export_colmap(tmp_path / "f.h5", None, tmp_path / "db.db", overwrite=True, camera_model="PINHOLE")
    with ColmapDatabase(tmp_path / "db.db") as db:
        (cam,) = db.cameras().values()
        np.testing.assert_array_equal(cam["params"], [76.8, 76.8, 32.0, 24.0])  # 1.2 * 64, centre (W/2, H/2)
    with pytest.raises(ColmapError, match="FISHEYE"):
        export_colmap(tmp_path / "f.h5", None, tmp_path / "db3.db", camera_model="FISHEYE")
    with pytest.raises(ColmapError, match="not a COLMAP database"):
        (tmp_path / "x.db").write_bytes(b"")
        ColmapDatabase(tmp_path / "x.db")


def test_camera_per_folder(tmp_path):
    with FeatureStore(tmp_path / "f.h5", mode="w") as fs:
        for name in ("seq1/a.png", "seq1/b.png", "seq2/a.png"):
            fs.put(name, _features([[1, 1]]))
    ids = export_colmap(tmp_path / "f.h5", None, tmp_path / "db.db", camera_per_folder=True)
    with ColmapDatabase(tmp_path / "db.db") as db:
        cams = {name: cam for name, (_, cam) in db.images().items()}
        assert len(db.cameras()) == 2 and len(ids) == 3
        assert cams["seq1/a.png"] == cams["seq1/b.png"] != cams["seq2/a.png"]
    with FeatureStore(tmp_path / "f.h5", mode="a") as fs:
        fs.put("seq1/c.png", _features([[1, 1]], size=(32, 32)))
    with pytest.raises(ColmapError, match="seq1/c.png"):
        export_colmap(tmp_path / "f.h5", None, tmp_path / "db2.db", camera_per_folder=True)


def _jpeg_with_exif(path, exif_items: dict, size=(120, 80)):
    from PIL import Image

    img = Image.new("RGB", size, (128, 128, 128))
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    sub.update(exif_items)
    img.save(path, exif=exif)


def test_exif_focal_length(tmp_path):
    from PIL import TiffImagePlugin

    _jpeg_with_exif(tmp_path / "f35.jpg", {0xA405: 28})
    assert exif_focal_length(tmp_path / "f35.jpg", (120, 80)) == pytest.approx(28 / 35 * 120)
    # 4.5 mm lens, sensor 6000 px at 10000 px/cm -> 6 mm wide -> f = 4.5 / 6 * 120 = 90 px.
    _jpeg_with_exif(tmp_path / "fmm.jpg", {0x920A: TiffImagePlugin.IFDRational(9, 2), 0xA20E: 10000,
                                           0xA210: 3, 0xA002: 6000})
    assert exif_focal_length(tmp_path / "fmm.jpg", (120, 80)) == pytest.approx(90.0)
    _jpeg_with_exif(tmp_path / "none.jpg", {})
    assert exif_focal_length(tmp_path / "none.jpg", (120, 80)) is None
    cam = camera_for_image((120, 80), tmp_path / "f35.jpg")
    assert cam["prior_focal"] and cam["params"] == pytest.approx([96.0, 60.0, 40.0, 0.0])
    cam = camera_for_image((120, 80), tmp_path / "none.jpg", model="SIMPLE_PINHOLE", default_focal_factor=2.0)
    assert not cam["prior_focal"] and cam["params"] == pytest.approx([240.0, 60.0, 40.0])

    with FeatureStore(tmp_path / "f.h5", mode="w") as fs:
        fs.put("f35.jpg", _features([[1, 1]], size=(120, 80)))
    export_colmap(tmp_path / "f.h5", None, tmp_path / "db.db", images=tmp_path)
    db = pycolmap.Database.open(str(tmp_path / "db.db"))
    (cam,) = db.read_all_cameras()
    db.close()
    assert cam.has_prior_focal_length and cam.params[0] == pytest.approx(96.0)


def test_colmap_dense_array_format(tmp_path):
    depth = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_colmap_array(tmp_path / "d.bin", depth)
    data = (tmp_path / "d.bin").read_bytes()
    assert data.startswith(b"3&2&1&")
    np.testing.assert_array_equal(np.frombuffer(data[6:], np.float32), [0, 1, 2, 3, 4, 5])  # rows, x fastest
    np.testing.assert_array_equal(read_colmap_array(tmp_path / "d.bin"), depth)
    normals = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    write_colmap_array(tmp_path / "n.bin", normals)
    np.testing.assert_array_equal(read_colmap_array(tmp_path / "n.bin"), normals)
    (tmp_path / "bad.bin").write_bytes(b"3&2&1&" + b"\0" * 8)
    with pytest.raises(ColmapError, match="holds 2 floats"):
        read_colmap_array(tmp_path / "bad.bin")


def test_import_colmap_affine_keypoints(tmp_path):
    """Keypoints written by COLMAP's own SIFT have 6 columns (x, y, affine): scale and orientation come back."""
    db = pycolmap.Database.open(str(tmp_path / "db.db"))
    cam = pycolmap.Camera.create_from_model_name(0, "SIMPLE_PINHOLE", 50.0, 64, 48)
    cid = db.write_camera(cam)
    iid = db.write_image(pycolmap.Image(name="x.png", camera_id=cid))
    s, a = 2.0, np.pi / 6
    db.write_keypoints(iid, np.array([[10.5, 20.5, s * np.cos(a), -s * np.sin(a), s * np.sin(a), s * np.cos(a)]],
                                     np.float32))
    db.close()
    import_colmap(tmp_path / "db.db", tmp_path / "f.h5")
    feats = FeatureStore(tmp_path / "f.h5", mode="r").get("x.png")
    np.testing.assert_array_equal(feats.keypoints, [[10.0, 20.0]])
    assert feats.scales[0] == pytest.approx(4.0) and feats.orientations[0] == pytest.approx(a)
    assert feats.image_size == (64, 48)


def test_cli_export_import(sacre_stores, tmp_path, capsys):
    from localfeat.cli import main

    tmp, names = sacre_stores
    assert main(["export", "colmap", "--features", str(tmp / "f.h5"), "--matches", str(tmp / "m.h5"),
                 "--images", str(shared(*SACRE)), "--database", str(tmp_path / "db.db")]) == 0
    assert main(["import", "colmap", str(tmp_path / "db.db"), "-o", str(tmp_path / "back.h5")]) == 0
    assert "imported keypoints of 3 images" in capsys.readouterr().out
    assert FeatureStore(tmp_path / "back.h5", mode="r").names() == names
    assert main(["export", "colmap", "--features", str(tmp / "f.h5"), "--database", str(tmp_path / "db.db")]) == 2
    assert "exists" in capsys.readouterr().err
