"""Patch extraction, patch networks (TFeat by hand, architectures of HardNet/SOSNet/AffNet/OriNet), `compose`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import shared

from localfeat import hub, load_extractor
from localfeat.eval.invariance import load_photos, make_pair
from localfeat.eval.metrics import mutual_nn_matches, reprojection_distances
from localfeat.extractors._patch_nets import (AffNetNet, HardNetNet, OriNetNet, PatchDescriptor, SOSNetNet,
                                              TFeatNet, affine_from_abc)
from localfeat.patches import extract_patches, extract_patches_pyramid


# ------------------------------------------------------------------------------ patch extraction
def test_integer_positions_scale_1_angle_0_return_the_exact_pixels():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 40, 50, generator=g)
    kps = [[20, 15], [25, 30], [16, 16]]
    p = extract_patches(img, kps, patch_size=8)
    assert p.shape == (3, 3, 8, 8)
    for (x, y), patch in zip(kps, p):
        assert torch.equal(patch, img[:, y - 4:y + 4, x - 4:x + 4])  # keypoint at patch pixel (4, 4)


def test_quarter_turn_and_half_pixel_shift_are_exact():
    img = torch.arange(30 * 30, dtype=torch.float32).reshape(1, 30, 30)
    crop = img[0, 10:19, 8:17]  # 9 x 9 centred on (12, 14)
    p = extract_patches(img, [[12, 14]], patch_size=9, angle=np.pi / 2)[0, 0]
    # angle +90 deg: patch pixel (u, v) shows (x - (v - c), y + (u - c)): p[v, u] = crop[u, 2c - v].
    assert torch.equal(p, crop.t().flip(0))
    half = extract_patches(img, [[12.5, 14]], patch_size=9)[0, 0]
    assert torch.allclose(half, (img[0, 10:19, 8:17] + img[0, 10:19, 9:18]) / 2)


def test_step_and_affine_shape_sample_the_expected_grid():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    img = (3 * xx + 5 * yy)[None]  # linear image: bilinear sampling is exact anywhere inside
    A = np.array([[[2.0, 0.0], [0.5, 0.5]]])
    p = extract_patches(img, [[32, 30]], patch_size=8, step=1.5, affine=A)[0, 0]
    c = torch.arange(8.0) - 4
    v, u = torch.meshgrid(c, c, indexing="ij")
    x = 32 + 1.5 * (2.0 * u)
    y = 30 + 1.5 * (0.5 * u + 0.5 * v)
    assert torch.allclose(p, 3 * x + 5 * y, atol=1e-4)


def test_pyramid_patches_of_a_constant_image_are_constant():
    img = np.full((200, 300), 77, np.uint8)
    p = extract_patches_pyramid(img, [[150, 100], [10, 10]], [32.0, 200.0], patch_size=32)
    assert p.shape == (2, 1, 32, 32)
    assert torch.allclose(p, torch.full_like(p, 77.0))


# ------------------------------------------------------------------------------ networks
def _tfeat_by_hand(state: dict, patches: torch.Tensor) -> torch.Tensor:
    """TFeat's forward written out with explicit ops and the official tensors."""
    x = patches.double()
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    x = (x - mean) / torch.sqrt(var + 1e-5)  # InstanceNorm2d(affine=False), eps 1e-5
    x = torch.tanh(F.conv2d(x, state["features.1.weight"].double(), state["features.1.bias"].double()))
    x = F.max_pool2d(x, 2, 2)
    x = torch.tanh(F.conv2d(x, state["features.4.weight"].double(), state["features.4.bias"].double()))
    x = x.reshape(len(x), -1) @ state["descr.0.weight"].double().t() + state["descr.0.bias"].double()
    return torch.tanh(x)


def test_tfeat_equals_a_hand_computed_forward_with_the_official_weights():
    state = hub.load_torch_checkpoint(shared("weights_tfeat", "tfeat-liberty.params"))
    g = torch.Generator().manual_seed(1)
    patches = torch.rand(5, 1, 32, 32, generator=g) * 255
    expected = _tfeat_by_hand(state, patches)
    net = TFeatNet()
    net.load_state_dict(state)
    raw = net.eval()(patches)
    assert raw.shape == (5, 128)
    torch.testing.assert_close(raw.double(), expected, atol=2e-5, rtol=1e-4)
    desc = PatchDescriptor("tfeat", device="cpu").run(patches)
    torch.testing.assert_close(desc.double(), expected / expected.norm(dim=1, keepdim=True), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("cls,keys", [
    (HardNetNet, {"features.0.weight": (32, 1, 3, 3), "features.19.weight": (128, 128, 8, 8),
                  "features.20.running_var": (128,)}),
    (SOSNetNet, {"layers.1.weight": (32, 1, 3, 3), "layers.20.weight": (128, 128, 8, 8),
                 "layers.21.running_mean": (128,)}),
    (AffNetNet, {"features.0.weight": (16, 1, 3, 3), "features.19.weight": (3, 64, 8, 8), "features.19.bias": (3,)}),
    (OriNetNet, {"features.0.weight": (16, 1, 3, 3), "features.19.weight": (2, 64, 8, 8), "features.19.bias": (2,)}),
])
def test_architectures_have_the_official_parameter_layout(cls, keys):
    net = cls().eval()
    state = net.state_dict()
    for k, shape in keys.items():
        assert tuple(state[k].shape) == shape
    out = net(torch.rand(4, 1, 32, 32) * 255)
    expected = {HardNetNet: (4, 128), SOSNetNet: (4, 128), AffNetNet: (4, 2, 2), OriNetNet: (4,)}[cls]
    assert tuple(out.shape) == expected
    if cls in (HardNetNet, SOSNetNet):
        torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    if cls is AffNetNet:
        torch.testing.assert_close(torch.linalg.det(out), torch.ones(4))
        assert torch.all(out[:, 0, 1] == 0)


def test_affine_from_abc_zero_is_identity_and_det_is_one():
    A = affine_from_abc(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, -0.5]]))
    torch.testing.assert_close(A[0], torch.eye(2))
    torch.testing.assert_close(A[1], torch.tensor([[2.0, 0.0], [0.5, 0.5]]))  # det 1 already


@pytest.mark.parametrize("name,filename", [("hardnet", "checkpoint_liberty_with_aug.pth"),
                                           ("sosnet", "sosnet-32x32-liberty.pth")])
def test_missing_descriptor_weights_error_names_file_and_url(name, filename):
    with pytest.raises(hub.WeightsNotFoundError, match=filename) as info:
        load_extractor("compose", detector="sift", descriptor=name)
    assert "http" in str(info.value) and "LOCALFEAT_WEIGHTS" in str(info.value)


def test_weights_entries_of_patch_networks():
    from localfeat.extractors._patch_nets import WEIGHTS

    t = WEIGHTS["tfeat"]
    assert t.filename == "tfeat-liberty.params" and t.licence == "MIT"
    assert t.sha256 == hub.sha256_file(shared("weights_tfeat", "tfeat-liberty.params"))
    for key, fname in (("hardnet", "checkpoint_liberty_with_aug.pth"), ("affnet", "AffNet.pth"),
                       ("orinet", "OriNet.pth"), ("sosnet", "sosnet-32x32-liberty.pth")):
        spec = WEIGHTS[key]
        assert spec.filename == fname and spec.urls and spec.urls[0].endswith(fname)


# ------------------------------------------------------------------------------ compose
@pytest.fixture(scope="module")
def photo():
    return load_photos(size=200, max_photos=1)[0][1]


def _correct(ex, img, axis, value):
    fa = ex.extract(img)
    img_b, H = make_pair(img, axis, value)
    fb = ex.extract(img_b)
    m = mutual_nn_matches(fa.descriptors, fb.descriptors)
    return int((reprojection_distances(fa.keypoints, fb.keypoints, m, H) <= 3).sum())


def test_orientation_from_the_detector_makes_tfeat_rotation_invariant(photo):
    oriented = load_extractor("compose", detector="sift", descriptor="tfeat", orientation="detector")
    upright = load_extractor("compose", detector="sift", descriptor="tfeat", orientation="none")
    base = _correct(oriented, photo, "rotation", 0)
    rot_oriented = _correct(oriented, photo, "rotation", 90)
    rot_upright = _correct(upright, photo, "rotation", 90)
    assert base > 100
    assert rot_oriented > 0.7 * base
    assert rot_upright < 0.5 * rot_oriented


def test_compose_with_random_affnet_and_orinet_weights(tmp_path, photo):
    torch.manual_seed(0)
    paths = {}
    for name, cls in (("affnet", AffNetNet), ("orinet", OriNetNet)):
        paths[name] = tmp_path / f"{name}.pth"
        torch.save({"state_dict": cls().state_dict()}, paths[name])
    ex = load_extractor("compose", detector="sift:max_keypoints=50", descriptor="tfeat", orientation="orinet",
                        affine="affnet", affine_weights=str(paths["affnet"]), orientation_weights=str(paths["orinet"]))
    feats = ex.extract(photo)
    assert len(feats) == 50 and feats.descriptors.shape == (50, 128)
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, rtol=1e-5)
    assert np.all((feats.orientations >= 0) & (feats.orientations < 2 * np.pi + 1e-6))
    names = [s.filename for s in type(ex).weight_specs(ex.conf)]
    assert names == ["tfeat-liberty.params", "OriNet.pth", "AffNet.pth"]


def test_compose_keynet_uses_keynet_scales_as_support(photo):
    ex = load_extractor("compose", detector="keynet:num_points=100", descriptor="tfeat")
    feats = ex.extract(photo)
    assert ex.magnification == 1.0
    levels = np.log(feats.scales / 44.0) / np.log(np.sqrt(2))
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert set(np.round(levels).astype(int)) <= set(range(-1, 5))
    assert [s.filename for s in type(ex).weight_specs(ex.conf)] == ["keynet_pytorch.pth", "tfeat-liberty.params"]


def test_unknown_descriptor_is_a_config_error():
    from localfeat.registry import ConfigError

    with pytest.raises(ConfigError, match="descriptor"):
        load_extractor("compose", descriptor="hynet")
