"""Training photos: the photo filter, the gathering (dedup, downscale, manifest, licences, no partial
output), several image sources for training, and a fixed pool of pairs."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch

from localfeat.datasets.photos import bundled_photo_dir
from localfeat.datasets.synth import list_photos
from localfeat.datasets.training_photos import downscale, gather, is_photo
from localfeat.train.pairs import HomographyConf, HomographyPairs


def _photo(name: str) -> np.ndarray:
    return cv2.imread(str(bundled_photo_dir() / name), cv2.IMREAD_COLOR)


def test_is_photo_keeps_photos_and_drops_flat_images_and_small_ones():
    assert is_photo(_photo("astronaut.png"))
    assert is_photo(_photo("coffee.png"))
    flat = np.full((600, 800, 3), 200, np.uint8)
    cv2.putText(flat, "diagram", (50, 300), cv2.FONT_HERSHEY_SIMPLEX, 3, (0, 0, 0), 5)
    assert not is_photo(flat)                                 # few colours, flat
    assert not is_photo(cv2.resize(_photo("astronaut.png"), (200, 200)))   # shorter side < 240
    gradient = np.dstack([np.tile(np.linspace(0, 255, 800), (600, 1))] * 3).astype(np.uint8)
    assert not is_photo(gradient)                             # smooth: |Laplacian| < 1 almost everywhere


def test_downscale_shorter_side():
    img = np.zeros((1000, 1500, 3), np.uint8)
    assert downscale(img, 720).shape == (720, 1080, 3)
    assert downscale(img, 2000).shape == img.shape            # never upscales


def test_gather_dedups_downscales_and_writes_manifest_and_licences(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    big = cv2.resize(_photo("astronaut.png"), (1600, 1200))
    cv2.imwrite(str(src / "a" / "big.png"), big)
    cv2.imwrite(str(src / "a" / "copy.png"), big)             # same bytes: kept once
    cv2.imwrite(str(src / "small.png"), cv2.resize(big, (100, 80)))
    cv2.imwrite(str(src / "coffee.png"), _photo("coffee.png"))
    (src / "copyright").write_text("License: CC0-1.0\n")
    counts = gather(tmp_path / "out", packages=(), include_skimage=False, extra={"mine": src}, max_short_side=720)
    assert counts == {"mine": 2}
    files = sorted((tmp_path / "out" / "mine").iterdir())
    assert len(files) == 2
    shapes = sorted(cv2.imread(str(f)).shape[:2] for f in files)
    assert shapes == [(400, 600), (720, 960)]                 # coffee as is; the big one downscaled
    assert (tmp_path / "out" / "licences" / "mine.copyright").read_text() == "License: CC0-1.0\n"
    with open(tmp_path / "out" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["path"], r["width"], r["height"]) for r in rows) == [
        ("a/big.png", "1600", "1200"), ("coffee.png", "600", "400")]
    with pytest.raises(FileExistsError, match="already exists"):
        gather(tmp_path / "out", packages=(), include_skimage=False, extra={"mine": src})
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_gather_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(FileNotFoundError):
        gather(tmp_path / "out", packages=(), include_skimage=False, extra={"x": tmp_path / "missing"})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_several_image_sources_and_a_fixed_pool(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    cv2.imwrite(str(a / "1.png"), _photo("astronaut.png"))
    cv2.imwrite(str(b / "2.png"), _photo("coffee.png"))
    cv2.imwrite(str(b / "3.png"), _photo("chelsea.png"))
    assert [p.name for p in list_photos([a, b])] == ["1.png", "2.png", "3.png"]
    with pytest.raises(FileNotFoundError, match="empty_glob"):
        list_photos([a, tmp_path / "empty_glob_*.png"])
    conf = HomographyConf(crop_size=64, base_size=128)
    pool = HomographyPairs([a, b], conf, seed=3, length=4, repeat=True)
    fresh = HomographyPairs([a, b], conf, seed=3, length=4)
    # A pool repeats epoch 0's samples; the default draws new ones each epoch.
    assert torch.equal(pool[5]["image1"], pool[1]["image1"])
    assert torch.equal(pool[1]["image1"], fresh[1]["image1"])
    assert not torch.equal(fresh[5]["image1"], fresh[1]["image1"])
