"""LightGlue with the official DISK and ALIKED weights against the ORIGINAL code's outputs
(reference/official, cvg/LightGlue 1fd587b on sacre_coeur 1-2, 2048 x 2048 keypoints; its README).

The files are fetched by `make weights` into .cache/weights (conftest.fetched_weights); nothing is downloaded here.
Tolerances: match sets, layer counts and pruning decisions must be identical (the README's smallest margins,
1.5e-3 on the match threshold and 6.9e-4 between best and second best, are far above float rounding on any
x86-64 CPU); probabilities within 1e-3 and log-assignment values within 2e-3 (float32 rounding through nine
layers: ~1e-4 measured).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import fetched_weights, shared
from localfeat import Features, hub, load_matcher
from localfeat.extractors.aliked import LIGHTGLUE as ALIKED_LIGHTGLUE
from localfeat.extractors.disk import LIGHTGLUE as DISK_LIGHTGLUE
from localfeat.hub import CheckpointError
from localfeat.matchers.lightglue import LightGlueNet, convert_state_dict, load_state_dict_checked

OFFICIAL = ("reference", "official")
FULL = {"depth_confidence": None, "width_confidence": None}


def reference(name: str) -> dict:
    return dict(np.load(shared(*OFFICIAL, f"lightglue_{name}_sacre_coeur_1_2.npz")))


def inputs(ref: dict) -> tuple[Features, Features]:
    return tuple(Features(ref[f"keypoints{i}"], ref[f"keypoint_scores{i}"], ref[f"descriptors{i}"],
                          tuple(int(v) for v in ref[f"image_size{i}"])) for i in (0, 1))


def match_set(pairs: np.ndarray) -> set:
    return set(map(tuple, np.asarray(pairs).tolist()))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["disk", "aliked"])
@pytest.mark.parametrize("mode", ["adaptive", "full"])
def test_matches_layers_and_pruning_equal_the_original(name, mode):
    ref = reference(name)
    prefix = "full_" if mode == "full" else ""
    matcher = load_matcher("lightglue", features=name, device="cpu", **(FULL if mode == "full" else {}))
    assert matcher.weights_path == fetched_weights(f"{name}_lightglue.pth")
    out = matcher.run(*inputs(ref))
    got, want = match_set(out["matches"].numpy()), match_set(ref[prefix + "matches"])
    assert len(got & want) / len(got | want) == 1.0  # IoU
    assert out["stop"] == int(ref[prefix + "stop"]) == (9 if mode == "full" else 7)
    np.testing.assert_array_equal(out["matches0"].numpy(), ref[prefix + "matches0"])
    np.testing.assert_array_equal(out["matches1"].numpy(), ref[prefix + "matches1"])
    np.testing.assert_array_equal(out["prune0"].numpy(), ref[prefix + "prune0"])
    np.testing.assert_array_equal(out["prune1"].numpy(), ref[prefix + "prune1"])
    for k in (0, 1):
        np.testing.assert_allclose(out[f"matching_scores{k}"].numpy(), ref[f"{prefix}matching_scores{k}"], atol=1e-3)
    order = np.argsort(out["matches"].numpy()[:, 0])
    np.testing.assert_allclose(out["scores"].numpy()[order], ref[prefix + "scores"], atol=1e-3)
    if mode == "full":
        la = out["log_assignment"][0].numpy()
        block = la[:-1, :-1]
        np.testing.assert_array_equal(block.argmax(1), ref["full_log_assignment_row_argmax"])
        np.testing.assert_array_equal(block.argmax(0), ref["full_log_assignment_col_argmax"])
        np.testing.assert_allclose(block.max(1), ref["full_log_assignment_row_max"], atol=2e-3)
        np.testing.assert_allclose(block.max(0), ref["full_log_assignment_col_max"], atol=2e-3)
        np.testing.assert_allclose(la[:-1, -1], ref["full_log_assignment_dustbin0"], atol=2e-3)
        np.testing.assert_allclose(la[-1, :-1], ref["full_log_assignment_dustbin1"], atol=2e-3)
    else:  # the README's "points left at the last layer"
        left = {"disk": (1779, 1151), "aliked": (1656, 1218)}[name]
        assert (int((out["prune0"] == out["stop"]).sum()), int((out["prune1"] == out["stop"]).sum())) == left


def test_disk_file_extra_and_renamed_keys_are_handled_explicitly():
    path = fetched_weights("disk_lightglue.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 262
    scalars = sorted(k for k in state if k.endswith(".r"))
    assert scalars == [f"log_assignment.{i}.r" for i in range(9)]
    assert any(k.startswith("self_attn.0.") for k in state) and not any(k.startswith("transformers.") for k in state)
    converted = convert_state_dict(state, 9, str(path))
    assert len(converted) == 262 - 9 and not any(k.endswith(".r") for k in converted)
    net = LightGlueNet(128)
    load_state_dict_checked(net, converted, str(path))  # strict: every key of the net, nothing else
    assert torch.equal(net.transformers[3].self_attn.Wqkv.weight, state["self_attn.3.Wqkv.weight"])
    # Anything else under those names is not silently dropped.
    tampered = dict(state)
    tampered["log_assignment.4.r"] = torch.tensor(0.5)
    with pytest.raises(CheckpointError, match=r"unexpected values in \['log_assignment.4.r'\]"):
        convert_state_dict(tampered, 9, str(path))
    extra = dict(converted, **{"log_assignment.0.bias_extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \['log_assignment.0.bias_extra'\]"):
        load_state_dict_checked(LightGlueNet(128), extra, str(path))


def test_aliked_file_loads_strictly_key_for_key():
    path = fetched_weights("aliked_lightglue.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 253
    net = LightGlueNet(128)
    load_state_dict_checked(net, convert_state_dict(state, 9, str(path)), str(path))
    own = net.state_dict()
    assert set(own) - set(state) == {"confidence_thresholds"}
    assert all(torch.equal(own[k], v) for k, v in state.items())


@pytest.mark.parametrize("pairing, name", [(DISK_LIGHTGLUE, "disk"), (ALIKED_LIGHTGLUE, "aliked")])
def test_pinned_hash_and_tampered_or_truncated_file_is_refused(pairing, name, tmp_path, monkeypatch):
    spec = pairing["weights"]
    assert hub.sha256_file(fetched_weights(spec.filename)) == spec.sha256 and spec.licence == "Apache-2.0"
    data = fetched_weights(spec.filename).read_bytes()
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", str(tmp_path))
    for damaged in (data[: len(data) // 2], data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]):
        (tmp_path / spec.filename).write_bytes(damaged)
        actual = hub.sha256_file(tmp_path / spec.filename)
        with pytest.raises(hub.WeightsHashError) as info:
            load_matcher("lightglue", features=name, device="cpu")
        text = str(info.value)
        assert str(tmp_path / spec.filename) in text and spec.sha256 in text and actual in text


def test_lighterglue_file_given_to_lightglue_says_which_matcher():
    path = shared("weights_xfeat_official", "xfeat-lighterglue.pt")
    with pytest.raises(CheckpointError, match="LighterGlue file .* load it with the matcher 'lighterglue'"):
        load_matcher("lightglue", features="disk", weights=str(path), device="cpu")


def test_bf16_precision_agrees_with_fp32_and_is_checked():
    """precision='bf16' (autocast): most matches equal fp32's (IoU 0.90 measured on this pair, adaptive mode;
    bf16 rounding moves match probabilities near the 0.1 threshold), same layer count, float32 outputs."""
    ref = reference("disk")
    f0, f1 = inputs(ref)
    fp32 = load_matcher("lightglue", features="disk", device="cpu").run(f0, f1)
    bf16 = load_matcher("lightglue", features="disk", device="cpu", precision="bf16").run(f0, f1)
    a, b = match_set(fp32["matches"].numpy()), match_set(bf16["matches"].numpy())
    assert len(a & b) / len(a | b) > 0.8
    assert bf16["stop"] == fp32["stop"] == 7
    assert bf16["scores"].dtype == torch.float32
    with pytest.raises(Exception, match="precision"):
        load_matcher("lightglue", features="disk", precision="fp16")
