"""LightGlue matcher: parity with the original (reference/lightglue fixtures), adaptive depth and width,
official key names and shapes (full-configuration manifests), weights errors, and the `match` CLI.

Float tolerances: the fixture was computed on another CPU; our float32 outputs and the fixture's are
equally far (about 1e-6 relative) from a float64 evaluation of the same network, so raw outputs are compared
with atol 1e-4 plus rtol 1e-5 (log-assignment entries reach |100|, where one float32 ULP is 7.6e-6).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import REFERENCE, shared
from localfeat import Features, load_matcher
from localfeat import hub
from localfeat.matchers.lightglue import (LightGlueNet, paired_features, mutual_assignment,
                                          normalize_keypoints)
from localfeat.registry import ConfigError, get_class

LG = REFERENCE / "lightglue"
SMALL = "lightglue_superpoint_2layers_random_state_dict.pth"
OFF = {"depth_confidence": None, "width_confidence": None}


def fixture(name: str) -> dict:
    data = np.load(shared("reference", "lightglue", f"lightglue_set{name}.npz"))
    return {k: data[k] for k in data.files}


def features(ref: dict, side: int) -> Features:
    kpts = ref[f"keypoints{side}"]
    return Features(kpts, np.ones(len(kpts), np.float32), ref[f"descriptors{side}"],
                    tuple(int(v) for v in ref[f"image_size{side}"]))


def small_matcher(**conf) -> object:
    conf = {"n_layers": 2, "device": "cpu", "weights": str(shared("reference", "lightglue", SMALL)), **conf}
    return load_matcher("lightglue", **conf)


@pytest.fixture(scope="module")
def set_a():
    return fixture("A")


@pytest.fixture(scope="module")
def set_b():
    return fixture("B")


@pytest.fixture(scope="module")
def plain():
    """The 2-layer fixture model, adaptive depth and width off (the fixture's configuration)."""
    return small_matcher(**OFF)


def assert_outputs_equal(out: dict, ref: dict, keys=("log_assignment", "similarity")) -> None:
    for key in ("matches0", "matches1"):
        np.testing.assert_array_equal(out[key].numpy(), ref[key], err_msg=key)
    np.testing.assert_array_equal(out["matches"].numpy(), ref["matches"])
    for key in ("matching_scores0", "matching_scores1"):
        np.testing.assert_allclose(out[key].numpy(), ref[key], atol=1e-5, rtol=0, err_msg=key)
    np.testing.assert_allclose(out["scores"].numpy(), ref["scores"], atol=1e-5, rtol=0)
    for key in keys:
        np.testing.assert_allclose(out[key].numpy(), ref[key], atol=1e-4, rtol=1e-5, err_msg=key)


# ------------------------------------------------------------------------------- architecture parity
def test_fixture_state_dict_loads_strictly(plain):
    state = torch.load(shared("reference", "lightglue", SMALL), map_location="cpu", weights_only=True)
    result = plain.net.load_state_dict(state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert isinstance(plain.net.input_proj, torch.nn.Identity)
    np.testing.assert_allclose(plain.net.confidence_thresholds.numpy(), [0.9, 0.8 + 0.1 * np.exp(-2.0)], rtol=1e-6)


def test_keypoint_normalisation_hand_computed():
    # 640 x 480: centre (320, 240), half of the longer side 320.
    kpts = torch.tensor([[[0.0, 0.0], [320.0, 240.0], [640.0, 480.0], [160.0, 400.0]]])
    out = normalize_keypoints(kpts, torch.tensor([[640.0, 480.0]]))
    np.testing.assert_allclose(out[0].numpy(), [[-1, -0.75], [0, 0], [1, 0.75], [-0.5, 0.5]], atol=1e-7)


def test_set_a_raw_outputs_and_matches(plain, set_a):
    out = plain.run(features(set_a, 0), features(set_a, 1), intermediates=True)
    assert_outputs_equal(out, set_a)
    for key in ("encoding0", "encoding1"):
        np.testing.assert_allclose(out[key].numpy(), set_a[key], atol=1e-6, rtol=0, err_msg=key)
    for layer in (0, 1):
        for side in (0, 1):
            key = f"desc{side}_after_layer{layer}"
            np.testing.assert_allclose(out[key].numpy(), set_a[key], atol=1e-5, rtol=0, err_msg=key)
    assert out["stop"] == int(set_a["stop"]) == 2
    np.testing.assert_array_equal(out["prune0"].numpy(), set_a["prune0"])
    np.testing.assert_array_equal(out["prune1"].numpy(), set_a["prune1"])
    assert len(out["matches"]) == 2


def test_set_b_matches_equal_ground_truth_through_public_match(plain, set_b):
    out = plain.run(features(set_b, 0), features(set_b, 1))
    assert_outputs_equal(out, set_b)
    matches = plain.match(features(set_b, 0), features(set_b, 1))
    np.testing.assert_array_equal(matches.indices, set_b["matches"])
    np.testing.assert_allclose(matches.scores, set_b["scores"], atol=1e-5, rtol=0)
    assert matches.indices.dtype == np.int64 and matches.scores.dtype == np.float32
    assert len(matches) == 218
    np.testing.assert_array_equal(set_b["gt_matches0"][matches.indices[:, 0]], matches.indices[:, 1])


def test_mutual_assignment_hand_computed():
    # Row 0 <-> col 1 mutual with p=0.6; row 1's best is col 1 too (not mutual); row 2 <-> col 0 mutual
    # with p=0.05, below the threshold 0.1. The last row / column are the dustbins (ignored).
    p = np.array([[0.01, 0.6, 0.0], [0.01, 0.3, 0.0], [0.05, 0.01, 0.0], [0.0, 0.0, 0.0]]) + 1e-9
    m0, m1, s0, s1 = mutual_assignment(torch.tensor(np.log(p))[None], 0.1)
    np.testing.assert_array_equal(m0[0].numpy(), [1, -1, -1])
    np.testing.assert_array_equal(m1[0].numpy(), [-1, 0])
    np.testing.assert_allclose(s0[0].numpy(), [0.6, 0.0, 0.05], atol=1e-8)
    np.testing.assert_allclose(s1[0].numpy(), [0.05, 0.6], atol=1e-8)
    m0, m1, _, _ = mutual_assignment(torch.tensor(np.log(p))[None], None)
    np.testing.assert_array_equal(m0[0].numpy(), [1, -1, 0])
    np.testing.assert_array_equal(m1[0].numpy(), [2, 0])


# ------------------------------------------------------------------------------- adaptive depth / width
def test_release_adaptive_defaults_equal_fixture_when_no_token_is_confident(set_a):
    # The fixture's random token-confidence heads give confidences < 0.5 < thresholds (0.9): nothing stops,
    # and low-confidence points are never pruned, so the release defaults give the fixture's outputs.
    matcher = small_matcher(depth_confidence=0.95, width_confidence=0.99)
    out = matcher.run(features(set_a, 0), features(set_a, 1))
    assert_outputs_equal(out, set_a)
    assert out["stop"] == 2
    np.testing.assert_array_equal(out["prune0"].numpy(), set_a["prune0"])  # counted: kept at layer 0 -> 2


def test_early_stop_after_first_layer(set_a):
    matcher = small_matcher(depth_confidence=0.95, width_confidence=None)
    with torch.no_grad():
        matcher.net.token_confidence[0].token[0].bias += 20.0  # every point confident after layer 0
    out = matcher.run(features(set_a, 0), features(set_a, 1))
    assert out["stop"] == 1
    with torch.no_grad():  # expected: head 0 on the fixture's states after layer 0
        expected, _ = matcher.net.log_assignment[0](torch.from_numpy(set_a["desc0_after_layer0"]),
                                                     torch.from_numpy(set_a["desc1_after_layer0"]))
    np.testing.assert_allclose(out["log_assignment"].numpy(), expected.numpy(), atol=1e-4, rtol=1e-5)
    m0, _, _, _ = mutual_assignment(expected, 0.1)
    np.testing.assert_array_equal(out["matches0"].numpy(), m0.numpy())
    # n_layers=1 (truncation of the same file) runs the same computation.
    out1 = small_matcher(n_layers=1, **OFF).run(features(set_a, 0), features(set_a, 1))
    np.testing.assert_allclose(out1["log_assignment"].numpy(), expected.numpy(), atol=1e-4, rtol=1e-5)
    assert out1["stop"] == 1


def _expected_after_pruning(matcher, states: dict, threshold: float):
    """Layer 1 + head 1 run on the points whose layer-0 matchability exceeds `threshold`, from the
    states after layer 0 and the encodings in `states`."""
    net = matcher.net
    x0, x1, e0, e1 = (torch.as_tensor(states[k]) for k in
                      ("desc0_after_layer0", "desc1_after_layer0", "encoding0", "encoding1"))
    with torch.no_grad():
        keep0 = torch.where(net.log_assignment[0].matchability_probability(x0)[0] > threshold)[0]
        keep1 = torch.where(net.log_assignment[0].matchability_probability(x1)[0] > threshold)[0]
        y0, y1 = net.transformers[1](x0[:, keep0], x1[:, keep1], e0[..., keep0, :], e1[..., keep1, :])
        log_assignment, _ = net.log_assignment[1](y0, y1)
    m0, _, s0, _ = mutual_assignment(log_assignment, 0.1)
    valid = m0[0] > -1
    matches = torch.stack([keep0[valid], keep1[m0[0][valid]]], -1)
    return keep0, keep1, log_assignment, matches, s0[0][valid]


@pytest.mark.parametrize("depth_confidence", [None, 1.0])
@pytest.mark.parametrize("name", ["A", "B"])
def test_point_pruning_by_matchability(plain, set_a, set_b, name, depth_confidence):
    # width_confidence 0.55: points whose matchability <= 0.45 are dropped after layer 0. With
    # depth_confidence=1.0 tokens are computed but stopping is impossible; confident tokens make them prunable.
    # Expected values start from the fixture's states after layer 0 (set A), or from our own (set B, which
    # the fixture does not record; they are checked on set A) to exercise the index mapping on 218 matches.
    ref = set_a if name == "A" else set_b
    states = ref if name == "A" else plain.run(features(ref, 0), features(ref, 1), intermediates=True)
    m, n = len(ref["keypoints0"]), len(ref["keypoints1"])
    matcher = small_matcher(depth_confidence=depth_confidence, width_confidence=0.55)
    if depth_confidence is not None:
        with torch.no_grad():
            matcher.net.token_confidence[0].token[0].bias += 20.0
    keep0, keep1, log_assignment, matches, scores = _expected_after_pruning(matcher, states, 1 - 0.55)
    assert 0 < len(keep0) < m and 0 < len(keep1) < n and len(matches) > 0  # the test does prune and match
    out = matcher.run(features(ref, 0), features(ref, 1))
    assert out["stop"] == 2
    np.testing.assert_array_equal(out["kept0"][0].numpy(), keep0.numpy())
    np.testing.assert_array_equal(out["kept1"][0].numpy(), keep1.numpy())
    np.testing.assert_allclose(out["log_assignment"].numpy(), log_assignment.numpy(), atol=1e-4, rtol=1e-5)
    np.testing.assert_array_equal(out["matches"].numpy(), matches.numpy())
    np.testing.assert_allclose(out["scores"].numpy(), scores.numpy(), atol=1e-5)
    # Per-point outputs are in input indices: pruned points are unmatched, and counted as pruned at layer 1.
    prune0 = np.ones(m)
    prune0[keep0.numpy()] = 2
    np.testing.assert_array_equal(out["prune0"][0].numpy(), prune0)
    m0 = np.full(m, -1)
    m0[matches[:, 0].numpy()] = matches[:, 1].numpy()
    np.testing.assert_array_equal(out["matches0"][0].numpy(), m0)
    m1 = out["matches1"][0].numpy()
    np.testing.assert_array_equal(np.flatnonzero(m1 > -1), np.sort(matches[:, 1].numpy()))
    np.testing.assert_array_equal(m0[m1[m1 > -1]], np.flatnonzero(m1 > -1))
    if name == "B":  # pruning keeps most of the true matches of this structured set
        assert (ref["gt_matches0"][matches[:, 0].numpy()] == matches[:, 1].numpy()).all()


def test_low_confidence_points_are_never_pruned(set_b):
    # Same width as above, but tokens stay unconfident (< 0.9): no point may be dropped.
    out = small_matcher(depth_confidence=1.0, width_confidence=0.55).run(features(set_b, 0), features(set_b, 1))
    assert out["kept0"].shape == (1, 400) and out["kept1"].shape == (1, 350)
    assert_outputs_equal(out, set_b)


# ------------------------------------------------------------------------------- weights and manifests
@pytest.mark.parametrize("name", ["superpoint", "disk", "aliked"])
def test_full_configuration_matches_manifest(name):
    manifest = json.loads(shared("reference", "lightglue", "lightglue_full_config_manifest.json").read_text())[name]
    pairing = paired_features()[name]
    spec, input_dim = pairing["weights"], pairing["input_dim"]
    assert input_dim == manifest["conf"]["input_dim"]
    net = LightGlueNet(input_dim, n_layers=manifest["conf"]["n_layers"])
    state = net.state_dict()
    expected = manifest["state_dict"]
    assert list(state) == list(expected)
    for key, tensor in state.items():
        assert list(tensor.shape) == expected[key]["shape"], key
        assert str(tensor.dtype).replace("torch.", "") == expected[key]["dtype"], key
    assert sum(p.numel() for p in net.parameters()) == manifest["n_params"]
    # The defaults are the release's, and the weights table points at the release file.
    defaults = get_class("matcher", "lightglue").default_conf
    for key in ("n_layers", "depth_confidence", "width_confidence", "filter_threshold"):
        assert defaults[key] == manifest["conf"][key], key
    assert spec.urls[0] == manifest["download"]["url"]
    assert spec.filename == manifest["download"]["url"].rsplit("/", 1)[1]
    assert spec.filename.replace(".pth", "_v0-1_arxiv.pth") == manifest["download"]["file_name"]


def test_small_manifest_key_for_key(plain):
    manifest = json.loads(shared("reference", "lightglue", "lightglue_superpoint_2layers_manifest.json").read_text())
    state = plain.net.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in manifest["state_dict"].items()}


def test_legacy_flat_key_names_load(tmp_path, set_b):
    # Early release files name layers self_attn.{i} / cross_attn.{i} and do not store confidence_thresholds.
    state = torch.load(shared("reference", "lightglue", SMALL), map_location="cpu", weights_only=True)
    legacy = {}
    for key, value in state.items():
        if key == "confidence_thresholds":
            continue
        if key.startswith("transformers."):
            _, i, block, rest = key.split(".", 3)
            key = f"{block}.{i}.{rest}"
        legacy[key] = value
    assert "self_attn.1.Wqkv.weight" in legacy
    path = tmp_path / "superpoint_lightglue.pth"
    torch.save(legacy, path)
    matches = small_matcher(weights=str(path), **OFF).match(features(set_b, 0), features(set_b, 1))
    np.testing.assert_array_equal(matches.indices, set_b["matches"])


def test_incompatible_files_and_configs_name_the_problem():
    with pytest.raises(ConfigError, match="holds 2 transformer layer.*n_layers=2"):
        small_matcher(n_layers=3)
    with pytest.raises(ValueError, match="features=superpoint"):  # 256-D file loaded as a 128-D model
        small_matcher(features="disk")
    with pytest.raises(ConfigError, match="None to switch it off"):
        small_matcher(depth_confidence=-1)
    with pytest.raises(ConfigError, match="choose one of"):
        small_matcher(features="sift")


def test_descriptor_dimension_mismatch_is_explained(plain, set_a):
    f0 = features(set_a, 0)
    f128 = Features(f0.keypoints, f0.scores, f0.descriptors[:, :128] / np.linalg.norm(
        f0.descriptors[:, :128], axis=1, keepdims=True), f0.image_size)
    with pytest.raises(ValueError, match="128-D descriptors but features='superpoint' expects 256-D"):
        plain.match(f128, features(set_a, 1))


def test_empty_features_give_no_matches(plain, set_a):
    empty = Features(np.zeros((0, 2)), np.zeros(0), np.zeros((0, 256)), (640, 480))
    assert len(plain.match(empty, features(set_a, 1))) == 0


@pytest.mark.parametrize("name", ["superpoint", "disk", "aliked"])
def test_missing_weights_error_names_file_url_and_place(tmp_path, monkeypatch, name):
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("LOCALFEAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("LOCALFEAT_OFFLINE", "1")
    with pytest.raises(hub.WeightsNotFoundError) as info:
        load_matcher("lightglue", features=name)
    text = str(info.value)
    assert f"'{name}_lightglue.pth'" in text
    assert f"https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/{name}_lightglue.pth" in text
    assert str(tmp_path / "weights") in text and "LOCALFEAT_WEIGHTS" in text


def test_torch_hub_cache_copy_is_used(tmp_path, monkeypatch, set_b):
    # Users of the original package have the file as <torch home>/hub/checkpoints/<name>_v0-1_arxiv.pth.
    target = tmp_path / "torch" / "hub" / "checkpoints" / "superpoint_lightglue_v0-1_arxiv.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(shared("reference", "lightglue", SMALL).read_bytes())
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("LOCALFEAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # The copy is hash-checked like any official file: the fixture (random weights) is not the release file.
    with pytest.raises(hub.WeightsHashError, match=r"superpoint_lightglue_v0-1_arxiv.pth: sha256 [0-9a-f]{64} "
                       r"does not match the official superpoint_lightglue.pth \(expected 6ff7040d"):
        load_matcher("lightglue", n_layers=2, device="cpu", **OFF)
    # With the fixture's digest pinned in the extractor's pairing table, the copy is found and used.
    import dataclasses

    from localfeat.extractors import superpoint

    spec = dataclasses.replace(superpoint.LIGHTGLUE["weights"], sha256=hub.sha256_file(target))
    monkeypatch.setitem(superpoint.LIGHTGLUE, "weights", spec)
    matcher = load_matcher("lightglue", n_layers=2, device="cpu", **OFF)
    assert matcher.weights_path == target
    np.testing.assert_array_equal(matcher.match(features(set_b, 0), features(set_b, 1)).indices, set_b["matches"])


def test_models_listing_reports_weights_status():
    cls = get_class("matcher", "lightglue")
    specs = cls.weight_specs(cls.all_defaults())
    assert [s.filename for s in specs] == ["superpoint_lightglue.pth"]
    assert cls.weight_specs({**cls.all_defaults(), "features": "aliked"})[0].filename == "aliked_lightglue.pth"
    assert cls.weight_specs({**cls.all_defaults(), "weights": "x.pth"}) == []


# ------------------------------------------------------------------------------- pipeline / CLI
def test_cli_match_exhaustive_with_lightglue(tmp_path, set_b, capsys):
    from localfeat.cli import main
    from localfeat.io.h5 import FeatureStore, MatchStore

    feats = tmp_path / "features.h5"
    with FeatureStore(feats, mode="w", model="fixture", conf={}, conf_hash="0") as store:
        store.put("a.jpg", features(set_b, 0))
        store.put("b.jpg", features(set_b, 1))
    out = tmp_path / "m.h5"
    code = main(["match", str(feats), "-o", str(out), "--exhaustive", "--matcher", "lightglue", "--conf",
                 "features=superpoint", f"weights={shared('reference', 'lightglue', SMALL)}", "n_layers=2",
                 "depth_confidence=None", "width_confidence=None", "device=cpu"])
    assert code == 0, capsys.readouterr().err
    with MatchStore(out, mode="r") as store:
        matches = store.get("a.jpg", "b.jpg")
    np.testing.assert_array_equal(matches.indices, set_b["matches"])
    np.testing.assert_allclose(matches.scores, set_b["scores"], atol=1e-5)


def test_input_projection_of_128d_features(tmp_path, plain, set_b):
    # A disk/aliked-layout file: the fixture's layers plus input_proj (256 x 128) embedding a 128-D descriptor
    # as the first 128 coordinates. Matching 128-D descriptors d must then equal the 256-D model on [d, 0].
    state = torch.load(shared("reference", "lightglue", SMALL), map_location="cpu", weights_only=True)
    state["input_proj.weight"] = torch.eye(256, 128)
    state["input_proj.bias"] = torch.zeros(256)
    path = tmp_path / "aliked_lightglue.pth"
    torch.save(state, path)
    short = [Features(f.keypoints, f.scores, f.descriptors[:, :128], f.image_size)
             for f in (features(set_b, 0), features(set_b, 1))]
    padded = [Features(f.keypoints, f.scores, np.pad(f.descriptors, ((0, 0), (0, 128))), f.image_size)
              for f in short]
    for name in ("aliked", "disk"):
        matcher = small_matcher(features=name, weights=str(path), **OFF)
        assert tuple(matcher.net.input_proj.weight.shape) == (256, 128)
        out = matcher.run(*short)
        expected = plain.run(*padded)
        np.testing.assert_allclose(out["log_assignment"].numpy(), expected["log_assignment"].numpy(),
                                   atol=1e-4, rtol=1e-5)
        np.testing.assert_array_equal(out["matches"].numpy(), expected["matches"].numpy())
        assert len(out["matches"]) > 50
    with pytest.raises(ValueError, match="features=disk or aliked"):  # 128-D file loaded as superpoint
        small_matcher(features="superpoint", weights=str(path))
