"""ALIKED: parity with the original on ../shared/data/reference/aliked (dense maps at 320x240, sparse
outputs at 320x240 and full resolution, n16 and n16rot), the plain-PyTorch deformable convolution and
`get_patches` on hand-computed cases, SDDH shapes, configs without offline weights (t16, n32).

Speed against the original's recorded times: benchmarks/bench_alike.py.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REFERENCE, shared
from localfeat.extractors.aliked import (ALIKED_CONFIGS, SDDH, ALIKEDNet, deform_conv2d, get_patches,
                                         replicate_pad)
from localfeat.extractors.aliked import WEIGHTS
from localfeat.hub import sha256_file
from localfeat.registry import ConfigError, load_extractor
from test_alike import parity

ALIKED_REF = REFERENCE / "aliked"
OFFLINE = ["aliked-n16", "aliked-n16rot"]


@pytest.fixture(scope="module", params=OFFLINE)
def model(request):
    return load_extractor("aliked", variant=request.param, device="cpu")


# ------------------------------------------------------------------------------------- parity
def test_dense_maps_match_the_original(model):
    variant = model.conf["variant"]
    ref = np.load(shared("reference", "aliked", f"{variant}_320x240_dense.npz"))
    inp = np.load(ALIKED_REF / "input_320x240.npz")
    scores, fmap = model.dense(torch.from_numpy(inp["input_tensor"]))
    assert scores.shape == (1, 1, 240, 320) and fmap.shape == (1, 128, 240, 320)
    np.testing.assert_allclose(scores[0, 0].numpy(), ref["score_map"], atol=1e-5, rtol=0)
    rows, cols = ref["feature_map_sub_rows"], ref["feature_map_sub_cols"]
    sub = fmap[0].numpy()[:, rows][:, :, cols]
    # float16 fixtures: rounding <= 2.4e-4 (README); atol 5e-4
    np.testing.assert_allclose(sub, ref["feature_map_sub"].astype(np.float32), atol=5e-4, rtol=0)
    y0, x0 = ref["feature_map_win_br_origin_yx"]
    win = fmap[0, :, y0:y0 + 32, x0:x0 + 32].numpy()
    np.testing.assert_allclose(win, ref["feature_map_win_br"].astype(np.float32), atol=5e-4, rtol=0)


@pytest.mark.parametrize("size", ["320x240", "full"])
def test_sparse_outputs_match_the_original(model, size):
    variant = model.conf["variant"]
    if size == "full":
        ref = np.load(shared("reference", "aliked", f"{variant}_full_sparse.npz"))
        image = cv2.cvtColor(cv2.imread(str(shared("hpatches_subset", "v_dogman", "1.ppm"))), cv2.COLOR_BGR2RGB)
    else:
        ref = np.load(shared("reference", "aliked", f"{variant}_320x240_dense.npz"))
        image = np.load(ALIKED_REF / "input_320x240.npz")["image_rgb_uint8"]
    feats = model.extract(image)
    assert feats.image_size == (image.shape[1], image.shape[0]) and feats.descriptors.shape[1] == 128
    assert abs(len(feats) - len(ref["keypoints"])) <= 0.01 * len(ref["keypoints"])
    p = parity(feats, ref)
    assert p["found"] >= 0.99, p
    assert p["cos_min"] >= 0.999, p
    assert p["score_max_diff"] <= 1e-4, p


def test_top_k_and_sort():
    image = np.load(ALIKED_REF / "input_320x240.npz")["image_rgb_uint8"]
    full = load_extractor("aliked", device="cpu").extract(image)
    top = load_extractor("aliked", device="cpu", top_k=40, sort=True).extract(image)
    assert len(top) == 40 and np.all(np.diff(top.scores) <= 0)
    dist = np.linalg.norm(top.keypoints[:, None] - full.keypoints[None], axis=-1)
    j = dist.argmin(1)
    assert dist.min(1).max() < 1e-4 and len(np.unique(j)) == 40
    # SDDH descriptors depend only on the keypoint and the map: same point, same descriptor
    np.testing.assert_allclose((top.descriptors * full.descriptors[j]).sum(1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------------- deformable conv
def _conv_case(seed=0, c=3, cout=4, h=7, w=9):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, c, h, w, generator=g), torch.randn(cout, c, 3, 3, generator=g),
            torch.randn(cout, generator=g))


@pytest.mark.parametrize("exact", [True, False])
def test_deform_conv_with_zero_offsets_is_a_convolution(exact):
    x, wgt, b = _conv_case()
    offset = torch.zeros(1, 18, 7, 9)
    torch.testing.assert_close(deform_conv2d(x, offset, wgt, b, (1, 1), exact=exact), F.conv2d(x, wgt, b, padding=1),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("exact", [True, False])
def test_deform_conv_with_integer_offsets_is_a_shifted_convolution(exact):
    x, wgt, b = _conv_case(1)
    offset = torch.zeros(1, 9, 2, 7, 9)
    offset[:, :, 0] = 1.0   # dy = +1 for every tap: the kernel reads one row lower
    offset[:, :, 1] = -2.0  # dx = -2: two columns to the left
    # tap (i, j) of output (y, x) reads x[y + i, x + j - 3]: a plain conv of x zero-padded by 3, cropped
    expected = F.conv2d(F.pad(x, (3, 3, 3, 3)), wgt, b)[..., 3:3 + 7, 0:9]
    torch.testing.assert_close(deform_conv2d(x, offset.reshape(1, 18, 7, 9), wgt, b, (1, 1), exact=exact), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("exact", [True, False])
def test_deform_conv_half_pixel_offset_and_out_of_map_rule(exact):
    # one channel, one tap: the kernel is a delta on its centre tap (k = 4)
    x = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    wgt = torch.zeros(1, 1, 3, 3)
    wgt[0, 0, 1, 1] = 1.0
    offset = torch.zeros(1, 18, 3, 4)
    offset[:, 2 * 4 + 1] = 0.5  # dx = +0.5 on the centre tap: mean of x[y, x] and x[y, x + 1]
    out = deform_conv2d(x, offset, wgt, None, (1, 1), exact=exact)[0, 0]
    expected = torch.tensor([[0.5, 1.5, 2.5, 1.5], [4.5, 5.5, 6.5, 3.5], [8.5, 9.5, 10.5, 5.5]])
    # last column: x + 0.5 = 3.5 is inside (< W), its right neighbour is outside: 0.5 * x[y, 3]
    torch.testing.assert_close(out, expected)
    offset[:, 2 * 4] = -1.0  # dy = -1: row 0 samples at y = -1, which is "outside" (y <= -1): 0
    out = deform_conv2d(x, offset, wgt, None, (1, 1), exact=exact)[0, 0]
    assert out[0].eq(0).all()
    torch.testing.assert_close(out[1:], expected[:2])
    offset[:, 2 * 4] = -0.5  # y = -0.5 on row 0: half of row 0's value
    out = deform_conv2d(x, offset, wgt, None, (1, 1), exact=exact)[0, 0]
    torch.testing.assert_close(out[0], 0.5 * expected[0])


def test_deform_conv_fast_and_exact_sampling_agree():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 12, 16, generator=g)
    wgt = torch.randn(5, 8, 3, 3, generator=g)
    offset = torch.randn(1, 18, 12, 16, generator=g) * 6  # many taps far outside the map
    exact = deform_conv2d(x, offset, wgt, None, (1, 1), exact=True)
    fast = deform_conv2d(x, offset, wgt, None, (1, 1), exact=False)
    torch.testing.assert_close(fast, exact, atol=1e-4, rtol=1e-5)


def test_deform_conv_checks_shapes():
    x, wgt, b = _conv_case()
    with pytest.raises(ValueError, match=r"offset has shape \(1, 18, 7, 8\), expected \(1, 18, 7, 9\)"):
        deform_conv2d(x, torch.zeros(1, 18, 7, 8), wgt, b, (1, 1))


# ------------------------------------------------------------------------------------- SDDH pieces
def test_get_patches_are_centred_and_zero_outside():
    fmap = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6)
    pts = torch.tensor([[2, 2], [0, 0], [5, 4]])  # (x, y): interior, top-left and bottom-right corners
    p = get_patches(fmap, pts, 3)
    assert p.shape == (3, 2, 3, 3)
    torch.testing.assert_close(p[0], fmap[:, 1:4, 1:4])
    torch.testing.assert_close(p[1, :, 1:, 1:], fmap[:, :2, :2])
    assert p[1, :, 0].eq(0).all() and p[1, :, :, 0].eq(0).all()
    torch.testing.assert_close(p[2, :, :2, :2], fmap[:, 3:, 4:])
    assert p[2, :, 2].eq(0).all() and p[2, :, :, 2].eq(0).all()


def test_sddh_with_zero_offsets_aggregates_the_keypoint_feature():
    torch.manual_seed(0)
    head = SDDH(8, 3, 4).eval()
    for m in head.offset_conv:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.zeros_(m.weight)
            torch.nn.init.zeros_(m.bias)
    torch.nn.init.normal_(head.sf_conv.weight)
    torch.nn.init.normal_(head.agg_weights)
    fmap = F.normalize(torch.randn(1, 8, 10, 12), dim=1)
    kpts = torch.tensor([[3.0, 4.0], [11.0, 9.0]]) / torch.tensor([11.0, 9.0]) * 2 - 1
    with torch.no_grad():
        desc = head(fmap, [kpts])[0]
    f = fmap[0, :, [4, 9], [3, 11]].t()                                   # (2, C)
    g = F.selu(f @ head.sf_conv.weight[:, :, 0, 0].t())                  # the same for all 4 positions
    expected = F.normalize(torch.einsum("nc,pcd->nd", g, head.agg_weights), dim=1)
    torch.testing.assert_close(desc, expected, atol=1e-5, rtol=1e-5)


def test_replicate_pad_splits_evenly():
    x = torch.arange(522 * 788, dtype=torch.float32).reshape(1, 1, 522, 788)
    y, pad = replicate_pad(x, 32)
    assert y.shape == (1, 1, 544, 800) and pad == (6, 6, 11, 11)
    torch.testing.assert_close(y[..., 11:533, 6:794], x)
    torch.testing.assert_close(y[..., 0, 6:794], x[..., 0, :])


# ------------------------------------------------------------------------------------- configs and weights
@pytest.mark.parametrize("variant", ["aliked-t16", "aliked-n32"])
def test_t16_n32_official_files_pinned_and_loaded_strictly(variant, tmp_path):
    spec = WEIGHTS[variant]
    assert spec.filename == f"{variant}.pth" and spec.licence == "BSD-3-Clause"
    assert spec.urls == (f"https://github.com/Shiaoming/ALIKED/raw/main/models/{variant}.pth",)
    official = shared("weights_aliked", f"{variant}.pth")
    assert sha256_file(official) == spec.sha256
    loaded = load_extractor("aliked", variant=variant, device="cpu")
    assert loaded.weights_path.name == f"{variant}.pth"
    file_state = torch.load(official, map_location="cpu", weights_only=True)
    assert set(loaded.net.state_dict()) == set(file_state)
    assert all(torch.equal(loaded.net.state_dict()[k].cpu(), v) for k, v in file_state.items())
    # the architecture is defined: a state dict of the right shapes round-trips
    net = ALIKEDNet(**ALIKED_CONFIGS[variant])
    path = tmp_path / f"{variant}.pth"
    torch.save(net.state_dict(), path)
    model = load_extractor("aliked", variant=variant, weights=str(path), device="cpu")
    image = np.load(ALIKED_REF / "input_320x240.npz")["image_rgb_uint8"]
    feats = model.extract(image)
    assert feats.descriptors.shape[1] == ALIKED_CONFIGS[variant]["dim"]
    assert model.net.desc_head.agg_weights.shape[0] == ALIKED_CONFIGS[variant]["M"]


def test_offline_weights_specs_and_errors():
    for variant in OFFLINE:
        spec = WEIGHTS[variant]
        assert spec.filename == f"{variant}.pth" and sha256_file(shared("weights_aliked", spec.filename)) == spec.sha256
    with pytest.raises(ConfigError, match=r"variant='aliked-n8' is not one of \['aliked-n16'"):
        load_extractor("aliked", variant="aliked-n8")
    with pytest.raises(ConfigError, match=r"max_keypoints \(given as n_limit\) must be None or a positive .*got 0"):
        load_extractor("aliked", n_limit=0)
    path = shared("weights_alike", "alike-n.pth")
    with pytest.raises(ValueError, match=r"alike-n.pth: not compatible with aliked aliked-n16 \(missing keys"):
        load_extractor("aliked", weights=str(path))


def test_image_with_no_keypoint():
    image = np.random.RandomState(0).randint(0, 255, (4, 4, 3)).astype(np.uint8)
    feats = load_extractor("aliked", device="cpu").extract(image)
    assert feats.keypoints.shape == (0, 2) and feats.descriptors.shape == (0, 128) and feats.image_size == (4, 4)
    head = SDDH(8, 3, 4).eval()
    with torch.no_grad():
        assert head(torch.randn(1, 8, 10, 12), [torch.zeros(0, 2)])[0].shape == (0, 8)
