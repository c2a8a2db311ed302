"""Image reading: formats, bit depths, channels, EXIF orientation, and bad files."""
import cv2
import numpy as np
import pytest
from PIL import Image

from localfeat.io.images import (ImageReadError, list_images, map_keypoints_to_original, read_image,
                                 resize_max)


def _gradient(h=32, w=48):
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 5 % 256, y * 7 % 256, (x + y) * 3 % 256], -1).astype(np.uint8)


@pytest.mark.parametrize("ext", [".png", ".ppm", ".tif", ".webp", ".bmp"])
def test_lossless_formats_read_back_exactly(tmp_path, ext):
    rgb = _gradient()
    path = tmp_path / f"img{ext}"
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []  # >100 = lossless
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert np.array_equal(read_image(path), rgb)


def test_gray_pgm_and_gray_mode(tmp_path):
    gray = _gradient()[..., 0]
    cv2.imwrite(str(tmp_path / "g.pgm"), gray)
    assert np.array_equal(read_image(tmp_path / "g.pgm", "gray"), gray)
    rgb = read_image(tmp_path / "g.pgm")
    assert rgb.shape == gray.shape + (3,) and np.array_equal(rgb[..., 1], gray)


def test_16bit_png_is_scaled_to_8bit(tmp_path):
    img16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    cv2.imwrite(str(tmp_path / "deep.png"), img16)
    out = read_image(tmp_path / "deep.png", "gray")
    assert out.dtype == np.uint8
    assert np.array_equal(out, np.round(img16 / 257.0).astype(np.uint8))


def test_rgba_drops_alpha(tmp_path):
    rgb = _gradient()
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], -1)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:5, :10] = 255  # white block top-left
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "e.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "e.jpg", "gray")
    assert out.shape == (40, 20)
    # After a clockwise quarter turn the block is at the top-right.
    assert out[:10, 15:].mean() > 200 and out[:10, :5].mean() < 50


def test_one_pixel_image(tmp_path):
    cv2.imwrite(str(tmp_path / "p.png"), np.array([[[1, 2, 3]]], np.uint8))
    assert read_image(tmp_path / "p.png").shape == (1, 1, 3)


def test_bad_files_raise_naming_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), _gradient(64, 64))
    data = good.read_bytes()
    cases = {
        "truncated.jpg": data[: len(data) // 2],
        "empty.jpg": b"",
        "text.jpg": b"this is not an image\n",
        "garbage.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_resize_max_and_mapping_back():
    img = np.zeros((300, 400, 3), np.uint8)
    small, factors = resize_max(img, 100)
    assert small.shape == (75, 100, 3) and factors == (4.0, 4.0)
    # Pixel centres: centre of small pixel 0 covers original pixels 0..3, centre 1.5.
    kpts = np.array([[0.0, 0.0], [99.0, 74.0]], np.float32)
    assert np.allclose(map_keypoints_to_original(kpts, factors), [[1.5, 1.5], [397.5, 297.5]])
    same, f = resize_max(img, 1000)
    assert same is img and f == (1.0, 1.0)


def test_list_images_folder_glob_and_list(tmp_path):
    for rel in ["b.png", "sub/a.jpg", "sub/deeper/c.PPM", "notes.txt"]:
        p = tmp_path / "imgs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    root, names = list_images(tmp_path / "imgs")
    assert root == tmp_path / "imgs"
    assert names == ["b.png", "sub/a.jpg", "sub/deeper/c.PPM"]
    root, names = list_images(str(tmp_path / "imgs" / "sub" / "*.jpg"))
    assert [str(root / n) for n in names] == [str(tmp_path / "imgs" / "sub" / "a.jpg")]
    listing = tmp_path / "imgs" / "list.txt"
    listing.write_text("sub/a.jpg\n# comment\nb.png\n")
    root, names = list_images(listing)
    assert root == tmp_path / "imgs" and names == ["sub/a.jpg", "b.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images in folder"):
        list_images(tmp_path / "empty")
