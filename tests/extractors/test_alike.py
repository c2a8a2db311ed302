"""ALIKE: parity with the original on ../shared/data/reference/alike (dense maps at 320x240, sparse
outputs at 320x240 and full resolution, all four configurations), the DKD detection on hand-built
score maps, the config options, weights lookup and the `localfeat extract` verb.

Speed against the original's recorded times: benchmarks/bench_alike.py.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import REFERENCE, shared
from localfeat.cli import main
from localfeat.extractors._dkd import detect_keypoints, window_patches
from localfeat.extractors.alike import ALIKE_CONFIGS, WEIGHTS, pad_to_multiple
from localfeat.hub import WeightsNotFoundError, find_weights
from localfeat.io.h5 import FeatureStore
from localfeat.ops import iterative_max_pool_nms
from localfeat.registry import ConfigError, load_extractor

ALIKE_REF = REFERENCE / "alike"
VARIANTS = ["alike-t", "alike-s", "alike-n", "alike-l"]
DIMS = {"alike-t": 64, "alike-s": 96, "alike-n": 128, "alike-l": 128}


def parity(features, ref) -> dict:
    """For each reference keypoint, our nearest keypoint: fraction within 0.5 px, and over those the
    minimum descriptor cosine and the maximum score difference."""
    rk = ref["keypoints"]
    dist = np.linalg.norm(rk[:, None] - features.keypoints[None], axis=-1)
    j = dist.argmin(1)
    found = dist[np.arange(len(rk)), j] <= 0.5
    cos = (ref["descriptors"] * features.descriptors[j]).sum(1)
    dscore = np.abs(ref["scores"] - features.scores[j])
    return {"found": found.mean(), "cos_min": cos[found].min(), "score_max_diff": dscore[found].max()}


def dogman_rgb() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(shared("hpatches_subset", "v_dogman", "1.ppm"))), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module", params=VARIANTS)
def model(request):
    return load_extractor("alike", variant=request.param, device="cpu")


# ------------------------------------------------------------------------------------- parity
def test_dense_maps_match_the_original(model):
    variant = model.conf["variant"]
    ref = np.load(shared("reference", "alike", f"{variant}_320x240_dense.npz"))
    inp = np.load(ALIKE_REF / "input_320x240.npz")
    scores, desc = model.dense(torch.from_numpy(inp["input_tensor"]))
    assert scores.shape == (1, 1, 240, 320) and desc.shape == (1, DIMS[variant], 240, 320)
    np.testing.assert_allclose(scores[0, 0].numpy(), ref["score_map"], atol=1e-5, rtol=0)
    rows, cols = ref["descriptor_map_sub_rows"], ref["descriptor_map_sub_cols"]
    sub = desc[0].numpy()[:, rows][:, :, cols]
    # float16 fixtures: rounding <= 2.4e-4 (README); atol 5e-4
    np.testing.assert_allclose(sub, ref["descriptor_map_sub"].astype(np.float32), atol=5e-4, rtol=0)
    y0, x0 = ref["descriptor_map_win_br_origin_yx"]
    win = desc[0, :, y0:y0 + 32, x0:x0 + 32].numpy()
    np.testing.assert_allclose(win, ref["descriptor_map_win_br"].astype(np.float32), atol=5e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(desc[0].numpy(), axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize("size", ["320x240", "full"])
def test_sparse_outputs_match_the_original(model, size):
    variant = model.conf["variant"]
    if size == "full":
        ref, image = np.load(shared("reference", "alike", f"{variant}_full_sparse.npz")), dogman_rgb()
    else:
        ref = np.load(shared("reference", "alike", f"{variant}_320x240_dense.npz"))
        image = np.load(ALIKE_REF / "input_320x240.npz")["image_rgb_uint8"]
    feats = model.extract(image)
    assert feats.image_size == (image.shape[1], image.shape[0])
    assert feats.descriptors.shape[1] == DIMS[variant]
    assert abs(len(feats) - len(ref["keypoints"])) <= 0.01 * len(ref["keypoints"])
    p = parity(feats, ref)
    assert p["found"] >= 0.99, p
    assert p["cos_min"] >= 0.999, p
    assert p["score_max_diff"] <= 1e-4, p
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------------- DKD
def test_window_patches_equal_unfold():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(1, 1, 9, 11, generator=g)
    idx = torch.tensor([0, 5, 10, 12, 50, 98])  # corners, borders and the interior
    unfolded = torch.nn.functional.unfold(scores, 5, padding=2)[0].t()  # (H*W, 25)
    assert torch.equal(window_patches(scores[0], idx, 2), unfolded[idx])


def soft_argmax_reference(smap: np.ndarray, x: int, y: int, r: int = 2, t: float = 0.1) -> np.ndarray:
    """The refined (x, y) of the peak (x, y): softmax(window / t)-weighted mean of the window offsets."""
    padded = np.pad(smap, r)
    win = padded[y:y + 2 * r + 1, x:x + 2 * r + 1]
    wgt = np.exp((win - win.max()) / t)
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    return np.array([x + (wgt * dx).sum() / wgt.sum(), y + (wgt * dy).sum() / wgt.sum()])


def max_pool_nms_reference(scores, radius, iterations=2):
    """The originals' `simple_nms`, with F.max_pool2d."""
    def pool(x):
        return torch.nn.functional.max_pool2d(x, kernel_size=2 * radius + 1, stride=1, padding=radius)

    zeros = torch.zeros_like(scores)
    max_mask = scores == pool(scores)
    for _ in range(iterations):
        supp_mask = pool(max_mask.float()) > 0
        supp_scores = torch.where(supp_mask, zeros, scores)
        max_mask = max_mask | ((supp_scores == pool(supp_scores)) & ~supp_mask)
    return torch.where(max_mask, scores, zeros)


def test_window_max_nms_equals_max_pool_nms():
    g = torch.Generator().manual_seed(1)
    smooth = torch.sigmoid(torch.nn.functional.avg_pool2d(torch.randn(1, 1, 70, 90, generator=g) * 8, 5, 1))
    ties = (torch.rand(2, 1, 40, 50, generator=g) * 4).round() / 4  # plateaus everywhere
    for scores in (smooth, ties):
        for radius in (1, 2, 4):
            assert torch.equal(iterative_max_pool_nms(scores, radius), max_pool_nms_reference(scores, radius))


def test_dkd_on_a_hand_built_score_map():
    s = torch.zeros(1, 1, 12, 16)
    s[0, 0, 5, 7] = 0.9       # a peak
    s[0, 0, 6, 8] = 0.5       # within its 5x5 window: suppressed by NMS, pulls the peak down-right
    s[0, 0, 8, 12] = 0.8      # a peak with a neighbour to the right
    s[0, 0, 8, 13] = 0.6
    s[0, 0, 2, 4] = 0.7       # on row 2: inside ALIKED's border (2), outside ALIKE's (3)
    kpts, scores = detect_keypoints(s, radius=2, border=(3, 2), scores_th=0.2)
    xy = ((kpts[0] + 1) / 2 * torch.tensor([15.0, 11.0])).numpy()
    smap = s[0, 0].numpy().astype(np.float64)
    expected = np.stack([soft_argmax_reference(smap, 7, 5), soft_argmax_reference(smap, 12, 8)])
    np.testing.assert_allclose(xy, expected, atol=1e-4)
    # by hand for the second peak: weights 1 (0.8), e = exp(-2) (0.6, dx=+1), z = exp(-8) (23 zeros,
    # whose dx sum to -1)
    e, z = np.exp(-2.0), np.exp(-8.0)
    dx = (e - z) / (1 + e + 23 * z)
    np.testing.assert_allclose(xy[1], [12 + dx, 8], atol=1e-5)
    # scores: bilinear samples of the map at the refined points
    np.testing.assert_allclose(scores[0][1].item(), 0.8 * (1 - dx) + 0.6 * dx, atol=1e-5)
    # temperature 0.02 (lite's): weights exp(-0.2 / 0.02) = exp(-10) and exp(-40): the point barely moves
    kpts_t, _ = detect_keypoints(s, radius=2, border=(3, 2), scores_th=0.2, temperature=0.02)
    xy_t = ((kpts_t[0] + 1) / 2 * torch.tensor([15.0, 11.0])).numpy()
    e, z = np.exp(-10.0), np.exp(-40.0)
    np.testing.assert_allclose(xy_t[1], [12 + (e - z) / (1 + e + 23 * z), 8], atol=1e-5)
    # ALIKED's border keeps the peak on row 2 (row-major order: it comes first)
    kpts2, _ = detect_keypoints(s, radius=2, border=(2, 2), scores_th=0.2)
    xy2 = ((kpts2[0] + 1) / 2 * torch.tensor([15.0, 11.0])).numpy()
    assert len(xy2) == 3
    np.testing.assert_allclose(xy2[0], soft_argmax_reference(smap, 4, 2), atol=1e-4)


def test_dkd_threshold_top_k_and_n_limit():
    s = torch.zeros(1, 1, 20, 20)
    peaks = {(4, 4): 0.3, (4, 10): 0.9, (10, 4): 0.5, (10, 10): 0.1, (15, 15): 0.7}
    for (y, x), v in peaks.items():
        s[0, 0, y, x] = v
    def pix(k):
        return ((k[0] + 1) / 2 * 19).round().long().tolist()
    kpts, sc = detect_keypoints(s, border=(3, 2), scores_th=0.2, sub_pixel=False)
    assert pix(kpts) == [[4, 4], [10, 4], [4, 10], [15, 15]]  # row-major, 0.1 below threshold
    kpts, sc = detect_keypoints(s, border=(3, 2), top_k=2, sub_pixel=False)
    assert pix(kpts) == [[10, 4], [15, 15]] and sc[0].tolist() == pytest.approx([0.9, 0.7], abs=1e-5)
    kpts, sc = detect_keypoints(s, border=(3, 2), scores_th=0.2, n_limit=3, sub_pixel=False)
    assert pix(kpts) == [[10, 4], [15, 15], [4, 10]]  # the 3 best, by score
    # nothing above 0.95: the threshold falls back to the mean of the map, every peak passes
    kpts, _ = detect_keypoints(s, border=(3, 2), scores_th=0.95, sub_pixel=False)
    assert len(kpts[0]) == 5


def test_pad_to_multiple_pads_bottom_right_with_zeros():
    x = torch.ones(1, 3, 240, 330)
    y = pad_to_multiple(x, 32)
    assert y.shape == (1, 3, 256, 352)
    assert y[..., :240, :330].eq(1).all() and y[..., 240:, :].eq(0).all() and y[..., 330:].eq(0).all()


# ------------------------------------------------------------------------------------- options
def test_top_k_sort_and_resize_max():
    image = np.load(ALIKE_REF / "input_320x240.npz")["image_rgb_uint8"]
    full = load_extractor("alike", variant="alike-t", device="cpu").extract(image)
    top = load_extractor("alike", variant="alike-t", device="cpu", top_k=50).extract(image)
    assert len(top) == 50
    # the 50 best NMS peaks are 50 of the threshold-mode keypoints, refined identically
    dist = np.linalg.norm(top.keypoints[:, None] - full.keypoints[None], axis=-1)
    assert dist.min(1).max() < 1e-4 and len(np.unique(dist.argmin(1))) == 50
    np.testing.assert_allclose(top.scores, full.scores[dist.argmin(1)], atol=1e-6)
    ranked = load_extractor("alike", variant="alike-t", device="cpu", sort=True).extract(image)
    assert np.all(np.diff(ranked.scores) <= 0) and len(ranked) == len(full)
    limited = load_extractor("alike", variant="alike-t", device="cpu", n_limit=100).extract(image)
    top100 = load_extractor("alike", variant="alike-t", device="cpu", top_k=100).extract(image)
    assert len(limited) == 100  # the 100 best peaks, as top_k=100 selects them
    assert np.array_equal(np.unique(limited.keypoints, axis=0), np.unique(top100.keypoints, axis=0))
    big = cv2.resize(image, (640, 480), interpolation=cv2.INTER_NEAREST)
    small = load_extractor("alike", variant="alike-t", device="cpu", resize_max=320).extract(big)
    assert small.image_size == (640, 480)
    assert small.keypoints[:, 0].max() > 320 and small.keypoints[:, 1].max() > 240  # mapped back


def test_nearest_sampling_without_sub_pixel():
    image = np.load(ALIKE_REF / "input_320x240.npz")["image_rgb_uint8"]
    model = load_extractor("alike", variant="alike-t", device="cpu", sub_pixel=False)
    feats = model.extract(image)
    assert np.abs(feats.keypoints - np.round(feats.keypoints)).max() < 1e-3  # integer peaks
    _, desc = model.dense(torch.from_numpy(np.load(ALIKE_REF / "input_320x240.npz")["input_tensor"]))
    xy = feats.keypoints.astype(np.int64)
    expected = desc[0].numpy()[:, xy[:, 1], xy[:, 0]].T
    np.testing.assert_allclose(feats.descriptors, expected, atol=1e-5)


def test_bad_config_values():
    with pytest.raises(ConfigError, match=r"variant='alike-x' is not one of \['alike-l', 'alike-n'"):
        load_extractor("alike", variant="alike-x")
    with pytest.raises(ConfigError, match=r"max_keypoints \(given as top_k\) must be None or a positive .*got -1"):
        load_extractor("alike", variant="alike-t", top_k=-1)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['max_num_keypoints'\]; valid keys: .*'max_keyp"):
        load_extractor("alike", max_num_keypoints=10)
    with pytest.raises(ConfigError, match="scores_th=None keeps the max_keypoints best peaks .* needs max_keypoints"):
        load_extractor("alike", variant="alike-t", scores_th=None, max_keypoints=None)


# ------------------------------------------------------------------------------------- weights
def test_weights_specs_and_override(tmp_path):
    for variant in VARIANTS:
        spec = WEIGHTS[variant]
        assert spec.filename == f"{variant}.pth" and spec.licence == "BSD-3-Clause"
        assert spec.urls == (f"https://github.com/Shiaoming/ALIKE/raw/main/models/{variant}.pth",)
        assert len(spec.sha256) == 64 and not spec.non_commercial
    from localfeat.hub import sha256_file
    for variant in VARIANTS:
        path = find_weights(WEIGHTS[variant], download=False)
        assert sha256_file(path) == WEIGHTS[variant].sha256
    path = find_weights(WEIGHTS["alike-t"], download=False)
    model = load_extractor("alike", variant="alike-t", weights=str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    loaded = model.net.state_dict()
    assert set(loaded) == set(state) and [k for k in state if not torch.equal(loaded[k], state[k])] == []
    with pytest.raises(WeightsNotFoundError, match="weights=.*nothing.pth: no such file"):
        load_extractor("alike", variant="alike-t", weights=str(tmp_path / "nothing.pth"))
    with pytest.raises(ValueError, match=r"alike-t.pth: not compatible with alike alike-n \(.*shape mismatch"):
        load_extractor("alike", variant="alike-n", weights=str(path))


def test_missing_weights_error_names_file_url_and_place(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("LOCALFEAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LOCALFEAT_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=r"'alike-s.pth' not found\. Download it from "
                       r"https://github.com/Shiaoming/ALIKE/raw/main/models/alike-s.pth and put it in one of: "):
        load_extractor("alike", variant="alike-s")


def test_configs_match_the_weights():
    for variant, cfg in ALIKE_CONFIGS.items():
        assert DIMS[variant] == cfg["dim"]


# ------------------------------------------------------------------------------------- CLI
def test_localfeat_extract_verb(tmp_path):
    src = shared("hpatches_subset", "v_dogman")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("1.ppm", "2.ppm"):
        (images / name).write_bytes((src / name).read_bytes())
    out = tmp_path / "feats.h5"
    assert main(["extract", str(images), "-o", str(out), "--model", "alike", "--conf", "variant=alike-t",
                 "--resize-max", "400"]) == 0
    with FeatureStore(out, mode="r") as store:
        assert sorted(store.names()) == ["1.ppm", "2.ppm"]
        f = store.get("1.ppm")
    assert f.image_size == (788, 522) and f.descriptors.shape[1] == 64 and len(f) > 100
    assert f.keypoints[:, 0].max() > 700  # mapped back to the original pixels


def test_image_with_no_keypoint():
    # 5x5: the borders (3 top/left, 2 bottom/right) leave no candidate, even after the mean fallback
    image = np.random.RandomState(0).randint(0, 255, (5, 5, 3)).astype(np.uint8)
    feats = load_extractor("alike", variant="alike-t", device="cpu").extract(image)
    assert feats.keypoints.shape == (0, 2) and feats.descriptors.shape == (0, 64) and feats.image_size == (5, 5)
