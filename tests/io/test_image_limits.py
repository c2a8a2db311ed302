"""Images beyond the pixel budget (decompression bombs) and decoder errors (issue 19)."""
import re
import struct
import zlib

import cv2
import numpy as np
import pytest

from localfeat.io.images import (DEFAULT_MAX_IMAGE_PIXELS, ImageReadError, image_size_from_header,
                                 max_image_pixels, read_image)
from localfeat.pipeline import extract


def png_declaring(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR declaring w x h gray pixels, with a few bytes of image data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64, 9)) + chunk(b"IEND", b""))


def jpeg_declaring(w: int, h: int) -> bytes:
    """A real 64x48 JPEG whose frame header (SOF0) is patched to declare w x h."""
    data = bytearray(cv2.imencode(".jpg", _texture(48, 64))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _texture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".ppm", ".pgm", ".tif", ".webp", ".bmp"])
def test_header_size_is_the_decoded_size(ext):
    image = _texture(30, 40) if ext == ".pgm" else np.dstack([_texture(30, 40, s) for s in range(3)])
    data = cv2.imencode(ext, image)[1].tobytes()
    assert image_size_from_header(data) == (40, 30)


def test_bombs_are_refused_from_the_header(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCALFEAT_MAX_IMAGE_PIXELS", raising=False)
    bmp = bytearray(cv2.imencode(".bmp", _texture(4, 4))[1].tobytes())
    bmp[18:26] = struct.pack("<ii", 40000, 40000)
    cases = {"bomb.png": (png_declaring(100000, 100000), "100000 x 100000 pixels (10000 MP)"),
             "bomb.jpg": (jpeg_declaring(50000, 20000), "50000 x 20000 pixels (1000 MP)"),
             "bomb.pgm": (b"P5\n30000 30000\n255\n" + bytes(16), "30000 x 30000 pixels (900 MP)"),
             "bomb.bmp": (bytes(bmp), "40000 x 40000 pixels (1600 MP)")}
    for name, (data, declared) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert len(data) < 9000
        with pytest.raises(ImageReadError, match=re.escape(f"{path}: {declared} is beyond the limit of 200 MP")):
            read_image(path)


def test_pixel_budget_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), _texture(48, 64))
    monkeypatch.setenv("LOCALFEAT_MAX_IMAGE_PIXELS", str(64 * 48))
    assert read_image(path, "gray").shape == (48, 64)  # exactly at the budget
    monkeypatch.setenv("LOCALFEAT_MAX_IMAGE_PIXELS", str(64 * 48 - 1))
    with pytest.raises(ImageReadError, match="64 x 48 pixels \\(0 MP\\) is beyond the limit of 0.003071 MP"):
        read_image(path)
    assert read_image(path, max_pixels=None).shape == (48, 64, 3)  # an explicit argument wins
    monkeypatch.setenv("LOCALFEAT_MAX_IMAGE_PIXELS", "none")
    assert max_image_pixels() is None
    monkeypatch.setenv("LOCALFEAT_MAX_IMAGE_PIXELS", "-5")
    with pytest.raises(ValueError, match="LOCALFEAT_MAX_IMAGE_PIXELS='-5': expected a positive number"):
        max_image_pixels()
    monkeypatch.delenv("LOCALFEAT_MAX_IMAGE_PIXELS")
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS


def test_opencv_errors_become_image_read_errors(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(100000, 100000))
    # Without our budget, OpenCV's own limit (2^30 pixels) raises cv2.error, which used to escape.
    with pytest.raises(ImageReadError, match="bomb.png: OpenCV cannot decode it \\(pixels <= CV_IO_MAX_IMAGE_PIXELS"):
        read_image(path, max_pixels=None)


def test_batch_extraction_skips_bombs_and_goes_on(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), _texture(96, 128, 1))
    cv2.imwrite(str(images / "c.png"), _texture(96, 128, 2))
    (images / "b_bomb.png").write_bytes(png_declaring(100000, 100000))
    (images / "d_bomb.jpg").write_bytes(jpeg_declaring(50000, 20000))
    report = extract(images, tmp_path / "features.h5", model="sift", on_error="skip")
    assert report.done == ["a.png", "c.png"]
    assert [name for name, _ in report.failed] == ["b_bomb.png", "d_bomb.jpg"]
    assert all("is beyond the limit of 200 MP" in message for _, message in report.failed)
    with pytest.raises(ImageReadError, match="b_bomb.png: .*100000 x 100000 pixels"):
        extract(images, tmp_path / "features2.h5", model="sift", on_error="fail")
