"""LoFTR and EfficientLoFTR: parity with the original code (reference/loftr: reduced models with deterministic
random weights; its README says what each array is), strict loading of the official checkpoint layouts
(full-configuration manifests), input rules (grayscale, multiples of 8 / 32, padding masks), and the
log-domain optimal transport.

Tolerances: the originals' float order differs from ours only in summations (einsum / SDPA); measured
differences are <= 1e-5 relative on the maps and <= 6.1e-5 px on the keypoints (the same as kornia's port),
so 1e-4 relative / 1e-3 px hold on any x86 CPU while a wrong formula fails by orders of magnitude.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from conftest import shared
from localfeat import load_matcher
from localfeat.hub import CheckpointError
from localfeat.matchers._semidense import border_mask, coarse_mask, log_optimal_transport, pad_to_multiple
from localfeat.matchers.efficientloftr import DEFAULT_CONFIG as ELOFTR_DEFAULT
from localfeat.matchers.efficientloftr import EfficientLoFTRNet
from localfeat.matchers.loftr import LoFTRNet, resolve_config
from localfeat.types import PairMatches

REF = ("reference", "loftr")
PAIRS = ("sacre_coeur", "sacre_coeur1_homography")


def ref(name):
    return np.load(shared(*REF, name))


def manifest(name):
    return json.loads(shared(*REF, name).read_text())


def close(a, b, rel=1e-4, atol=0.0):
    """max |a - b| <= rel * max |b| + atol."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = np.abs(a - b).max() if a.size else 0.0
    assert err <= rel * np.abs(b).max() + atol, f"max error {err:.3g} vs scale {np.abs(b).max():.3g}"


# ------------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def loftr_ds():
    cfg = manifest("loftr_reduced_manifest.json")["config"]["ds"]
    return load_matcher("loftr", config=cfg, weights=shared(*REF, "loftr_reduced_random_state_dict.pth"),
                        resize_max=None, device="cpu")


@pytest.fixture(scope="module")
def loftr_ot(tmp_path_factory):
    cfg = manifest("loftr_reduced_manifest.json")["config"]["ot"]
    sd = torch.load(shared(*REF, "loftr_reduced_random_state_dict.pth"), weights_only=True)
    sd["coarse_matching.bin_score"] = torch.tensor(1.0)   # as the fixture README says: not in the file
    path = tmp_path_factory.mktemp("ot") / "ot.pth"
    torch.save(sd, path)
    return load_matcher("loftr", config=cfg, weights=path, resize_max=None, device="cpu")


@pytest.fixture(scope="module")
def eloftr():
    cfg = manifest("efficientloftr_reduced_manifest.json")["config"]["full"]
    return load_matcher("efficientloftr", config=cfg, resize_max=None, device="cpu",
                        weights=shared(*REF, "efficientloftr_reduced_random_state_dict.pth"))


@pytest.fixture(scope="module")
def inputs():
    return {p: ref(f"inputs_{p}.npz") for p in PAIRS}


_OUTPUTS: dict = {}


def forward(model, pair, inputs):
    """model.forward_images on a reference pair, computed once per module (the forwards dominate the time)."""
    key = (id(model), pair)
    if key not in _OUTPUTS:
        x = inputs[pair]
        _OUTPUTS[key] = model.forward_images(x["image0_u8"], x["image1_u8"])
    return _OUTPUTS[key]


def _coarse_maps(maps, pair, key):
    """The stored map (full, or its [::2, ::2] subsample `_sub2` for the homography pair) and its slicer."""
    if pair == "sacre_coeur":
        return maps[key], lambda t: t
    return maps[key + "_sub2"], (lambda t: t[:, :, ::2, ::2] if t.dim() == 4 else
                                 t.reshape(1, 60, 80, -1)[:, ::2, ::2].reshape(1, 1200, -1))


def check_coarse_matches(out, r):
    for key in ("b_ids", "i_ids", "j_ids"):
        np.testing.assert_array_equal(out[key].numpy(), r[key])
    np.testing.assert_array_equal(out["keypoints0"].numpy(), r["keypoints0"])
    assert np.abs(out["keypoints1"].numpy() - r["keypoints1"]).max() <= 1e-3
    close(out["confidence"], r["confidence"], rel=1e-3)


# -------------------------------------------------------------------------------------------- LoFTR DS/OT
@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("variant", ["ds", "ot"])
def test_loftr_matches_original(variant, pair, loftr_ds, loftr_ot, inputs):
    model = loftr_ds if variant == "ds" else loftr_ot
    x, r = inputs[pair], ref(f"loftr_{variant}_{pair}.npz")
    out = forward(model, pair, inputs)
    check_coarse_matches(out, r)
    conf = out["conf"][0]
    close(conf[::16, ::16], r["conf_matrix_sub16"], rel=1e-4)
    top = conf.topk(5, dim=1)
    close(top.values, r["conf_row_top5_values"], rel=1e-4)
    col = conf.max(dim=0)
    close(col.values, r["conf_col_max"], rel=1e-4)
    np.testing.assert_array_equal(out["mkpts0_c"].numpy(), r["mkpts0_c"])
    np.testing.assert_array_equal(out["mkpts1_c"].numpy(), r["mkpts1_c"])
    close(out["expec_f"], r["expec_f"], rel=0, atol=2e-4)
    close(out["fine_heatmap"], r["fine_heatmap"], rel=1e-4)
    k = len(r["fine_win_raw0"])
    for key in ("fine_win_raw0", "fine_win_raw1", "fine_feat0_preprocessed", "fine_feat1_preprocessed",
                "fine_feat0_transformed", "fine_feat1_transformed"):
        close(out[key][:k], r[key], rel=1e-5)
    if variant == "ot":  # the dustbin column / row of exp(log assignment), which carries the factor L + S
        with_bin = out["conf_with_bin"][0]
        close(with_bin[:, -1], r["assign_dustbin_col"], rel=1e-4)
        close(with_bin[-1, :], r["assign_dustbin_row"], rel=1e-4)
    if variant == "ds" and pair == "sacre_coeur":   # the public interface gives the same matches
        pm = model.match_images(x["image0_u8"], x["image1_u8"])
        assert isinstance(pm, PairMatches) and pm.image_size0 == (640, 480)
        np.testing.assert_array_equal(pm.keypoints0, out["keypoints0"].numpy())
        np.testing.assert_array_equal(pm.keypoints1, out["keypoints1"].numpy())


@pytest.mark.parametrize("pair", PAIRS)
def test_loftr_backbone_and_transformer_maps(pair, loftr_ds, inputs):
    maps = ref(f"loftr_coarse_maps_{pair}.npz")
    out = forward(loftr_ds, pair, inputs)
    for i in (0, 1):
        want, cut = _coarse_maps(maps, pair, f"feat_c{i}_backbone")
        close(cut(out[f"feat_c{i}_backbone"]), want, rel=1e-5)
        want, cut = _coarse_maps(maps, pair, f"feat_c{i}_transformer")
        close(cut(out[f"feat_c{i}"]), want, rel=1e-5)


# ------------------------------------------------------------------------------------------ EfficientLoFTR
@pytest.mark.parametrize("pair", PAIRS)
def test_efficientloftr_matches_original(pair, eloftr, inputs):
    r = ref(f"efficientloftr_{pair}.npz")
    maps = ref(f"efficientloftr_coarse_maps_{pair}.npz")
    out = forward(eloftr, pair, inputs)
    for i in (0, 1):
        for key, ours in ((f"feat_c{i}_backbone", f"feat_c{i}_backbone"),
                          (f"feat_c{i}_transformer", f"feat_c{i}_transformer")):
            want, cut = _coarse_maps(maps, pair, key)
            close(cut(out[ours]), want, rel=1e-5)
    check_coarse_matches(out, r)
    for key in ("mkpts0_c", "mkpts1_c", "idx_l", "idx_r", "mkpts0_stage1", "mkpts1_stage1"):
        np.testing.assert_array_equal(out[key].numpy(), r[key])
    close(out["fine_stage2_heatmap"], r["fine_stage2_heatmap"], rel=1e-4)
    close(out["fine_stage2_offset"], r["fine_stage2_offset"], rel=0, atol=1e-4)
    k = len(r["fine_win0"])
    close(out["fine_win0"][:k], r["fine_win0"], rel=1e-5)
    close(out["fine_win1"][:k], r["fine_win1"], rel=1e-5)
    assert eloftr.config["backbone"]["num_blocks"] == [2, 2, 2]   # read from the weights file


def test_efficientloftr_reparameterized_close(eloftr, inputs):
    """Fusing the RepVGG branches changes float rounding only (the original README's deploy step)."""
    cfg = manifest("efficientloftr_reduced_manifest.json")["config"]["full"]
    fused = load_matcher("efficientloftr", config=cfg, reparameterize=True, device="cpu",
                         weights=shared(*REF, "efficientloftr_reduced_random_state_dict.pth"))
    assert not any(".rbr_dense." in k for k in fused.net.state_dict())
    x = inputs["sacre_coeur"]
    a = forward(eloftr, "sacre_coeur", inputs)
    b = fused.forward_images(x["image0_u8"], x["image1_u8"])
    close(b["feat_c0_backbone"], a["feat_c0_backbone"], rel=1e-5)
    close(b["conf"], a["conf"], rel=1e-3)


# ---------------------------------------------------------------------------------- official layouts
def _manifest_state(entries):
    return {e["key"]: torch.zeros(e["shape"], dtype=getattr(torch, e["dtype"])) for e in entries}


@pytest.mark.parametrize("variant", ["outdoor_ds", "outdoor_ot"])
def test_loftr_official_layout_loads_strictly(variant, tmp_path):
    entry = manifest("loftr_full_config_manifest.json")["variants"][variant]
    net = LoFTRNet(resolve_config(variant, None))
    ours = net.state_dict()
    assert [(k, list(v.shape)) for k, v in ours.items()] == [(e["key"], e["shape"]) for e in entry["state_dict"]]
    assert resolve_config(variant, None)["match_coarse"] == entry["config"]["match_coarse"]
    # a Lightning checkpoint as released: tensors under 'state_dict', prefixed 'matcher.'
    ckpt = {"state_dict": {"matcher." + k: v for k, v in _manifest_state(entry["state_dict"]).items()}}
    torch.save(ckpt, tmp_path / f"{variant}.ckpt")
    m = load_matcher("loftr", pretrained=variant, weights=tmp_path / f"{variant}.ckpt", device="cpu")
    assert m.net.backbone.conv1.weight.abs().sum() == 0
    # kornia's re-saved file: the same keys (its config = the original's cvpr_ds_config)
    if variant == "outdoor_ds":
        kornia = manifest("loftr_full_config_manifest.json")["kornia"]
        torch.save({"state_dict": _manifest_state(entry["state_dict"])}, tmp_path / "loftr_outdoor.ckpt")
        load_matcher("loftr", pretrained="kornia_outdoor", config=kornia["config"],
                     weights=tmp_path / "loftr_outdoor.ckpt", device="cpu")


def test_loftr_checkpoint_with_missing_key_is_refused(tmp_path):
    entry = manifest("loftr_full_config_manifest.json")["variants"]["outdoor_ds"]
    state = _manifest_state(entry["state_dict"])
    del state["loftr_coarse.layers.3.merge.weight"]
    torch.save(state, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"bad\.ckpt.*missing keys \['loftr_coarse\.layers\.3\.merge\.weight'\]"):
        load_matcher("loftr", weights=tmp_path / "bad.ckpt", device="cpu")
    # the OT variant needs bin_score; a DS file does not have it
    torch.save(_manifest_state(entry["state_dict"]), tmp_path / "ds.ckpt")
    with pytest.raises(CheckpointError, match="coarse_matching.bin_score"):
        load_matcher("loftr", pretrained="outdoor_ot", weights=tmp_path / "ds.ckpt", device="cpu")


def test_efficientloftr_official_layout_loads_strictly(tmp_path):
    entry = manifest("efficientloftr_full_config_manifest.json")["variants"]["full"]
    cfg = dict(ELOFTR_DEFAULT, backbone={"block_dims": [64, 128, 256], "num_blocks": [2, 4, 14]})
    ours = EfficientLoFTRNet(cfg).state_dict()
    assert [(k, list(v.shape)) for k, v in ours.items()] == [(e["key"], e["shape"]) for e in entry["state_dict"]]
    ckpt = {"state_dict": {"matcher." + k: v for k, v in _manifest_state(entry["state_dict"]).items()}}
    torch.save(ckpt, tmp_path / "eloftr_outdoor.ckpt")
    m = load_matcher("efficientloftr", weights=tmp_path / "eloftr_outdoor.ckpt", device="cpu")
    assert m.config["backbone"]["num_blocks"] == [2, 4, 14]   # inferred from the file's keys


def test_unknown_config_key_names_the_valid_ones():
    from localfeat.config import ConfigError
    with pytest.raises(ConfigError, match=r"unknown config key 'match_coarse.threshold'.*'thr'"):
        resolve_config("outdoor_ds", {"match_coarse": {"threshold": 0.3}})


# ----------------------------------------------------------------------------------------- input rules
def test_size_rule_and_gray_input(loftr_ds, inputs):
    x = inputs["sacre_coeur"]
    with pytest.raises(ValueError, match=r"636x480 \(W x H\) is not a multiple of 8"):
        loftr_ds.net(torch.zeros(1, 1, 480, 636), torch.zeros(1, 1, 480, 640))
    with pytest.raises(ValueError, match="grayscale batch"):
        loftr_ds.net(torch.zeros(1, 3, 480, 640), torch.zeros(1, 3, 480, 640))
    rgb0 = cv2.cvtColor(x["image0_u8"], cv2.COLOR_GRAY2RGB)
    a = loftr_ds.match_images(rgb0, x["image1_u8"])
    np.testing.assert_array_equal(a.keypoints1, forward(loftr_ds, "sacre_coeur", inputs)["keypoints1"].numpy())


def test_coarse_mask_and_border_with_padding():
    img = torch.zeros(1, 1, 21, 30)
    padded, mask = pad_to_multiple(img, 8)
    assert padded.shape == (1, 1, 24, 32) and mask[0, :21, :30].all() and not mask[0, 21:].any()
    cm = coarse_mask(mask, 8)                                  # pixels (8r, 8c) valid <=> r <= 2 and c <= 3
    np.testing.assert_array_equal(cm[0].numpy(), np.ones((3, 4), bool))
    _, mask = pad_to_multiple(torch.zeros(1, 1, 15, 40), 8)
    cm = coarse_mask(mask, 8)                                  # rows 0, 8 valid; row 16 not
    np.testing.assert_array_equal(cm[0].numpy(), [[1] * 5, [1] * 5])
    # border 1 on a 4 x 5 map whose valid part is 3 x 4: rows 1 (< 3 - 1), columns 1..2
    valid = torch.zeros(1, 4, 5, dtype=torch.bool)
    valid[:, :3, :4] = True
    ok0, _ = border_mask((4, 5), (4, 5), 1, valid, valid)
    np.testing.assert_array_equal(ok0.reshape(4, 5).numpy().nonzero(), ([1, 1], [1, 2]))


@pytest.mark.parametrize("which", ["loftr", "efficientloftr"])
def test_padded_images_match_inside_the_valid_region(which, loftr_ds, eloftr, inputs):
    """Sizes that are not multiples of 8 / 32 are padded with masks: no match lands in the padding or the
    border cells of the real image."""
    model = loftr_ds if which == "loftr" else eloftr
    x = inputs["sacre_coeur1_homography"]
    im0, im1 = x["image0_u8"][:452, :618], x["image1_u8"][:470, :600]
    pm = model.match_images(im0, im1)
    assert len(pm) > 20
    border = 2 * 8   # border_rm cells
    for kpts, (h, w) in ((pm.keypoints0, im0.shape), (pm.keypoints1, im1.shape)):
        assert kpts.min() >= border - 4 and (kpts[:, 0] < w - border + 8).all() and (kpts[:, 1] < h - border + 8).all()


# ----------------------------------------------------------------------------------- optimal transport
def test_log_optimal_transport_marginals_and_formula():
    torch.manual_seed(0)
    scores = torch.randn(2, 5, 7, dtype=torch.float64)
    alpha = torch.tensor(0.3, dtype=torch.float64)
    p = log_optimal_transport(scores, alpha, 200).exp()
    l, s = 5, 7
    # with many iterations the marginals are met: rows 1 (cells) and S (dustbin), columns 1 and L
    np.testing.assert_allclose(p.sum(2)[:, :l].numpy(), 1, atol=1e-8)
    np.testing.assert_allclose(p.sum(2)[:, l].numpy(), s, atol=1e-8)
    np.testing.assert_allclose(p.sum(1)[:, :s].numpy(), 1, atol=1e-8)
    np.testing.assert_allclose(p.sum(1)[:, s].numpy(), l, atol=1e-8)
    # three iterations by hand (numpy) from the description in reference/loftr/README.md
    z = np.full((l + 1, s + 1), 0.3)
    z[:l, :s] = scores[0].numpy()
    norm = -np.log(l + s)
    mu = np.r_[[norm] * l, np.log(s) + norm]
    nu = np.r_[[norm] * s, np.log(l) + norm]
    u, v = np.zeros(l + 1), np.zeros(s + 1)
    lse = lambda a, ax: np.log(np.exp(a).sum(ax))  # noqa: E731
    for _ in range(3):
        u = mu - lse(z + v[None], 1)
        v = nu - lse(z + u[:, None], 0)
    want = z + u[:, None] + v[None] - norm
    np.testing.assert_allclose(log_optimal_transport(scores, alpha, 3)[0].numpy(), want, atol=1e-12)


# ------------------------------------------------------------------------------------- memory bounds
def test_blockwise_coarse_matching_equals_dense():
    """The memory-bounded path (large images) gives the dense path's matches, with and without padding masks."""
    from localfeat.matchers._semidense import blockwise_dual_softmax_matches, dual_softmax, mutual_matches

    maps = ref("loftr_coarse_maps_sacre_coeur.npz")
    f0 = torch.from_numpy(maps["feat_c0_transformer"]) / 8.0     # / sqrt(C), C = 64
    f1 = torch.from_numpy(maps["feat_c1_transformer"]) / 8.0
    ok0, ok1 = border_mask((60, 80), (60, 80), 2)
    valid = torch.ones(1, 60, 80, dtype=torch.bool)
    valid[:, 50:] = False                                         # padding rows of both images
    for v in (None, valid):
        vf = None if v is None else v.flatten(1)
        if v is not None:
            ok0, ok1 = border_mask((60, 80), (60, 80), 2, v, v)
        sim = torch.einsum("nlc,nsc->nls", f0, f1) / 0.1
        if v is not None:
            sim = sim.masked_fill(~(vf[:, :, None] & vf[:, None, :]), -1e9)
        dense = mutual_matches(dual_softmax(sim), 1e-3, ok0, ok1)
        block = blockwise_dual_softmax_matches(f0, f1, 0.1, 1e-3, ok0, ok1, vf, vf, block_entries=4800 * 700)
        assert len(dense[0]) > 100
        for a, b in zip(dense[:3], block[:3]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        close(block[3], dense[3], rel=1e-4)


def test_fine_stage_in_chunks_equals_whole(eloftr, loftr_ds, inputs):
    x = inputs["sacre_coeur"]
    for model, name in ((eloftr, "efficientloftr"), (loftr_ds, "loftr_ds")):
        r = ref(f"{name}_sacre_coeur.npz")
        model.net.fine_chunk = 40
        try:
            out = model.forward_images(x["image0_u8"], x["image1_u8"])
        finally:
            model.net.fine_chunk = 8192
        np.testing.assert_array_equal(out["i_ids"].numpy(), r["i_ids"])
        assert np.abs(out["keypoints1"].numpy() - r["keypoints1"]).max() <= 1e-3


def test_bf16_precision_runs_and_stays_close(inputs):
    """bfloat16 autocast: the same kind of output; most coarse matches agree with float32."""
    cfg = manifest("loftr_reduced_manifest.json")["config"]["ds"]
    m = load_matcher("loftr", config=cfg, weights=shared(*REF, "loftr_reduced_random_state_dict.pth"),
                     device="cpu", precision="bf16")
    x, r = inputs["sacre_coeur"], ref("loftr_ds_sacre_coeur.npz")
    pm = m.match_images(x["image0_u8"], x["image1_u8"])
    assert pm.keypoints0.dtype == np.float32 and len(pm) > 0.5 * len(r["keypoints0"])
    same = {tuple(k) for k in r["keypoints0"].tolist()} & {tuple(k) for k in pm.keypoints0.tolist()}
    assert len(same) > 0.3 * len(r["keypoints0"])
