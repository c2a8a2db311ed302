"""Synthetic HPatches-format generator: exact ground truth, determinism, no void."""
import hashlib
import json

import cv2
import numpy as np
import pytest

from localfeat.datasets.hpatches import HPatchesSequences
from localfeat.datasets.synth import SynthConfig, _fits, generate, photometric
from localfeat.geometry import warp_points


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    names = generate(root, n_sequences=4, seed=7, image_max_size=200)
    return root, names


def test_layout_is_hpatches(synth):
    root, names = synth
    assert names == ["i_astronaut", "v_astronaut", "i_coffee", "v_coffee"]
    data = HPatchesSequences(root)
    assert data.sequences == sorted(names) and len(data.pairs()) == 20
    for seq in names:
        assert {p.name for p in (root / seq).iterdir()} == {f"{k}.ppm" for k in range(1, 7)} | {
            f"H_1_{k}" for k in range(2, 7)}
    assert max(data.image_size("v_coffee", 1)) <= 200


def test_same_seed_same_files_other_seed_other_files(synth, tmp_path):
    root, _ = synth
    generate(tmp_path / "again", n_sequences=4, seed=7, image_max_size=200)
    assert _digests(tmp_path / "again") == _digests(root)
    generate(tmp_path / "other", n_sequences=4, seed=8, image_max_size=200)
    other = _digests(tmp_path / "other")
    assert other["v_coffee/H_1_4"] != _digests(root)["v_coffee/H_1_4"]
    assert other["i_coffee/3.ppm"] != _digests(root)["i_coffee/3.ppm"]


def test_warping_image_1_by_H_gives_image_k(synth):
    """Photometric check of the ground truth: image 1 warped by H_1_k agrees with image k."""
    root, _ = synth
    data = HPatchesSequences(root)
    for seq in ("v_astronaut", "v_coffee"):
        img1 = cv2.imread(str(data.image_path(seq, 1))).astype(np.float32)
        for k in range(2, 7):
            imgk = cv2.imread(str(data.image_path(seq, k))).astype(np.float32)
            H = data.homography(seq, k)
            assert not np.allclose(H, np.eye(3), atol=1e-3)
            h, w = imgk.shape[:2]
            warped = cv2.warpPerspective(img1, H, (w, h), flags=cv2.INTER_LINEAR, borderValue=(-1, -1, -1))
            valid = cv2.erode((warped[..., 0] >= 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            assert valid.mean() > 0.3
            diff = np.abs(warped - imgk)[valid]
            assert diff.mean() < 3.0, (seq, k, diff.mean())  # interpolation only (grey levels)
            # A wrong H (off by 3 px) is clearly worse: the check can fail.
            T = np.array([[1, 0, 3], [0, 1, 0], [0, 0, 1]], np.float64)
            wrong = cv2.warpPerspective(img1, T @ H, (w, h), flags=cv2.INTER_LINEAR, borderValue=(-1, -1, -1))
            assert np.abs(wrong - imgk)[valid & (wrong[..., 0] >= 0)].mean() > 2 * diff.mean()


def test_illumination_sequences_keep_geometry(synth):
    root, _ = synth
    data = HPatchesSequences(root)
    img1 = cv2.imread(str(data.image_path("i_coffee", 1)), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    for k in range(2, 7):
        np.testing.assert_array_equal(data.homography("i_coffee", k), np.eye(3))
        imgk = cv2.imread(str(data.image_path("i_coffee", k)), cv2.IMREAD_GRAYSCALE).astype(np.float64)
        assert imgk.shape == img1.shape
        assert not np.array_equal(imgk, img1)
        assert np.corrcoef(img1.ravel(), imgk.ravel())[0, 1] > 0.8
        shifted = np.roll(imgk, 4, axis=1)
        assert np.corrcoef(img1.ravel(), shifted.ravel())[0, 1] < np.corrcoef(img1.ravel(), imgk.ravel())[0, 1]


def test_no_void_every_pixel_of_image_k_comes_from_the_photo(synth):
    root, _ = synth
    info = json.loads((root / "synth.json").read_text())
    data = HPatchesSequences(root)
    from localfeat.datasets.photos import bundled_photo_dir
    from localfeat.io.images import read_image

    for seq in ("v_astronaut", "v_coffee"):
        rec = info["sequences"][seq]
        photo = read_image(bundled_photo_dir() / rec["photo"])
        factor = 200 / 0.7 / max(photo.shape[:2])
        pw, ph = round(photo.shape[1] * factor), round(photo.shape[0] * factor)
        ox, oy = rec["crop_offset"]
        crop = np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]], np.float64)
        for k in range(2, 7):
            T = data.homography(seq, k) @ crop
            assert _fits(np.linalg.inv(T), data.image_size(seq, k), (pw, ph))
            # Independently of _fits: every pixel's footprint of image k maps inside the photo.
            w, h = data.image_size(seq, k)
            xs, ys = np.meshgrid(np.linspace(-0.5, w - 0.5, 41), np.linspace(-0.5, h - 0.5, 41))
            src = warp_points(np.stack([xs.ravel(), ys.ravel()], 1), np.linalg.inv(T))
            assert src.min() >= 0 and (src[:, 0] <= pw - 1).all() and (src[:, 1] <= ph - 1).all()


def test_photometric_strength_zero_is_nearly_identity():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48]
    img = np.stack([xx * 5, yy * 6, (xx + yy) * 2], axis=2).astype(np.uint8)  # smooth: JPEG-friendly
    out = photometric(img, rng, 0.0, SynthConfig())
    assert np.abs(out.astype(int) - img).mean() < 3  # JPEG at quality 95 only
    strong = photometric(img, np.random.default_rng(0), 1.0, SynthConfig())
    assert np.abs(strong.astype(int) - img).mean() > 10


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        generate(tmp_path, n_sequences=0)
    with pytest.raises(FileNotFoundError):
        generate(tmp_path / "o", n_sequences=1, photos=tmp_path / "missing")


def test_photos_of_the_same_name_in_two_folders_give_two_sequences(tmp_path):
    """Two scenes' 1.jpg (PhotoTourism's layout) once wrote to the same folder, the second overwriting the
    first: each photo now gets its own sequences, named after its folder."""
    rng = np.random.default_rng(0)
    for scene in ("piazza", "st_pauls"):
        (tmp_path / scene).mkdir()
        photo = cv2.GaussianBlur(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8), (0, 0), 2)
        cv2.imwrite(str(tmp_path / scene / "1.jpg"), photo)
    names = generate(tmp_path / "out", n_sequences=4, seed=0, image_max_size=120,
                     photos=[tmp_path / "piazza", tmp_path / "st_pauls"])
    assert names == ["i_piazza1", "v_piazza1", "i_stpauls1", "v_stpauls1"]
    described = json.loads((tmp_path / "out" / "synth.json").read_text())
    assert sorted(described["sequences"]) == sorted(names)
    assert described["photos"] == [str(tmp_path / "piazza"), str(tmp_path / "st_pauls")]
    first = cv2.imread(str(tmp_path / "out" / "v_piazza1" / "1.ppm"))
    second = cv2.imread(str(tmp_path / "out" / "v_stpauls1" / "1.ppm"))
    assert first.shape == second.shape and np.abs(first.astype(int) - second.astype(int)).mean() > 10
