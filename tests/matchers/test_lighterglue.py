"""LighterGlue with the official xfeat-lighterglue.pt against the ORIGINAL code's outputs (reference/official:
verlab accelerated_features e92685f + kornia 0.9.0 LightGlue, XFeat features of sacre_coeur 1-2, 4096 each).

Matches, layers run and pruning must be identical (the decisions compare probabilities with thresholds; float
rounding is ~1e-5 here, measured 4e-5 on the probabilities); probabilities within 1e-3.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared
from localfeat import Features, hub, load_matcher
from localfeat.hub import CheckpointError
from localfeat.matchers.lighterglue import WEIGHTS, LighterGlue
from localfeat.registry import ConfigError, get_class

OFFICIAL_FILE = ("weights_xfeat_official", "xfeat-lighterglue.pt")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(shared("reference", "official", "lighterglue_sacre_coeur_1_2.npz")))


def inputs(ref: dict) -> tuple[Features, Features]:
    return tuple(Features(ref[f"keypoints{i}"], ref[f"scores{i}"], ref[f"descriptors{i}"],
                          tuple(int(v) for v in ref[f"image_size{i}"])) for i in (0, 1))


def test_registered_with_the_original_settings_and_pinned_file():
    assert get_class("matcher", "lighterglue") is LighterGlue
    assert LighterGlue.default_conf == {"n_layers": 6, "depth_confidence": None, "width_confidence": 0.95,
                                        "filter_threshold": 0.1, "weights": None, "precision": "fp32"}
    spec = WEIGHTS["xfeat"]
    assert hub.sha256_file(shared(*OFFICIAL_FILE)) == spec.sha256 and spec.licence == "Apache-2.0"
    assert LighterGlue.weight_specs(LighterGlue.all_defaults()) == [spec]


def test_official_file_loads_strictly_matcher_entries_only():
    m = load_matcher("lighterglue", device="cpu")
    assert m.weights_path == shared(*OFFICIAL_FILE)
    state = torch.load(shared(*OFFICIAL_FILE), map_location="cpu", weights_only=True)
    assert len(state) == 291 and sum(k.startswith("extractor.") for k in state) == 122
    own = m.net.state_dict()
    assert len(own) == 169 + 1  # + confidence_thresholds (computed)
    assert torch.equal(own["transformers.5.cross_attn.to_qk.weight"], state["matcher.transformers.5.cross_attn.to_qk.weight"])
    assert torch.equal(own["input_proj.weight"], state["matcher.input_proj.weight"])


@pytest.mark.slow
def test_matches_layers_and_pruning_equal_the_original(ref):
    out = load_matcher("lighterglue", device="cpu").run(*inputs(ref))
    got, want = set(map(tuple, out["matches"].numpy().tolist())), set(map(tuple, ref["matches"].tolist()))
    assert len(got) == 243 and got == want  # IoU 1.0
    assert out["stop"] == int(ref["stop"]) == 6
    for k in (0, 1):
        np.testing.assert_array_equal(out[f"matches{k}"].numpy(), ref[f"matches{k}"])
        np.testing.assert_array_equal(out[f"prune{k}"].numpy(), ref[f"prune{k}"])
        np.testing.assert_allclose(out[f"matching_scores{k}"].numpy(), ref[f"matching_scores{k}"], atol=1e-3)
    assert int((out["prune0"] == out["stop"]).sum()) == 3909  # points of image 0 at the last layer (README)


def test_wrong_files_and_features_are_explained(tmp_path, monkeypatch):
    disk_file = shared("reference", "lightglue", "lightglue_superpoint_2layers_random_state_dict.pth")
    with pytest.raises(CheckpointError, match="not a LighterGlue file .* found"):
        load_matcher("lighterglue", weights=str(disk_file), device="cpu")
    with pytest.raises(ConfigError, match="lighterglue matches XFeat features only, not disk"):
        LighterGlue.conf_for_features({}, "disk")
    assert LighterGlue.conf_for_features({"n_layers": 3}, "xfeat") == {"n_layers": 3}
    with pytest.raises(ConfigError, match="features='xfeat' is not supported.*use the matcher 'lighterglue'"):
        load_matcher("lightglue", features="xfeat")
    m = load_matcher("lighterglue", device="cpu", n_layers=2)
    f = Features(np.zeros((3, 2), np.float32), np.ones(3, np.float32), np.eye(3, 128, dtype=np.float32), (10, 10))
    with pytest.raises(ValueError, match="features0 has 128-D descriptors but LighterGlue expects XFeat's 64-D"):
        m.match(f, f)
    # A damaged copy of the official file is refused by its hash.
    data = shared(*OFFICIAL_FILE).read_bytes()
    (tmp_path / "xfeat-lighterglue.pt").write_bytes(data[:-10])
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", str(tmp_path))
    with pytest.raises(hub.WeightsHashError, match=f"expected {WEIGHTS['xfeat'].sha256}"):
        load_matcher("lighterglue", device="cpu")
