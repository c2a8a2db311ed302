"""Options every extractor shares (precision, channels_last; extractors/base.py) and the prefetching batch
pipeline (pipeline.extract_into)."""
import threading

import cv2
import h5py
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

import localfeat
from localfeat.config import ConfigError, conf_hash
from localfeat.extractors.base import PreparedImage
from localfeat.io.images import read_image
from localfeat.pipeline import extract
from conftest import shared


def _within(ref: np.ndarray, other: np.ndarray, radius: float) -> float:
    """Share of the points of `ref` (N, 2) with a point of `other` within `radius` px."""
    return float(np.mean(cKDTree(other).query(ref, k=1)[0] <= radius))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A textured 240 x 320 crop of an HPatches image, RGB uint8."""
    img = read_image(shared("hpatches_subset", "v_dogman", "1.ppm"))
    return np.ascontiguousarray(img[80:320, 160:480])


def test_bad_precision_and_channels_last_are_config_errors_naming_the_choices():
    with pytest.raises(ConfigError, match=r"sift: precision='fp16' is not one of \['bf16', 'fp32'\]"):
        localfeat.load_extractor("sift", precision="fp16")
    with pytest.raises(ConfigError, match="sift: channels_last must be true or false, got 'yes'"):
        localfeat.load_extractor("sift", channels_last="yes")
    with pytest.raises(ConfigError, match=r"xfeat: precision='half' is not one of \['bf16', 'fp32'\]"):
        localfeat.load_extractor("xfeat", precision="half")


def test_defaults_leave_config_hashes_as_before_and_other_values_change_them():
    sift = localfeat.load_extractor("sift")
    before = {k: v for k, v in sift.conf.items() if k not in ("precision", "channels_last")}
    assert sift.conf["precision"] == "fp32" and sift.conf["channels_last"] is False
    assert sift.conf_hash == conf_hash("sift", before)  # stores written before the options stay valid
    hashes = {sift.conf_hash, localfeat.load_extractor("sift", precision="bf16").conf_hash,
              localfeat.load_extractor("sift", channels_last=True).conf_hash}
    assert len(hashes) == 3


def test_bf16_keypoints_agree_with_fp32_and_outputs_stay_float32(photo):
    """XFeat and ALIKED under bf16 autocast: float32 outputs (ALIKED used to fail converting a bf16 tensor to
    numpy), most keypoints within 0.5 px of an fp32 keypoint, descriptors of those close; and the bf16 run
    really differs from fp32 (autocast was applied)."""
    for name, conf in (("xfeat", {"max_keypoints": 1024}), ("aliked", {"variant": "aliked-n16", "max_keypoints": 1024})):
        ref = localfeat.load_extractor(name, resize_max=None, **conf).extract(photo)
        low = localfeat.load_extractor(name, resize_max=None, precision="bf16", **conf).extract(photo)
        assert low.keypoints.dtype == np.float32 and low.descriptors.dtype == np.float32
        assert len(ref) > 100 and abs(len(low) - len(ref)) <= 0.1 * len(ref), (name, len(ref), len(low))
        # Measured on AMD EPYC (AVX-512 BF16): xfeat 0.96, aliked 1.00 on this crop.
        assert _within(ref.keypoints, low.keypoints, 0.5) >= 0.85, name
        d, j = cKDTree(low.keypoints).query(ref.keypoints, k=1)
        close = d <= 0.5
        cos = np.sum(ref.descriptors[close] * low.descriptors[j[close]], axis=1)
        assert np.median(cos) > 0.98, (name, np.median(cos))
        assert not np.array_equal(ref.descriptors[close], low.descriptors[j[close]]), name
        np.testing.assert_allclose(np.linalg.norm(low.descriptors, axis=1), 1.0, atol=1e-3)


def test_channels_last_gives_the_fp32_features_up_to_rounding(photo):
    ref = localfeat.load_extractor("disk", resize_max=None, max_keypoints=512).extract(photo)
    ex = localfeat.load_extractor("disk", resize_max=None, max_keypoints=512, channels_last=True)
    nhwc = ex.extract(photo)
    convs = [p for p in ex.net.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                         for p in convs)
    assert len(nhwc) == len(ref)
    assert _within(ref.keypoints, nhwc.keypoints, 1e-3) >= 0.99
    d, j = cKDTree(nhwc.keypoints).query(ref.keypoints, k=1)
    same = d <= 1e-3
    np.testing.assert_allclose(nhwc.descriptors[j[same]], ref.descriptors[same], atol=1e-4)


def test_r2d2_runs_its_own_bf16_path_not_autocast():
    r2d2 = localfeat.load_extractor("r2d2", precision="bf16")
    assert r2d2.precision_in_model and r2d2._bf16_trunk is not None
    assert not torch.is_autocast_enabled("cpu")
    with r2d2._precision_context():
        assert not torch.is_autocast_enabled("cpu")
    xfeat = localfeat.load_extractor("xfeat", precision="bf16")
    with xfeat._precision_context():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_prepare_then_extract_prepared_is_extract(photo):
    ex = localfeat.load_extractor("sift", resize_max=200)
    prepared = ex.prepare(photo)
    assert isinstance(prepared, PreparedImage)
    assert prepared.size == (320, 240) and prepared.image.shape == (150, 200)  # SIFT reads grey
    assert prepared.factors == (320 / 200, 240 / 150)
    a, b = ex.extract(photo), ex.extract_prepared(prepared)
    assert np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.descriptors, b.descriptors)
    assert a.image_size == b.image_size == (320, 240)


@pytest.fixture
def folder(tmp_path):
    """6 HPatches images (two sizes) and an unreadable file."""
    out = tmp_path / "images"
    out.mkdir()
    for seq in ("v_dogman", "v_churchill"):
        for k in (1, 2, 3):
            img = cv2.imread(str(shared("hpatches_subset", seq, f"{k}.ppm")))
            cv2.imwrite(str(out / f"{seq}_{k}.png"), cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2)))
    (out / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return out


def _arrays(path) -> dict:
    """Every dataset and attribute of an HDF5 file, by path."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            out.update({f"{name}@{k}": np.asarray(v) for k, v in obj.attrs.items()})
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
        out.update({f"@{k}": np.asarray(v) for k, v in f.attrs.items()})
    return out


def test_store_written_with_prefetch_equals_the_sequential_one(folder, tmp_path):
    ex = localfeat.load_extractor("xfeat", resize_max=256, max_keypoints=300)
    threads = {"prepare": set(), "network": set()}
    prepare, run = ex.prepare, ex._extract

    def spy_prepare(image):
        threads["prepare"].add(threading.get_ident())
        return prepare(image)

    def spy_run(image):
        threads["network"].add(threading.get_ident())
        assert max(image.shape[:2]) == 256  # resized before the network, by `prepare`
        return run(image)

    ex.prepare, ex._extract = spy_prepare, spy_run
    reports = {depth: extract(folder, tmp_path / f"f{depth}.h5", extractor=ex, prefetch_images=depth)
               for depth in (0, 1, 2)}
    assert threads["network"] == {threading.get_ident()}
    assert threading.get_ident() in threads["prepare"] and len(threads["prepare"]) >= 2  # others: the thread
    for report in reports.values():
        assert len(report.done) == 6 and [n for n, _ in report.failed] == ["broken.png"]
    ref = _arrays(tmp_path / "f0.h5")
    assert sum(k.endswith("/keypoints") for k in ref) == 6
    for depth in (1, 2):
        other = _arrays(tmp_path / f"f{depth}.h5")
        assert sorted(other) == sorted(ref)
        for key, value in ref.items():
            assert np.array_equal(other[key], value), (depth, key)


def test_prefetch_images_must_be_a_count(folder, tmp_path):
    with pytest.raises(ValueError, match="prefetch_images must be an integer >= 0 .* got -1"):
        extract(folder, tmp_path / "f.h5", model="sift", prefetch_images=-1)
