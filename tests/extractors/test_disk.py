"""DISK: architecture and extraction parity with the release (reference/disk, random weights)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import shared

from localfeat import hub
from localfeat.hub import CheckpointError
from localfeat.extractors.disk import DISK, DiskNet
from localfeat.registry import ConfigError, get_class, load_extractor


@pytest.fixture(scope="module")
def weights_path():
    return shared("reference", "disk", "disk_random_state_dict.pth")


@pytest.fixture(scope="module")
def ref():
    return {name: np.load(shared("reference", "disk", f"disk_{name}.npz"))
            for name in ("input", "raw_output", "nms_output")}


@pytest.fixture(scope="module")
def extractor(weights_path):
    return load_extractor("disk", weights=str(weights_path), device="cpu")


@pytest.fixture(scope="module")
def features(extractor, ref):
    return extractor.extract(ref["input"]["image_crop_uint8"])


def test_registered_with_official_weights_names():
    assert get_class("extractor", "disk") is DISK
    assert [s.filename for s in DISK.weight_specs({"variant": "depth"})] == ["depth-save.pth"]
    assert [s.filename for s in DISK.weight_specs({"variant": "epipolar"})] == ["epipolar-save.pth"]
    assert DISK.weight_specs({"variant": "depth"})[0].urls == (
        "https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth",)


def test_state_dict_keys_and_shapes_match_manifest():
    manifest = json.loads(shared("reference", "disk", "disk_state_dict_manifest.json").read_text())
    own = {k: list(v.shape) for k, v in DiskNet().state_dict().items()}
    assert own == {k: v["shape"] for k, v in manifest.items()}
    assert sum(int(np.prod(s)) for s in own.values()) == 1_092_369


def test_raw_outputs_match_release(extractor, ref):
    x = torch.from_numpy(ref["input"]["input"])
    with torch.no_grad():
        desc, heat = extractor.net(x)
    raw = ref["raw_output"]
    np.testing.assert_allclose(heat.numpy(), raw["heatmap"], atol=1e-4, rtol=0)
    d = desc.numpy()
    np.testing.assert_allclose(d[:, :, 0:256:8, 0:256:8], raw["descriptors_stride8"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(d[:, :, 112:144, 112:144], raw["descriptors_window"], atol=1e-4, rtol=0)
    d64 = d[0].astype(np.float64)
    np.testing.assert_allclose((d64 ** 2).sum(axis=(1, 2)), raw["descriptors_channel_sumsq"], rtol=1e-5)
    assert abs(d64.sum() - (-1037.8856)) < 0.05
    assert abs(np.abs(d64).sum() - 2786437.30) < 1.0


def test_raw_output_small_input_all_channels(extractor, ref):
    with torch.no_grad():
        desc, heat = extractor.net(torch.from_numpy(ref["input"]["input64"]))
    np.testing.assert_allclose(torch.cat([desc, heat], 1).numpy(), ref["raw_output"]["raw_output64"],
                               atol=1e-4, rtol=0)


def test_nms_extraction_matches_detect_py(features, ref):
    nms = ref["nms_output"]
    assert features.image_size == (256, 256)
    np.testing.assert_array_equal(features.keypoints, nms["keypoints_sorted"])  # same order: descending score
    np.testing.assert_allclose(features.scores, nms["scores_sorted"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(features.descriptors, nms["descriptors_sorted"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)


def _as_set(kpts):
    return {tuple(p) for p in np.asarray(kpts).tolist()}


def test_max_keypoints_256_keeps_the_256_best(weights_path, ref):
    ex = load_extractor("disk", weights=str(weights_path), device="cpu", max_keypoints=256)
    f = ex.extract(ref["input"]["image_crop_uint8"])
    nms = ref["nms_output"]
    assert len(f) == 256
    assert _as_set(f.keypoints) == _as_set(nms["keypoints_n256"])
    order = np.argsort(-nms["scores_n256"], kind="stable")
    np.testing.assert_array_equal(f.keypoints, nms["keypoints_n256"][order])
    np.testing.assert_allclose(f.descriptors, nms["descriptors_n256"][order], atol=1e-4, rtol=0)


def test_official_n_rule_drops_the_weakest_when_under_n(weights_path, ref, features):
    ex = load_extractor("disk", weights=str(weights_path), device="cpu", max_keypoints=2048,
                        official_n_rule=True)
    f = ex.extract(ref["input"]["image_crop_uint8"])
    assert len(f) == 511  # the release's quirk: 512 maxima, threshold = smallest score, strict >
    assert _as_set(f.keypoints) == _as_set(ref["nms_output"]["keypoints_n2048"])
    # Our default rule keeps all 512 when there are fewer than max_keypoints.
    assert len(features) == 512


def test_padding_to_16_equals_explicit_zero_padding(extractor, ref):
    """A 54x45 image is padded to 64x48 with zeros; maxima in the padding are dropped."""
    crop = ref["input"]["image_crop64_uint8"][:45, :54]
    f = extractor.extract(crop)
    padded = np.zeros((48, 64, 3), np.uint8)
    padded[:45, :54] = crop
    g = extractor.extract(padded)
    inside = (g.keypoints[:, 0] < 54) & (g.keypoints[:, 1] < 45)
    assert inside.sum() < len(g)  # the padded image does have maxima in the padding
    expected = g.select(inside)
    assert f.image_size == (54, 45)
    np.testing.assert_array_equal(f.keypoints, expected.keypoints)
    np.testing.assert_array_equal(f.descriptors, expected.descriptors)


def test_loads_release_checkpoint_layout(tmp_path, weights_path, ref):
    sd = torch.load(weights_path, weights_only=True)
    path = tmp_path / "depth-save.pth"
    torch.save({"extractor": sd, "epoch": 3}, path)
    ex = load_extractor("disk", weights=str(path), device="cpu")
    for k, v in sd.items():
        assert torch.equal(ex.net.state_dict()[k], v)


def test_incompatible_checkpoint_names_file(tmp_path, weights_path):
    sd = torch.load(weights_path, weights_only=True)
    sd.pop("unet.path_up.3.conv.3.bias")
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"broken\.pth.*missing keys \['unet\.path_up\.3\.conv\.3\.bias'\]"):
        load_extractor("disk", weights=str(path), device="cpu")


@pytest.mark.parametrize("variant,filename", [("depth", "depth-save.pth"), ("epipolar", "epipolar-save.pth")])
def test_missing_weights_error_says_what_and_where(tmp_path, monkeypatch, variant, filename):
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("LOCALFEAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LOCALFEAT_OFFLINE", "1")
    with pytest.raises(hub.WeightsNotFoundError) as err:
        load_extractor("disk", variant=variant)
    text = str(err.value)
    assert filename in text
    assert f"https://raw.githubusercontent.com/cvlab-epfl/disk/master/{filename}" in text
    assert str(tmp_path / "weights") in text and str(tmp_path / "cache") in text


def test_bad_config_values_are_named():
    with pytest.raises(ConfigError, match="variant"):
        load_extractor("disk", variant="outdoor")
    with pytest.raises(ConfigError, match="nms_window"):
        load_extractor("disk", nms_window=4)


def test_argmax_pool_nms_keeps_one_pixel_per_plateau():
    """Hand case: ties go to the first pixel of the window in raster order, as torch's max-pool reports."""
    from localfeat.ops import argmax_pool_nms

    scores = torch.tensor([[[1.0, 1.0, 0.0, 0.0],
                            [0.0, 0.0, 0.0, 0.0],
                            [0.0, 0.0, 2.0, 0.0]]])
    expected = torch.zeros(1, 3, 4, dtype=torch.bool)
    expected[0, 0, 0] = expected[0, 2, 2] = True
    assert torch.equal(argmax_pool_nms(scores, 3), expected)
    assert torch.equal(argmax_pool_nms(scores[:, None], 3), expected[:, None])
    with pytest.raises(ValueError, match="odd"):
        argmax_pool_nms(scores, 4)
