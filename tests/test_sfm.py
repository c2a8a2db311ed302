"""`localfeat sfm` on 10 real photos of Sacre Coeur (SIFT), and the pair specifications."""
from __future__ import annotations

import zlib  # noqa: F401  (before pycolmap: see localfeat.io.colmap._require_pycolmap)

import numpy as np
import pycolmap
import pytest

from _sfm_reconstruction import sacre_coeur_sfm
from localfeat.sfm import SUMMARY_KEYS, reconstruction_summary, resolve_pairs


def test_sfm_sacre_coeur_sift(tmp_path_factory):
    code, out, summary = sacre_coeur_sfm(tmp_path_factory)
    assert code == 0
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["num_images"] == 10
    assert summary["num_registered"] >= 9
    assert 0 < summary["mean_reprojection_error"] < 1.5
    assert summary["num_points3d"] >= 150 and summary["mean_track_length"] > 2.0
    # The model on disk, in both formats, is the one summarised.
    for folder, ext in (("sparse", "bin"), ("sparse_text", "txt")):
        for part in ("cameras", "images", "points3D"):
            assert (out / folder / f"{part}.{ext}").is_file()
    for folder in ("sparse", "sparse_text"):
        rec = pycolmap.Reconstruction(str(out / folder))
        again = reconstruction_summary(rec, 10)
        assert again["num_registered"] == summary["num_registered"]
        assert again["num_points3d"] == summary["num_points3d"]
        assert again["mean_reprojection_error"] == pytest.approx(summary["mean_reprojection_error"], rel=1e-6)
    assert sorted(summary["registered_images"]) == sorted(im.name for im in rec.images.values() if im.has_pose)
    # The database COLMAP mapped from holds our keypoints shifted by +0.5 (one image checked).
    from localfeat.io.h5 import FeatureStore

    db = pycolmap.Database.open(str(out / "database.db"))
    image = db.read_image_with_name(summary["registered_images"][0])
    kpts = db.read_keypoints(image.image_id)
    db.close()
    ours = FeatureStore(out / "features.h5", mode="r").get(image.name).keypoints
    np.testing.assert_array_equal(kpts[:, :2], ours + np.float32(0.5))
    assert (out / "pairs.txt").read_text().count("\n") == 45
    assert summary["mapper_options"]["mapper.abs_pose_min_num_inliers"] == 15


def test_resolve_pairs(tmp_path):
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert len(resolve_pairs("exhaustive", names)) == 6
    assert resolve_pairs("sequential 1", names) == [("a.jpg", "b.jpg"), ("b.jpg", "c.jpg"), ("c.jpg", "d.jpg")]
    assert resolve_pairs(["sequential", "2"], names)[:2] == [("a.jpg", "b.jpg"), ("a.jpg", "c.jpg")]
    (tmp_path / "p.txt").write_text("a.jpg d.jpg\n# comment\nb.jpg c.jpg\n")
    assert resolve_pairs(str(tmp_path / "p.txt"), names) == [("a.jpg", "d.jpg"), ("b.jpg", "c.jpg")]
    with pytest.raises(ValueError, match="window K"):
        resolve_pairs("sequential", names)
    with pytest.raises(FileNotFoundError, match="nor an existing pairs file"):
        resolve_pairs("exhaustiv", names)
    (tmp_path / "q.txt").write_text("a.jpg z.jpg\n")
    with pytest.raises(ValueError, match="z.jpg"):
        resolve_pairs(str(tmp_path / "q.txt"), names)


def test_unknown_mapper_option_fails_before_any_work(tmp_path):
    from conftest import shared
    from localfeat.sfm import DEFAULT_MAPPER_OPTIONS, reconstruct

    with pytest.raises(ValueError, match="mapper option 'mapper.nope' does not exist; valid here: .*abs_pose"):
        reconstruct(shared("sfm_sacre_coeur_hloc", "mapping"), tmp_path / "out", mapper_options={"mapper.nope": 1})
    assert not (tmp_path / "out").exists()
    assert DEFAULT_MAPPER_OPTIONS == {"mapper.abs_pose_min_num_inliers": 15, "mapper.abs_pose_min_inlier_ratio": 0.1}
