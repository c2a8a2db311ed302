"""R2D2 / Fast-R2D2: parity with the original on ../shared/data/reference/r2d2, exact tiling,
the bfloat16 mode, safe checkpoint loading, dense maps and the `.r2d2` npz export.

The exhaustive versions (all 14 reference images, speed, memory) are in benchmarks/bench_r2d2.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import REFERENCE, shared
from localfeat.extractors._r2d2_nets import R2D2Net, load_network, parse_net_string
from localfeat.hub import CheckpointError
from localfeat.hub import WeightsNotFoundError
from localfeat.io.h5 import FeatureStore
from localfeat.io.npz import export_npz, read_npz, write_npz
from localfeat.ops import IMAGENET_MEAN, IMAGENET_STD, image_pyramid, image_to_tensor, tile_windows
from localfeat.registry import ConfigError, get_class, load_extractor

R2D2_REF = REFERENCE / "r2d2"
MODELS = ["r2d2_WASF_N16", "faster2d2_WASF_N16"]


# ------------------------------------------------------------------------------------- helpers
def parity(features, ref) -> dict:
    """Compare our Features with an original `.r2d2` file: for each reference keypoint, our nearest
    keypoint of the same scale; fraction found within 0.5 px, descriptor cosines, score differences."""
    rk, rd, rs = ref["keypoints"], ref["descriptors"], ref["scores"]
    found = np.zeros(len(rk), bool)
    cos = np.full(len(rk), -1.0)
    dscore = np.full(len(rk), np.inf)
    for scale in np.unique(rk[:, 2]):
        a = np.flatnonzero(np.abs(rk[:, 2] - scale) < 1e-3)
        b = np.flatnonzero(np.abs(features.scales - scale) < 1e-3)
        if len(b) == 0:
            continue
        dist = np.linalg.norm(rk[a, None, :2] - features.keypoints[None, b], axis=-1)
        j = dist.argmin(1)
        found[a] = dist[np.arange(len(a)), j] <= 0.5
        cos[a] = (rd[a] * features.descriptors[b[j]]).sum(1)
        dscore[a] = np.abs(rs[a] - features.scores[b[j]])
    return {"found": found.mean(), "cos_min": cos[found].min(), "score_max_diff": dscore[found].max()}


def sorted_rows(f):
    """Keypoints/scales/scores/descriptors of a Features in lexicographic (x, y, scale) order."""
    order = np.lexsort((f.scales, f.keypoints[:, 1], f.keypoints[:, 0]))
    return f.keypoints[order], f.scales[order], f.scores[order], f.descriptors[order]


@pytest.fixture(scope="module")
def single_scale():
    """The reference single-scale inputs/outputs of both models."""
    return {m: dict(np.load(shared("reference", "r2d2", f"{m}_singlescale.npz"))) for m in MODELS}


@pytest.fixture(scope="module")
def extractors():
    return {m: load_extractor("r2d2", variant=m, device="cpu") for m in MODELS}


@pytest.fixture(scope="module")
def dogman1_features(extractors):
    """Default multi-scale extraction of v_dogman/1.ppm with both models (the expensive part, once)."""
    path = shared("hpatches_subset", "v_dogman", "1.ppm")
    return {m: extractors[m].extract(path) for m in MODELS}


# ------------------------------------------------------------------------------------- building blocks
def test_pyramid_levels_match_the_original():
    # Level sizes (H x W) listed in reference/README.md for v_dogman (788x522) and v_churchill (768x1024).
    dogman = [(522, 788), (439, 663), (369, 557), (310, 469), (261, 394), (219, 331), (185, 279)]
    churchill = [(1024, 768), (861, 646), (724, 543), (609, 457), (512, 384), (431, 323), (362, 272),
                 (304, 228), (256, 192)]
    for (h, w), expected in (((522, 788), dogman), ((1024, 768), churchill)):
        levels = list(image_pyramid(torch.zeros(1, 1, h, w)))
        assert [tuple(lv.shape[-2:]) for _, lv in levels] == expected
        assert levels[4][0] == pytest.approx(0.5) and levels[1][0] == pytest.approx(2 ** -0.25)
    # max_size 600 skips the levels larger than 600 (but still builds them from one another).
    assert [tuple(lv.shape[-2:]) for _, lv in image_pyramid(torch.zeros(1, 1, 522, 788), max_size=600)][0] \
        == (369, 557)
    # Each level is the resize of the previous level, not of the image.
    img = torch.rand(1, 3, 64, 96)
    levels = [lv for _, lv in image_pyramid(img, scale_f=2.0, min_size=16, max_size=None)]
    second = torch.nn.functional.interpolate(levels[1], (16, 24), mode="bilinear", align_corners=False)
    assert torch.equal(levels[2], second)


def test_tile_windows_partition_and_margin():
    tiles = tile_windows(100, 70, 32, 7, multiple=2)
    cover = np.zeros((100, 70), int)
    for (wy0, wy1, wx0, wx1), (cy0, cy1, cx0, cx1) in tiles:
        cover[cy0:cy1, cx0:cx1] += 1
        assert wy0 % 2 == 0 and wx0 % 2 == 0
        assert wy0 == max(0, cy0 - 8) and wy1 == min(100, cy1 + 8)  # margin 7 rounded up to 8
    assert (cover == 1).all() and len(tiles) == 4 * 3
    assert tile_windows(50, 40, None, 9) == [((0, 50, 0, 40), (0, 50, 0, 40))]


@pytest.mark.parametrize("arch", ["Quad_L2Net_ConfCFS", "Fast_Quad_L2Net_ConfCFS"])
def test_receptive_radius_bounds_the_influence_of_a_pixel(arch):
    torch.manual_seed(0)
    net = R2D2Net(arch).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(1.0)
    x = torch.randn(1, 3, 96, 96)
    y = x.clone()
    y[0, :, 48, 48] += 10.0
    with torch.inference_mode():
        diff = (net(x)["features"] - net(y)["features"]).abs().amax(dim=(0, 1))
    rows, cols = torch.nonzero(diff > 0, as_tuple=True)
    reach = max((rows - 48).abs().max().item(), (cols - 48).abs().max().item())
    assert 20 <= reach <= net.receptive_radius


# ------------------------------------------------------------------------------------- checkpoints
def test_net_string_allow_list():
    assert parse_net_string("Quad_L2Net_ConfCFS()") == ("Quad_L2Net_ConfCFS", {})
    assert parse_net_string("Quad_L2Net_ConfCFS(mchan=6)") == ("Quad_L2Net_ConfCFS", {"mchan": 6})
    assert parse_net_string("Fast_Quad_L2Net_ConfCFS(dim=128, relu22=False)")[1] == {"dim": 128, "relu22": False}
    for bad in ["__import__('os').system('true')", "Quad_L2Net_ConfCFS(mchan=__import__('os'))",
                "Quad_L2Net_ConfCFS(foo=1)", "L2_Net()", "Quad_L2Net_ConfCFS(6)", "Quad_L2Net_ConfCFS(mchan=True)",
                "Quad_L2Net_ConfCFS().cuda()", "Quad_L2Net_ConfCFS(**{'mchan': 4})", ""]:
        with pytest.raises(CheckpointError):
            parse_net_string(bad)


def test_official_checkpoints_load_with_their_architecture():
    for stem, arch, width in [("r2d2_WAF_N16", "Quad_L2Net_ConfCFS", 32), ("r2d2_WASF_N8_big", "Quad_L2Net_ConfCFS", 48),
                              ("faster2d2_WASF_N16", "Fast_Quad_L2Net_ConfCFS", 32)]:
        net, text = load_network(shared("weights_r2d2", f"{stem}.pt"))
        assert net.arch == arch and net.ops[0].out_channels == width and not net.training


class _Boom:
    """Pickles as a call of os.system: loading it must not run it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.path}",))


def test_tampered_checkpoint_raises_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    state = load_network(shared("weights_r2d2", "r2d2_WASF_N16.pt"))[0].state_dict()
    # 1. a 'net' string that would run code if evaluated
    bad_net = tmp_path / "bad_net.pt"
    torch.save({"net": f"__import__('pathlib').Path('{marker}').touch() or Quad_L2Net_ConfCFS()",
                "state_dict": state}, bad_net)
    with pytest.raises(CheckpointError, match="not a call of a known architecture|not an allowed"):
        load_extractor("r2d2", weights=str(bad_net), device="cpu")
    # 2. a pickle whose payload calls os.system (both the weights-only and the allow-list reader refuse)
    bad_pickle = tmp_path / "bad_pickle.pt"
    torch.save({"net": "Quad_L2Net_ConfCFS()", "state_dict": state, "x": _Boom(marker)}, bad_pickle)
    with pytest.raises(CheckpointError, match="not allowed"):
        load_extractor("r2d2", weights=str(bad_pickle), device="cpu")
    # 3. an allowed architecture whose weights do not fit
    wrong = tmp_path / "wrong.pt"
    torch.save({"net": "Quad_L2Net_ConfCFS(mchan=6)", "state_dict": state}, wrong)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_extractor("r2d2", weights=str(wrong), device="cpu")
    assert not marker.exists()


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="variant"):
        load_extractor("r2d2", variant="r2d2_WASF_N32")
    with pytest.raises(ConfigError, match="precision"):
        load_extractor("r2d2", precision="fp16")
    with pytest.raises(ConfigError, match="valid keys"):
        load_extractor("r2d2", reliability_threshold=0.5)
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        load_extractor("r2d2", weights=str(tmp_path / "missing.pt"))
    spec = get_class("extractor", "r2d2").weight_specs({"variant": "faster2d2_WASF_N16"})[0]
    assert spec.filename == "faster2d2_WASF_N16.pt" and spec.non_commercial and spec.sha256.startswith("217daa3a")


# ------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("model", MODELS)
def test_single_scale_raw_maps_equal_the_original(model, single_scale, extractors):
    ref = single_scale[model]
    ex = extractors[model]
    x = image_to_tensor(ref["image_uint8"], mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert torch.equal(x, torch.from_numpy(ref["input_tensor"]))
    with torch.inference_mode():
        out = ex.net(x)
        desc = torch.nn.functional.normalize(out["features"], dim=1).numpy()
        rows, cols, rel, rep, _ = ex._detect_level(x)
    for key in ("reliability", "repeatability"):
        assert out[key].shape == ref[key].shape
        assert np.abs(out[key].numpy() - ref[key]).max() <= 1e-4
    grid = desc[:, :, ref["grid_y"]][:, :, :, ref["grid_x"]]
    assert np.abs(grid - ref["descriptors_grid"]).max() <= 1e-4
    proj = np.einsum("bchw,kc->bkhw", desc.astype(np.float64), ref["proj_vectors"].astype(np.float64))
    assert np.abs(proj - ref["descriptors_proj"]).max() <= 1e-4
    assert np.abs(desc[0].reshape(128, -1).mean(1) - ref["descriptors_channel_mean"]).max() <= 1e-5
    assert np.abs(desc[0].reshape(128, -1).std(1) - ref["descriptors_channel_std"]).max() <= 1e-5
    # NMS: the same pixels in the same (row-major) order, the same scores
    assert np.array_equal(np.stack([rows.numpy(), cols.numpy()]), ref["nms_yx"])
    # score = reliability x repeatability, both in [0, 1] and matched at 1e-4 above: the product is within
    # 2e-4 (other CPUs' kernels moved it by 1.5e-6; a wrong formula moves it by 1e-2 and more)
    assert np.abs((rel * rep).numpy() - ref["nms_scores"]).max() <= 2e-4


@pytest.mark.parametrize("model", MODELS)
def test_multiscale_extraction_matches_the_original(model, dogman1_features):
    feats = dogman1_features[model]
    ref = np.load(R2D2_REF / f"v_dogman_1.{model}.npz")
    stats = parity(feats, ref)
    assert stats["found"] >= 0.99, stats
    assert stats["cos_min"] >= 0.999, stats
    assert stats["score_max_diff"] <= 1e-4, stats
    assert len(feats) == 5000 and feats.image_size == (788, 522)
    assert np.all(np.diff(feats.scores) <= 0)  # best first
    expected_scales = 32 * 2 ** (np.arange(7) / 4)  # 32 / s for the 7 levels of a 788 x 522 image
    assert np.abs(np.unique(feats.scales)[:, None] - expected_scales[None]).min(1).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------------- tiling, bf16, maps
@pytest.mark.parametrize("model", MODELS)
def test_tiled_inference_equals_untiled(model, single_scale):
    image = single_scale[model]["image_uint8"][40:200, 60:259]  # 160 x 199: an odd width for Fast-R2D2
    conf = dict(variant=model, device="cpu", top_k=None, min_scale=1.0, min_size=None)
    whole = load_extractor("r2d2", tile_size=None, **conf).extract(image)
    tiled = load_extractor("r2d2", tile_size=80, **conf).extract(image)  # 2 x 3 tiles
    assert len(whole) == len(tiled) > 100
    for a, b in zip(sorted_rows(whole), sorted_rows(tiled)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_bf16_keeps_the_fp32_keypoints(single_scale, extractors):
    image = single_scale["r2d2_WASF_N16"]["image_uint8"]
    conf = dict(device="cpu", top_k=None, min_size=128)
    fp32 = load_extractor("r2d2", **conf).extract(image)
    bf16 = load_extractor("r2d2", precision="bf16", **conf).extract(image)
    assert bf16.descriptors.dtype == np.float32 and bf16.scores.dtype == np.float32
    dist = np.linalg.norm(fp32.keypoints[:, None] - bf16.keypoints[None], axis=-1)
    same_scale = fp32.scales[:, None] == bf16.scales[None]
    found = ((dist <= 0.5) & same_scale).any(1).mean()
    assert found >= 0.97 and 0.9 <= len(bf16) / len(fp32) <= 1.1


def test_dense_maps_are_aligned_with_the_original_image(single_scale, extractors):
    ref = single_scale["r2d2_WASF_N16"]
    maps = extractors["r2d2_WASF_N16"].dense_maps(ref["image_uint8"])
    assert set(maps) == {"reliability", "repeatability"}
    for key in maps:
        assert maps[key].dtype == np.float32 and maps[key].shape == (240, 320)
        assert np.abs(maps[key] - ref[key][0, 0]).max() <= 1e-4
    # Fast-R2D2 on an odd size: full-size maps, the missing last row/column repeats its neighbour
    fast = extractors["faster2d2_WASF_N16"].dense_maps(ref["image_uint8"][:239, :319])
    assert fast["repeatability"].shape == (239, 319)
    assert np.array_equal(fast["repeatability"][-1], fast["repeatability"][-2])
    # resize_max: maps come back at the original size
    small = load_extractor("r2d2", resize_max=160, device="cpu").dense_maps(ref["image_uint8"])
    assert small["reliability"].shape == (240, 320)


# ------------------------------------------------------------------------------------- npz export
def test_npz_export_reproduces_the_reference_files(tmp_path, dogman1_features):
    ref_path = R2D2_REF / "v_dogman_1.r2d2_WASF_N16.npz"
    ref = np.load(ref_path)
    # 1. round trip of the reference file through Features: same keys, dtypes, shapes, rows and values
    out = tmp_path / "roundtrip.r2d2"
    write_npz(out, read_npz(ref_path))
    ours = np.load(out)
    assert sorted(ours.files) == sorted(ref.files) == ["descriptors", "imsize", "keypoints", "scores"]
    for key in ref.files:
        assert ours[key].dtype == ref[key].dtype and ours[key].shape == ref[key].shape, key
    for key in ("keypoints", "scores", "imsize"):
        assert np.array_equal(ours[key], ref[key]), key
    np.testing.assert_allclose(ours["descriptors"], ref["descriptors"], rtol=0, atol=1e-6)
    # 2. our extraction exported through a FeatureStore: same layout, the same keypoints as a set
    with FeatureStore(tmp_path / "features.h5", mode="w", model="r2d2") as store:
        store.put("v_dogman/1.ppm", dogman1_features["r2d2_WASF_N16"])
    [path] = export_npz(FeatureStore(tmp_path / "features.h5", mode="r"), tmp_path / "npz")
    assert path == tmp_path / "npz" / "v_dogman" / "1.ppm.r2d2"
    exported = np.load(path)
    for key in ref.files:
        assert exported[key].dtype == ref[key].dtype and exported[key].shape == ref[key].shape, key
    assert np.array_equal(exported["imsize"], ref["imsize"])
    a = exported["keypoints"][np.lexsort(exported["keypoints"].T[::-1])]
    b = ref["keypoints"][np.lexsort(ref["keypoints"].T[::-1])]
    assert (np.abs(a - b).max(1) <= 1e-3).mean() >= 0.99
    np.testing.assert_allclose(np.sort(exported["scores"]), ref["scores"], rtol=0, atol=1e-4)
