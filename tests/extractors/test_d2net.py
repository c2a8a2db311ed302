"""D2-Net: manifest key parity and output parity with the release, using the closed-form weights of
reference/d2net/README.md (regenerated here; no weight file is stored)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from conftest import shared

from localfeat import hub
from localfeat.extractors.d2net import (D2Net, D2NetModel, fit_size, hard_detection, localization_steps,
                                        preprocess, process_multiscale, soft_detection_scores)
from localfeat.registry import ConfigError, get_class, load_extractor

# Tolerances against the reference outputs (made on one CPU; the suite runs on any x86-64 CPU):
# VGG-16 features reach ~600 and oneDNN's float32 kernels (AVX-512 vs AVX2, accumulation order) move
# them by ~2.5e-6 of that (1.3e-3 measured with ONEDNN_MAX_CPU_ISA=AVX2), so features are compared at
# 1e-5 of the largest value and scores (products of features) at 1e-5 relative. Keypoints come from
# finite differences of the features (sub-pixel refinement): 2.3e-4 px apart measured, compared at
# 1e-3 px. A wrong weight, padding or preprocessing moves features by whole units and points by pixels.
FEATURE_TOL_OF_MAX = 1e-5
SCORE_RTOL = 1e-5
KEYPOINT_TOL_PX = 1e-3


def assert_features_close(ours, reference):
    np.testing.assert_allclose(ours, reference, rtol=0, atol=FEATURE_TOL_OF_MAX * float(np.abs(reference).max()))


def closed_form_state_dict(manifest: dict) -> dict:
    """The README's splitmix64-based weights: parameter p, element k (C order) -> float32 value."""
    out = {}
    for p, (name, info) in enumerate(manifest["state_dict"].items()):
        shape = info["shape"]
        with np.errstate(over="ignore"):
            z = (np.uint64(p) << np.uint64(32)) + np.arange(int(np.prod(shape)), dtype=np.uint64)
            z = z + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        u = (z >> np.uint64(40)).astype(np.float64)
        scale = np.sqrt(6.0 / (shape[1] * 9)) if name.endswith(".weight") else 0.05
        out[name] = torch.from_numpy((((u + 0.5) / 2 ** 24 * 2 - 1) * scale).astype(np.float32).reshape(shape))
    return out


@pytest.fixture(scope="module")
def manifest():
    return json.loads(shared("reference", "d2net", "d2net_state_dict_manifest.json").read_text())


@pytest.fixture(scope="module")
def state_dict(manifest):
    return closed_form_state_dict(manifest)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, state_dict):
    """A checkpoint laid out as the release's train.py saves it."""
    path = tmp_path_factory.mktemp("d2net") / "d2_tf.pth"
    torch.save({"args": argparse.Namespace(lr=1e-3, model_file="models/d2_ots.pth"), "epoch_idx": 7,
                "model": state_dict, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
                "train_loss_history": [1.0], "validation_loss_history": [1.1]}, path)
    return str(path)


@pytest.fixture(scope="module")
def ref():
    return {name: np.load(shared("reference", "d2net", f"d2net_{name}.npz"))
            for name in ("input", "formula_weights_outputs")}


@pytest.fixture(scope="module")
def extractor(checkpoint):
    return load_extractor("d2net", weights=checkpoint, device="cpu")


def test_closed_form_weights_match_the_readme_probe_values(state_dict):
    check = json.loads(shared("reference", "d2net", "d2net_formula_weights_check.json").read_text())
    probes = check["probe_first_values"]
    for name in ("dense_feature_extraction.model.0.weight", "dense_feature_extraction.model.0.bias"):
        np.testing.assert_array_equal(state_dict[name].flatten()[:4].numpy(), np.float32(probes[name]))
    for name, t in state_dict.items():
        assert float(t.flatten()[-1]) == np.float32(probes[f"{name}[-1]"])
        assert abs(t.double().sum().item() - check["param_sums_float64"][name]) < 1e-9


@pytest.mark.parametrize("mode", ["test", "train"])
def test_state_dict_keys_and_shapes_match_manifest(manifest, mode):
    own = {k: list(v.shape) for k, v in D2NetModel(mode).state_dict().items()}
    assert own == {k: v["shape"] for k, v in manifest["state_dict"].items()}
    assert sum(int(np.prod(s)) for s in own.values()) == manifest["n_params"] == 7_635_264


def test_preprocessing_is_caffe(ref):
    np.testing.assert_array_equal(preprocess(ref["input"]["image_crop_uint8"], "caffe"), ref["input"]["input"][0])


def test_dense_features_and_detections(extractor, state_dict, ref):
    out = ref["formula_weights_outputs"]
    x = torch.from_numpy(ref["input"]["input"])
    with torch.no_grad():
        test = extractor.net(x)
        train_model = D2NetModel("train")
        train_model.load_state_dict(state_dict, strict=True)
        train = train_model(x)
    assert test.shape == (1, 512, 23, 31) and train.shape == (1, 512, 12, 16)
    assert_features_close(test.numpy(), out["dense_features_test"])
    assert_features_close(train.numpy(), out["dense_features_train"])
    feats = torch.from_numpy(out["dense_features_test"])
    np.testing.assert_array_equal(hard_detection(feats).numpy(), out["hard_detections_test"])
    assert int(out["hard_detections_test"].sum()) == 34
    for kind in ("test", "train"):
        s = soft_detection_scores(torch.from_numpy(out[f"dense_features_{kind}"]))
        np.testing.assert_allclose(s.numpy(), out[f"soft_detection_scores_{kind}"], atol=1e-7, rtol=1e-5)
        np.testing.assert_allclose(s.sum().item(), 1.0, atol=1e-5)


def test_single_scale_extraction(extractor, ref):
    out = ref["formula_weights_outputs"]
    f = extractor.extract(ref["input"]["image_crop_uint8"])
    assert f.image_size == (128, 96) and len(f) == 31
    np.testing.assert_allclose(f.keypoints, out["keypoints_single"][:, :2], atol=KEYPOINT_TOL_PX, rtol=0)
    np.testing.assert_allclose(f.scores, out["scores_single"], atol=0, rtol=SCORE_RTOL)
    np.testing.assert_allclose(f.descriptors, out["descriptors_single"], atol=1e-4, rtol=0)


def test_multiscale_extraction(checkpoint, ref):
    out = ref["formula_weights_outputs"]
    ex = load_extractor("d2net", weights=checkpoint, device="cpu", multiscale=True)
    f = ex.extract(ref["input"]["image_crop_uint8"])
    assert len(f) == 34
    np.testing.assert_allclose(f.keypoints, out["keypoints_multi"][:, :2], atol=KEYPOINT_TOL_PX, rtol=0)
    np.testing.assert_allclose(f.scores, out["scores_multi"], atol=0, rtol=SCORE_RTOL)
    np.testing.assert_allclose(f.descriptors, out["descriptors_multi"], atol=1e-4, rtol=0)
    # levels 0.5, 1, 2 hold 14, 9 and 11 points (the third column 1/scale of the release)
    np.testing.assert_array_equal(out["keypoints_multi"][:, 2], np.repeat(np.float32([2.0, 1.0, 0.5]), [14, 9, 11]))


def test_process_multiscale_scale_column(extractor, ref):
    """Single scale through the lower-level function: third column 1/scale = 1, same points."""
    out = ref["formula_weights_outputs"]
    kp, scores, _ = process_multiscale(torch.from_numpy(ref["input"]["input"]),
                                       extractor.net.dense_feature_extraction, scales=[1.0])
    np.testing.assert_allclose(kp, out["keypoints_single"], atol=KEYPOINT_TOL_PX, rtol=0)
    np.testing.assert_allclose(scores, out["scores_single"], atol=0, rtol=SCORE_RTOL)


def test_max_keypoints_keeps_the_best(checkpoint, ref):
    out = ref["formula_weights_outputs"]
    ex = load_extractor("d2net", weights=checkpoint, device="cpu", max_keypoints=10)
    f = ex.extract(ref["input"]["image_crop_uint8"])
    order = np.argsort(-out["scores_single"], kind="stable")[:10]
    np.testing.assert_allclose(f.keypoints, out["keypoints_single"][order, :2], atol=KEYPOINT_TOL_PX, rtol=0)


def test_fit_size_follows_extract_features_limits():
    assert fit_size(96, 128, 1600, 2800) == (96, 128)
    assert fit_size(1000, 3000, 1600, 2800) == (533, 1600)
    assert fit_size(2000, 1900, 1600, 2800) == (1436, 1364)  # 0.8, then 2800 / 3120
    assert fit_size(2000, 1900, None, None) == (2000, 1900)


def test_large_image_is_downscaled_and_mapped_back(checkpoint, ref):
    crop = ref["input"]["image_crop_uint8"]
    big = np.kron(crop, np.ones((2, 2, 1), np.uint8))  # 192 x 256, shrunk back to 96 x 128 by max_edge=128
    ex = load_extractor("d2net", weights=checkpoint, device="cpu", max_edge=128)
    f = ex.extract(big)
    assert f.image_size == (256, 192) and len(f) > 0
    assert f.keypoints[:, 0].max() < 256 and f.keypoints[:, 1].max() < 192


@pytest.mark.parametrize("variant,filename", [("d2_tf", "d2_tf.pth"),
                                              ("d2_tf_no_phototourism", "d2_tf_no_phototourism.pth")])
def test_missing_weights_error_says_what_and_where(tmp_path, monkeypatch, variant, filename):
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("LOCALFEAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LOCALFEAT_OFFLINE", "1")
    with pytest.raises(hub.WeightsNotFoundError) as err:
        load_extractor("d2net", variant=variant)
    text = str(err.value)
    assert filename in text and f"https://dusmanu.com/files/d2-net/{filename}" in text
    assert str(tmp_path / "weights") in text


def test_registered_and_bad_config_named():
    assert get_class("extractor", "d2net") is D2Net
    with pytest.raises(ConfigError, match="variant"):
        load_extractor("d2net", variant="d2_ots")
    with pytest.raises(ConfigError, match="preprocessing"):
        load_extractor("d2net", preprocessing="tf")


def test_pointwise_newton_steps_equal_the_release_filters():
    """Our per-point finite differences vs the release's 3x3 conv filters (zero padding) on a random map."""
    f = torch.rand(1, 4, 7, 9, generator=torch.Generator().manual_seed(0)) * 10
    filters = {"dii": [[0, 1., 0], [0, -2., 0], [0, 1., 0]], "djj": [[0, 0, 0], [1., -2., 1.], [0, 0, 0]],
               "dij": [[.25, 0, -.25], [0, 0, 0], [-.25, 0, .25]], "di": [[0, -.5, 0], [0, 0, 0], [0, .5, 0]],
               "dj": [[0, 0, 0], [-.5, 0, .5], [0, 0, 0]]}
    g = {k: torch.nn.functional.conv2d(f.view(-1, 1, 7, 9), torch.tensor(v).view(1, 1, 3, 3), padding=1).view(1, 4, 7, 9)
         for k, v in filters.items()}
    det = g["dii"] * g["djj"] - g["dij"] ** 2
    step_i = -(g["djj"] / det * g["di"] - g["dij"] / det * g["dj"])
    step_j = -(-g["dij"] / det * g["di"] + g["dii"] / det * g["dj"])
    index = tuple(t.flatten() for t in torch.meshgrid(torch.zeros(1, dtype=torch.long), torch.arange(4),
                                                      torch.arange(7), torch.arange(9), indexing="ij"))
    steps = localization_steps(f, index)
    np.testing.assert_allclose(steps[0].numpy(), step_i.flatten().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(steps[1].numpy(), step_j.flatten().numpy(), rtol=1e-4, atol=1e-5)
    tr = g["dii"] + g["djj"]
    expected = ((f == f.max(1, keepdim=True).values) & (f == torch.nn.functional.max_pool2d(f, 3, 1, 1))
                & (tr * tr / det <= 7.2) & (det > 0))
    assert expected.any() and torch.equal(hard_detection(f), expected)
