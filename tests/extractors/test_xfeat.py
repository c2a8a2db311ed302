"""XFeat: parity with the original implementation's outputs (reference/xfeat), weights loading, modes.

The references were produced by verlab/accelerated_features (commit e92685f) with the converted weights
xfeat_from_onnx.pt; see reference/xfeat/README.md.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from localfeat import hub
from localfeat.cli import main
from localfeat.hub import CheckpointError
from localfeat.extractors.xfeat import XFeatNet, keypoint_heatmap, load_xfeat_weights
from localfeat.io.h5 import FeatureStore, MatchStore
from localfeat.matchers.nearest_neighbor import match_nearest_neighbours
from localfeat.ops import window_max
from localfeat.registry import ConfigError, get_class, load_extractor, load_matcher
from conftest import shared

REF = ("reference", "xfeat")
# reference/xfeat was made with the converted weights: those tests load that file explicitly.
CONVERTED = {"weights": str(shared("weights_xfeat", "xfeat_from_onnx.pt"))}


@pytest.fixture(scope="module")
def xfeat():
    return load_extractor("xfeat", device="cpu", **CONVERTED)


@pytest.fixture(scope="module")
def ref_net():
    return dict(np.load(shared(*REF, "net_640x480.npz")))


@pytest.fixture(scope="module")
def ref_input():
    return dict(np.load(shared(*REF, "input_640x480.npz")))


def key_set(keypoints):
    return {tuple(p) for p in np.round(keypoints).astype(np.int64).tolist()}


def assert_raw_maps_match(net, ref_input, ref_net):
    """The three raw outputs at 640x480 within 1e-5 of their largest magnitude (the README's ORT-vs-PyTorch
    residual is 2-4e-5; our folded-BatchNorm network stays at ~1e-6)."""
    with torch.inference_mode():
        outputs = net(torch.from_numpy(ref_input["input_tensor"]))
    for out, key in zip(outputs, ("feats", "keypoint_logits", "heatmap")):
        ref = ref_net[key]
        assert out.shape == ref.shape
        assert np.abs(out.numpy() - ref).max() <= 1e-5 * np.abs(ref).max(), key


# ------------------------------------------------------------------------------------------ parity
def test_raw_dense_maps_match_reference(xfeat, ref_input, ref_net):
    assert xfeat.weights_path.name == "xfeat_from_onnx.pt"
    assert_raw_maps_match(xfeat.net, ref_input, ref_net)


def test_sparse_640x480_identical_to_reference(xfeat, ref_input, ref_net):
    # The extractor takes RGB; the reference fed the BGR array of cv2.imread.
    feats = xfeat.extract(ref_input["image_bgr_uint8"][..., ::-1])
    ref_kpts = ref_net["dac_keypoints"]
    assert len(feats) == 4096 and feats.image_size == (640, 480)
    # 640x480 is a multiple of 32: the keypoints are the same integer pixels, no conversion at all.
    assert key_set(feats.keypoints) == key_set(ref_kpts)
    ours = np.lexsort(feats.keypoints.T)
    theirs = np.lexsort(ref_kpts.T)
    np.testing.assert_array_equal(feats.keypoints[ours], ref_kpts[theirs])
    np.testing.assert_allclose(feats.scores[ours], ref_net["dac_scores"][theirs], rtol=0, atol=1e-5)
    cos = (feats.descriptors[ours] * ref_net["dac_descriptors"][theirs]).sum(1)
    assert cos.min() >= 0.9999
    assert np.all(np.diff(feats.scores) <= 0)
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1, atol=1e-5)


@pytest.fixture(scope="module")
def dogman_full(xfeat):
    return [xfeat.extract(shared("hpatches_subset", "v_dogman", f"{k}.ppm")) for k in (1, 2)]


def test_sparse_full_resolution_matches_reference(dogman_full):
    ref = np.load(shared(*REF, "detectAndCompute_full.npz"))
    feats = dogman_full[0]
    assert feats.image_size == (788, 522) and len(feats) == 4096
    dist = np.linalg.norm(feats.keypoints[:, None] - ref["keypoints"][None], axis=2)
    nearest, d = dist.argmin(0), dist.min(0)
    assert (d < 0.5).mean() >= 0.99
    # Our pixel-centre mapping (p + 0.5) r - 0.5 vs the original's p r: exactly 0.5 (r - 1) per axis.
    rw, rh = 788 / 768, 522 / 512
    assert d.max() == pytest.approx(math.hypot(0.5 * (rw - 1), 0.5 * (rh - 1)), abs=1e-4)
    ours_in_original_convention = (feats.keypoints + 0.5) - 0.5 * np.array([rw, rh], np.float32)
    np.testing.assert_allclose(ours_in_original_convention[nearest], ref["keypoints"], atol=1e-3)
    assert (feats.descriptors[nearest] * ref["descriptors"]).sum(1).min() >= 0.999
    np.testing.assert_allclose(feats.scores[nearest], ref["scores"], atol=1e-5)


def original_convention_pairs(kpts0, kpts1, pairs, factors):
    """Matches as sets of ((ix0, iy0), (ix1, iy1)) internal integer pixels."""
    f = np.asarray(factors, np.float64)
    p0 = np.round(kpts0[pairs[:, 0]] / f).astype(int)
    p1 = np.round(kpts1[pairs[:, 1]] / f).astype(int)
    return {(tuple(a), tuple(b)) for a, b in zip(p0.tolist(), p1.tolist())}


def test_mutual_nearest_neighbours_reproduce_match_xfeat(dogman_full):
    ref = np.load(shared(*REF, "match_xfeat_1_2.npz"))
    full = np.load(shared(*REF, "detectAndCompute_full.npz"))
    f = (788 / 768, 522 / 512)
    f0, f1 = dogman_full
    # match_xfeat = mutual nearest neighbours, min_cossim=-1 -> nearest_neighbor with no threshold.
    matches = load_matcher("nearest_neighbor", device="cpu").match(f0, f1)
    ours = original_convention_pairs(f0.keypoints + 0.5 - 0.5 * np.array(f, np.float32),
                                     f1.keypoints + 0.5 - 0.5 * np.array(f, np.float32), matches.indices, f)
    theirs = original_convention_pairs(full["keypoints"], ref["keypoints2"], np.stack([ref["idx0"], ref["idx1"]], 1), f)
    assert len(theirs) == 2284
    assert len(ours & theirs) >= 0.995 * len(theirs) and len(ours) <= 1.005 * len(theirs)
    # XFeat.match's min_cossim c (0.82 by default) = max_distance sqrt(2 - 2c) on unit vectors.
    sim = (full["descriptors"][ref["idx0"]] * ref["descriptors2"][ref["idx1"]]).sum(1)
    theirs_82 = original_convention_pairs(
        full["keypoints"], ref["keypoints2"], np.stack([ref["idx0"], ref["idx1"]], 1)[sim > 0.82], f)
    idx, _ = match_nearest_neighbours(f0.descriptors, f1.descriptors, mutual=True,
                                      max_distance=math.sqrt(2 - 2 * 0.82))
    ours_82 = original_convention_pairs(f0.keypoints + 0.5 - 0.5 * np.array(f, np.float32),
                                        f1.keypoints + 0.5 - 0.5 * np.array(f, np.float32), idx, f)
    assert 0 < len(theirs_82) < len(theirs)
    assert len(ours_82 & theirs_82) >= 0.995 * len(theirs_82) and len(ours_82) <= 1.005 * len(theirs_82)


def reference_peaks(ref_net, threshold=0.05):
    """Hand-derived detection from the reference logits: softmax, 5x5 max_pool NMS, threshold; minus the
    peak at (0, 0) (the original's padding value) and the peaks on the last row and column, where the
    original's nearest sampler lands at W - 0.5 (H - 0.5), rounds to W (H), outside the map, and reads 0."""
    heat = keypoint_heatmap(torch.from_numpy(ref_net["keypoint_logits"]))
    mask = (heat == F.max_pool2d(heat, 5, stride=1, padding=2)) & (heat > threshold)
    yx = mask[0, 0].nonzero().numpy()
    h, w = heat.shape[-2:]
    yx = yx[(yx != 0).any(1) & (yx[:, 0] < h - 1) & (yx[:, 1] < w - 1)]
    return {(x, y) for y, x in yx.tolist()}


def test_no_limit_keeps_every_peak_and_threshold_selects(xfeat, ref_input, ref_net):
    image = ref_input["image_bgr_uint8"][..., ::-1]
    all_feats = load_extractor("xfeat", device="cpu", top_k=None, **CONVERTED).extract(image)
    assert key_set(all_feats.keypoints) == reference_peaks(ref_net)
    assert len(all_feats) > 4096
    strict = load_extractor("xfeat", device="cpu", top_k=None, detection_threshold=0.3, **CONVERTED).extract(image)
    assert key_set(strict.keypoints) == reference_peaks(ref_net, 0.3)
    assert 0 < len(strict) < len(all_feats)


def test_window_max_equals_max_pool():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 41, 67, generator=gen)
    x[..., 5:9, 5:9] = 0.5  # a plateau
    x[..., 0, :] = 1.0      # a border ridge
    for k in (1, 3, 5, 7):
        assert torch.equal(window_max(x, k), F.max_pool2d(x, k, stride=1, padding=k // 2))
    with pytest.raises(ValueError):
        window_max(x, 4)


# ------------------------------------------------------------------------------------------ semi-dense
def test_semi_dense_single_scale_is_top_reliability_cells(ref_input, ref_net):
    ex = load_extractor("xfeat", device="cpu", mode="semi-dense", multiscale=False, top_k=300, **CONVERTED)
    feats = ex.extract(ref_input["image_bgr_uint8"][..., ::-1])
    rel = ref_net["heatmap"][0, 0]
    order = np.argsort(-rel.reshape(-1), kind="stable")[:300]
    cy, cx = np.divmod(order, rel.shape[1])
    assert key_set(feats.keypoints) == {(8 * x, 8 * y) for x, y in zip(cx.tolist(), cy.tolist())}
    np.testing.assert_allclose(feats.scores, rel.reshape(-1)[order], atol=1e-5)
    # Near-equal reliabilities may swap places: compare descriptors cell by cell.
    cell_x, cell_y = (feats.keypoints.astype(np.int64) // 8).T
    ref_desc = ref_net["feats"][0][:, cell_y, cell_x].T
    ref_desc /= np.linalg.norm(ref_desc, axis=1, keepdims=True)
    assert (feats.descriptors * ref_desc).sum(1).min() >= 0.9999
    np.testing.assert_array_equal(feats.scales, np.full(300, 8, np.float32))


def test_semi_dense_multiscale_counts_scales_and_coordinates(ref_input):
    ex = load_extractor("xfeat", device="cpu", mode="semi-dense", top_k=1000, **CONVERTED)
    feats = ex.extract(ref_input["image_bgr_uint8"][..., ::-1])
    # 20 % at scale 0.6 (384x288 internal), 80 % at scale 1.3 (832x624), as extract_dualscale.
    assert len(feats) == 200 + 800
    np.testing.assert_allclose(feats.scales[:200], 8 / 0.6, rtol=1e-6)
    np.testing.assert_allclose(feats.scales[200:], 8 / 1.3, rtol=1e-6)
    for part, s in ((slice(0, 200), 0.6), (slice(200, None), 1.3)):
        # F.interpolate(scale_factor=s) gives floor(size * s) (480 * 0.6 -> 287), then the internal size is
        # the multiple of 32 below, r = size / internal; original pixel = (8 cell + 0.5) r / s - 0.5.
        size = np.floor(np.array([640, 480]) * s)
        r = size / (size // 32 * 32)
        cells = ((feats.keypoints[part].astype(np.float64) + 0.5) * s / r - 0.5) / 8
        np.testing.assert_allclose(cells, np.round(cells), atol=1e-3)
        assert np.all(np.diff(feats.scores[part]) <= 0)
    assert feats.keypoints.min() >= -0.5 and feats.keypoints[:, 0].max() <= 639.5
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1, atol=1e-5)


# ------------------------------------------------------------------------------------------ weights
def official_layout(converted: dict, seed: int = 0) -> dict:
    """An official-format xfeat.pt from the converted weights: BatchNorm statistics unfolded again
    (random variances, equivalent network) and the 22 fine_matcher entries of XFeatModel."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in converted.items():
        if key.endswith("layer.1.running_var"):
            prefix = key[: -len("layer.1.running_var")]
            var = 0.5 + torch.rand(value.shape, generator=gen)
            std = torch.sqrt(var + 1e-5)
            state[prefix + "layer.0.weight"] = converted[prefix + "layer.0.weight"] * std.view(-1, 1, 1, 1)
            state[prefix + "layer.1.running_mean"] = converted[prefix + "layer.1.running_mean"] * std
            state[key] = var
            state[prefix + "layer.1.num_batches_tracked"] = torch.tensor(1000)
        elif key not in state:
            state[key] = value
    dims = [128, 512, 512, 512, 512, 64]
    for i in range(5):
        state[f"fine_matcher.{3 * i}.weight"] = torch.randn(dims[i + 1], dims[i], generator=gen)
        state[f"fine_matcher.{3 * i}.bias"] = torch.zeros(dims[i + 1])
        if i < 4:
            state[f"fine_matcher.{3 * i + 1}.running_mean"] = torch.zeros(dims[i + 1])
            state[f"fine_matcher.{3 * i + 1}.running_var"] = torch.ones(dims[i + 1])
            state[f"fine_matcher.{3 * i + 1}.num_batches_tracked"] = torch.tensor(0)
    assert sum(k.startswith("fine_matcher.") for k in state) == 22
    return state


def test_official_layout_loads_and_is_preferred(tmp_path, monkeypatch, ref_input, ref_net):
    converted_path = shared("weights_xfeat", "xfeat_from_onnx.pt")
    converted = torch.load(converted_path, weights_only=True)
    official = official_layout(converted)
    assert not torch.equal(official["block1.0.layer.0.weight"], converted["block1.0.layer.0.weight"])
    torch.save(official, tmp_path / "xfeat.pt")
    # Unfolded network, official statistics: same maps.
    net = XFeatNet()
    load_xfeat_weights(net, tmp_path / "xfeat.pt")
    assert_raw_maps_match(net.eval(), ref_input, ref_net)
    # Found by its official name before the converted file, and hash-checked: this re-made file is not the
    # release's xfeat.pt, the real one is.
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", f"{tmp_path}:{converted_path.parent}")
    with pytest.raises(hub.WeightsHashError, match=r"xfeat.pt: sha256 [0-9a-f]{64} does not match the official "
                       r"xfeat.pt \(expected 0f5187fd"):
        load_extractor("xfeat", device="cpu")
    official_dir = shared("weights_xfeat_official")
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", f"{official_dir}:{converted_path.parent}")
    ex = load_extractor("xfeat", device="cpu")
    assert ex.weights_path == official_dir / "xfeat.pt"
    assert_raw_maps_match(ex.net, ref_input, ref_net)
    # A module state_dict of the original `XFeat` (prefix net.) loads too.
    torch.save({"net." + k: v for k, v in official.items()}, tmp_path / "prefixed.pt")
    ex = load_extractor("xfeat", device="cpu", weights=str(tmp_path / "prefixed.pt"))
    assert_raw_maps_match(ex.net, ref_input, ref_net)


def test_missing_weights_error_names_file_url_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("LOCALFEAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LOCALFEAT_OFFLINE", "1")
    with pytest.raises(hub.WeightsNotFoundError) as info:
        load_extractor("xfeat", device="cpu")
    text = str(info.value)
    assert "'xfeat.pt'" in text and "https://github.com/verlab/accelerated_features/raw/main/weights/xfeat.pt" in text
    assert str(tmp_path / "empty") in text and "xfeat_from_onnx.pt" in text


def test_wrong_checkpoint_is_named(tmp_path):
    sd = torch.load(shared("weights_xfeat", "xfeat_from_onnx.pt"), weights_only=True)
    sd["block1.0.layer.0.weight"] = torch.zeros(8, 1, 3, 3)
    del sd["keypoint_head.3.bias"]
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt.*keypoint_head.3.bias"):
        load_extractor("xfeat", device="cpu", weights=str(tmp_path / "bad.pt"))


def test_weight_specs_and_hash():
    specs = get_class("extractor", "xfeat").weight_specs({})
    assert [s.filename for s in specs] == ["xfeat.pt", "xfeat_from_onnx.pt"]
    assert specs[0].licence == "Apache-2.0" and not specs[0].non_commercial
    assert hub.sha256_file(shared("weights_xfeat", "xfeat_from_onnx.pt")) == specs[1].sha256


# ------------------------------------------------------------------------------------------ config, CLI
@pytest.mark.parametrize("conf, word", [({"mode": "dense"}, "mode"),
                                        ({"top_k": -1}, r"max_keypoints \(given as top_k\) must be None or a pos"),
                                        ({"max_keypoints": 0}, "max_keypoints must be None or a positive"),
                                        ({"nms_kernel": 4}, r"nms_window \(given as nms_kernel\) must be an odd"),
                                        ({"n_limit": 5}, r"unknown config key\(s\) \['n_limit'\]")])
def test_bad_config_is_rejected(conf, word):
    with pytest.raises(ConfigError, match=word):
        load_extractor("xfeat", device="cpu", **conf)


def test_tiny_image_is_rejected(xfeat):
    with pytest.raises(ValueError, match="at least 32x32.*20x40"):
        xfeat.extract(np.zeros((40, 20, 3), np.uint8))


def test_no_peak_gives_empty_features(xfeat):
    ex = load_extractor("xfeat", device="cpu", detection_threshold=1.0)  # softmax values never exceed 1
    feats = ex.extract(np.full((64, 96, 3), 128, np.uint8))
    assert len(feats) == 0 and feats.descriptors.shape == (0, 64) and feats.image_size == (96, 64)


def test_semi_dense_small_image_error_names_sizes():
    ex = load_extractor("xfeat", device="cpu", mode="semi-dense")
    with pytest.raises(ValueError, match="40x40.*24x24 at scale 0.6"):
        ex.extract(np.zeros((40, 40, 3), np.uint8))
    assert len(load_extractor("xfeat", device="cpu", mode="semi-dense", multiscale=False,
                              top_k=None).extract(np.zeros((40, 40, 3), np.uint8))) == 16


def test_cli_extract_and_match(tmp_path):
    images = shared("hpatches_subset", "v_churchill")
    assert main(["extract", str(images / "[12].ppm"), "-o", str(tmp_path / "f.h5"), "--model", "xfeat",
                 "--conf", "top_k=1024", "device=cpu", "--resize-max", "640"]) == 0
    assert main(["match", str(tmp_path / "f.h5"), "-o", str(tmp_path / "m.h5"), "--exhaustive"]) == 0
    store = FeatureStore(tmp_path / "f.h5", "r")
    names = store.names()
    assert len(names) == 2
    f0 = store.get(names[0])
    w, h = f0.image_size
    assert len(f0) == 1024 and f0.descriptors.shape == (1024, 64)
    assert f0.keypoints.min() >= -0.5 and f0.keypoints[:, 0].max() <= w - 0.5 and f0.keypoints[:, 1].max() <= h - 0.5
    m = MatchStore(tmp_path / "m.h5", "r").get(*names)
    assert len(m) > 100
