"""R2D2 / D2-Net per-image npz files to and from a FeatureStore."""
import cv2
import numpy as np
import pytest

from localfeat.cli import main
from localfeat.io.h5 import FeatureStore
from localfeat.io.npz import export_npz, import_npz, read_npz, write_npz
from conftest import shared


def test_reference_r2d2_file_round_trips_bit_exactly(tmp_path):
    src = shared("reference", "r2d2", "v_dogman_1.r2d2_WASF_N16.npz")
    f = read_npz(src)
    assert f.image_size == (788, 522) and len(f) == 5000 and f.scales is not None
    out = tmp_path / "1.ppm.r2d2"
    write_npz(out, f)
    with np.load(src) as ref, np.load(out) as ours:
        assert sorted(ours.files) == sorted(ref.files) == ["descriptors", "imsize", "keypoints", "scores"]
        for key in ref.files:
            assert ours[key].dtype == ref[key].dtype and ours[key].shape == ref[key].shape
        assert np.array_equal(ours["keypoints"], ref["keypoints"])
        assert np.array_equal(ours["scores"], ref["scores"])
        assert np.array_equal(ours["imsize"], ref["imsize"])
        # Stored descriptors are re-normalised on read; the reference norms are 1 +- 6e-7.
        assert np.allclose(ours["descriptors"], ref["descriptors"], atol=1e-6)


def test_d2net_style_folder_import_and_export(tmp_path):
    folder = tmp_path / "hpatches"
    for seq in ("v_a", "i_b"):
        for k in (1, 2):
            (folder / seq).mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(k)
            desc = rng.normal(size=(7, 16)).astype(np.float32)
            with open(folder / seq / f"{k}.ppm.d2-net", "wb") as fh:  # as D2-Net writes them
                np.savez(fh, keypoints=rng.uniform(0, 30, (7, 3)).astype(np.float32),
                         descriptors=desc, scores=rng.uniform(size=7).astype(np.float32))
    with FeatureStore(tmp_path / "f.h5", "w") as store:
        with pytest.raises(ValueError, match="no 'imsize' in the file"):
            import_npz(folder, store, "d2-net")
    images = tmp_path / "images"
    for seq in ("v_a", "i_b"):
        (images / seq).mkdir(parents=True)
        for k in (1, 2):
            cv2.imwrite(str(images / seq / f"{k}.ppm"), np.zeros((40, 50, 3), np.uint8))
    assert main(["import", "npz", str(folder), "-o", str(tmp_path / "g.h5"), "--ext", "d2-net",
                 "--images", str(images)]) == 0
    store = FeatureStore(tmp_path / "g.h5", "r")
    assert store.names() == ["i_b/1.ppm", "i_b/2.ppm", "v_a/1.ppm", "v_a/2.ppm"]
    f = store.get("v_a/2.ppm")
    assert f.image_size == (50, 40) and np.allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-6)
    paths = export_npz(store, tmp_path / "out", ext="r2d2")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in paths][0] == "i_b/1.ppm.r2d2"
    assert read_npz(paths[0]).equals(store.get("i_b/1.ppm"))
