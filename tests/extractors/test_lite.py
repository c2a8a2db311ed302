"""lite: localfeat's own model, shipped in the package: offline default, pinned accuracy, training round trip."""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from localfeat.extractors import lite
from localfeat.io.images import read_image
from localfeat.registry import ConfigError, load_extractor

from conftest import REPO, shared

# MMA@1/3/5 of the packaged weights on the real sequences of hpatches_subset, images at a longer side of
# 640, 2048 keypoints, mutual NN (benchmarks/bench_lite.py). Tolerance: CPU rounding (oneDNN kernels,
# BLAS) moves a few keypoints and matches; a retrained or broken model moves these by far more.
PINNED_MMA = (0.2723, 0.6950, 0.8059)
MMA_TOL = 0.015


def test_packaged_weights_are_small_and_load_without_any_lookup():
    path = lite.packaged_weights()
    assert path.is_file() and path.stat().st_size <= 2 * 1024 * 1024
    ex = load_extractor("lite")
    assert ex.weights_path == path
    assert sum(p.numel() for p in ex.net.parameters()) < 500_000
    assert load_extractor("lite").weight_specs(ex.conf) == []


def test_extract_invariants(tmp_path):
    image = read_image(shared("hpatches_subset", "v_dogman", "1.ppm"), "rgb")
    h, w = image.shape[:2]
    f = load_extractor("lite", max_keypoints=500, resize_max=None).extract(image)
    assert len(f) == 500 and f.descriptors.shape == (500, 96) and f.image_size == (w, h)
    assert np.allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)
    assert (f.keypoints >= 0).all() and (f.keypoints[:, 0] <= w - 1).all() and (f.keypoints[:, 1] <= h - 1).all()
    assert np.all(np.diff(f.scores) <= 1e-7)                       # best first
    # resize_max: extraction at half size, keypoints mapped back to full-resolution pixels.
    g = load_extractor("lite", max_keypoints=500, resize_max=max(h, w) // 2).extract(image)
    assert g.image_size == (w, h)
    assert g.keypoints[:, 0].max() > w / 2 + 10 and (g.keypoints[:, 0] <= w - 1).all()
    # detection_threshold in threshold mode: every score above it.
    th = float(np.median(f.scores))
    t = load_extractor("lite", max_keypoints=None, detection_threshold=th, resize_max=None).extract(image)
    assert 100 < len(t) < 2 * len(f) and (t.scores > th).all()


def test_mma_on_real_sequences_is_pinned(tmp_path):
    from localfeat.eval.hpatches import EvalSettings, ExtractorSource, evaluate_hpatches

    src = ExtractorSource("lite", max_size=640, conf={"max_keypoints": 2048})
    res = evaluate_hpatches(shared("hpatches_subset"), [src], tmp_path, EvalSettings(top_k=2048), exclude=(),
                            plot=False)
    mma = res["methods"]["lite"]["mma_overall"]
    assert [mma[0], mma[2], mma[4]] == pytest.approx(list(PINNED_MMA), abs=MMA_TOL)


def test_cli_extract_defaults_to_lite_offline_with_no_weights_anywhere(tmp_path):
    env = {**os.environ, "LOCALFEAT_WEIGHTS": "", "LOCALFEAT_CACHE": str(tmp_path / "empty_cache"),
           "LOCALFEAT_OFFLINE": "1", "HOME": str(tmp_path)}
    photos = shared("sfm_sacre_coeur_hloc", "mapping")
    out = tmp_path / "f.h5"
    proc = subprocess.run([sys.executable, "-m", "localfeat.cli", "extract", str(photos), "-o", str(out)],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["model"] == "lite"
        names = [n for n in f]
        assert len(names) == 10
        g = f[names[0]]
        assert g["descriptors"].shape[1] == 96 and 100 < g["keypoints"].shape[0] <= 2048
    assert not (tmp_path / "empty_cache").exists()


def test_training_round_trip_and_preset_runs(tmp_path):
    """The shipped preset runs (2 tiny steps, a small teacher) and its weights load into the extractor
    with identical outputs to the trained network."""
    from localfeat.train import train

    photos = tmp_path / "photos"
    photos.mkdir()
    first = sorted(shared("sfm_sacre_coeur_hloc", "mapping").glob("*.jpg"))[0]
    (photos / first.name).write_bytes(first.read_bytes())
    run = train("lite", tmp_path / "run", overrides={
        "steps": 2, "batch_size": 1, "time_limit_minutes": None, "threads": None, "validation.every": 0,
        "data.images": [str(photos)], "data.crop_size": 64, "data.base_size": 96, "data.pool": 2,
        "data.num_workers": 0, "losses.distill.teacher": "aliked:variant=aliked-t16",
        "losses.distill.cache": str(tmp_path / "cache"), "losses.distill.num_points": 16})
    weights = run / "weights.pt"
    ex = load_extractor("lite", weights=str(weights), resize_max=None, max_keypoints=50)
    net, _ = lite.load_net(weights)
    x = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        a, b = ex.net(x), net(x)       # the extractor's BatchNorm is folded: equal up to float rounding
    for folded, plain in zip(_flat(a), _flat(b)):
        assert torch.allclose(folded, plain, atol=1e-5, rtol=1e-4)
    trained = torch.load(weights, weights_only=True)["lite"]
    fresh = lite.LiteNet().state_dict()
    assert trained.keys() == fresh.keys()
    assert any(not torch.equal(trained[k], fresh[k]) for k in trained if trained[k].is_floating_point())
    assert (REPO / "localfeat" / "train" / "presets" / "lite.yaml").is_file()


@pytest.mark.parametrize("fine, context4", [(False, False), (True, False), (False, True), (True, True)])
def test_describe_equals_the_dense_training_map_and_folding_keeps_outputs(fine, context4):
    """The extractor's descriptors (f4 sampled, then desc4; with the 1/4 and 1/2 3x3 layers, f4 / f2 sampled at 9
    taps, then the layer's weights) are the training map's values at those pixels (the layers are linear; all
    sample border-clamped bilinear), also at the borders, where a 3x3 layer reads its zero padding; BatchNorm
    folding changes only rounding."""
    torch.manual_seed(0)
    net = lite.LiteNet(fine=fine, context4=context4).train()
    with torch.no_grad():
        for layer in (net.fine2, net.context4):
            if layer is not None:
                layer.weight.normal_(std=0.3)                 # as if trained (it starts at zero)
                layer.bias.normal_(std=0.3)
    with torch.no_grad():
        for _ in range(2):                       # non-trivial BatchNorm statistics
            net(torch.rand(2, 1, 64, 96))
    net.eval()
    x = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        scores, maps = net(x)
        f2, f4, g8 = maps
        dense = net.dense_descriptors(maps)                              # (1, 64, 64, 96)
        xy = torch.tensor([[[0.0, 0.0], [5.0, 7.0], [95.0, 63.0], [40.0, 33.0], [1.0, 62.0], [94.0, 2.0]]])
        desc = net.describe(maps, xy)[0]                                 # (6, 64)
        expected = dense[0, :, xy[0, :, 1].long(), xy[0, :, 0].long()].T
        assert scores.shape == (1, 1, 64, 96) and f4.shape == (1, 32, 16, 24) and g8.shape == (1, 64, 8, 12)
        assert f2.shape == (1, 8, 32, 48)
        assert torch.allclose(desc, expected, atol=1e-5)
        assert torch.allclose(desc.norm(dim=-1), torch.ones(6), atol=1e-6)
        # Sub-pixel: bilinear is linear between map-pixel centres (x: stride 2 38.5, 40.5; stride 4 37.5, 41.5;
        # stride 8 35.5, 43.5; y: 30.5, 32.5; 29.5, 33.5; 27.5, 35.5), so at (39.5, 31.5) it is the mean of
        # the four pixels around it.
        mid = net.describe(maps, torch.tensor([[[39.5, 31.5]]]))[0, 0]
        raw = F.interpolate(net.desc4(f4), size=(64, 96), mode="bilinear", align_corners=False) + \
            F.interpolate(g8, size=(64, 96), mode="bilinear", align_corners=False)
        if fine:
            raw = raw + F.interpolate(net.fine2(f2), size=(64, 96), mode="bilinear", align_corners=False)
        if context4:
            raw = raw + F.interpolate(net.context4(f4), size=(64, 96), mode="bilinear", align_corners=False)
        avg = raw[0, :, 31:33, 39:41].mean(dim=(1, 2))
        assert torch.allclose(mid, avg / avg.norm(), atol=1e-5)
        folded = copy.deepcopy(net).fold_batchnorm()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        for a, b in zip(_flat(folded(x)), _flat(net(x))):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        # channels-last activations (what the extractor runs): the same outputs up to rounding
        last = copy.deepcopy(folded).to(memory_format=torch.channels_last)
        for a, b in zip(_flat(last(x.contiguous(memory_format=torch.channels_last))), _flat(net(x))):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_subpixel_temperature_moves_keypoints_off_the_integer_peaks_and_is_checked():
    image = read_image(shared("hpatches_subset", "v_dogman", "1.ppm"), "gray")
    integer = load_extractor("lite", max_keypoints=300, subpixel_temperature=0, resize_max=None).extract(image)
    assert np.abs(integer.keypoints - np.round(integer.keypoints)).max() < 1e-3   # float rounding of x / (W - 1)
    soft = load_extractor("lite", max_keypoints=300, subpixel_temperature=0.1, resize_max=None).extract(image)
    moved = np.abs(soft.keypoints - np.round(soft.keypoints)).max(axis=1)
    assert (moved > 1e-3).mean() > 0.5 and moved.max() < 2.0 + 1e-5      # inside the 5x5 window
    for bad in (-0.1, "0.1", True, None):
        with pytest.raises(ConfigError, match="subpixel_temperature"):
            load_extractor("lite", subpixel_temperature=bad)


def test_weights_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_extractor("lite", weights=str(tmp_path / "nope.pt"))


def _flat(out) -> list:
    """LiteNet's (scores, (f2, f4, g8)) as a flat list of tensors."""
    return [out[0], *out[1]]


@pytest.mark.parametrize("key, attr", [("context", "context8"), ("fine", "fine2"), ("context4", "context4")])
def test_optional_layers_start_at_zero_round_trip_and_are_checked(tmp_path, key, attr):
    """`model.context: true` (the 1/8 context layer), `model.context4: true` (the 1/4 layer) and `model.fine:
    true` (the 1/2 layer) add the layer at
    zero to weights that lack it (the same outputs as before), the saved weights load back with it, weights
    that hold it refuse `false`, and the key left out follows the weights."""
    base = tmp_path / "plain.pt"
    torch.manual_seed(0)
    lite.train_save(lite.LiteNet(), {}, base)
    grown = lite.train_build({"dim": 64, "weights": str(base), key: True}).eval()
    plain = lite.train_build({"dim": 64, "weights": str(base), key: None}).eval()
    assert getattr(plain, attr) is None and getattr(grown, attr) is not None
    assert not getattr(grown, attr).weight.any() and not getattr(grown, attr).bias.any()
    x = torch.rand(1, 1, 64, 96)
    xy = torch.tensor([[[3.0, 4.0], [50.5, 20.25], [90.0, 60.0]]])
    with torch.no_grad():
        for a, b in zip(_flat(grown(x)), _flat(plain(x))):
            assert torch.equal(a, b)
        assert torch.equal(grown.describe(grown(x)[1], xy), plain.describe(plain(x)[1], xy))
        getattr(grown, attr).weight.normal_(std=0.1)                 # as if trained
        path = tmp_path / f"{key}.pt"
        lite.train_save(grown, {}, path)
        net, _ = lite.load_net(path)
        assert getattr(net, attr) is not None
        for a, b in zip(_flat(net(x)), _flat(grown(x))):
            assert torch.equal(a, b)
        assert not torch.allclose(net.describe(net(x)[1], xy), plain.describe(plain(x)[1], xy), atol=1e-3)
    ex = load_extractor("lite", weights=str(path), resize_max=None, max_keypoints=20)
    assert getattr(ex.net, attr) is not None
    with pytest.raises(ConfigError, match=f"hold the {key} layer \\({attr}\\); set model.{key}: true"):
        lite.train_build({"dim": 64, "weights": str(path), key: False})
    assert getattr(lite.train_build({"dim": 64, "weights": None, key: None}), attr) is None


def test_the_shipped_weights_hold_the_context_layer():
    assert lite.train_build({"dim": 96, "weights": "packaged", "context": None}).context8 is not None


@pytest.mark.parametrize("fine", [False, True])
def test_widening_keeps_the_score_map_and_the_descriptors_direction(tmp_path, fine):
    """`model.dim` above the weights' (preset lite_wide) widens the descriptor with `LiteNet.widen`: the score
    map is unchanged bit for bit, the old dimensions keep their direction (cosine > 0.98 with scale 0.1), the
    new ones are small but not zero (the losses' gradient through a dimension is proportional to it), the
    extractor's and the training map's descriptors still agree, and the widened file loads with its width;
    narrowing is refused."""
    torch.manual_seed(0)
    base = tmp_path / "plain.pt"
    net = lite.LiteNet(context=True, fine=fine, context4=fine)         # fine: with the 1/2 and 1/4 layers
    with torch.no_grad():
        for layer in (net.context8, net.fine2, net.context4) if fine else (net.context8,):
            layer.weight.normal_(std=0.1)                            # as if trained (they start at zero)
    lite.train_save(net, {}, base)
    plain = lite.train_build({"dim": 64, "weights": str(base), "context": None, "fine": None}).eval()
    wide = lite.train_build({"dim": 96, "weights": str(base), "context": None, "fine": None}).eval()
    assert wide.dim == 96 and wide.desc4.out_channels == wide.desc8.out_channels == wide.context8.out_channels == 96
    assert wide.head8.in_channels == 96 and (wide.fine2.out_channels == 96 if fine else wide.fine2 is None)
    assert wide.context4.out_channels == 96 if fine else wide.context4 is None
    x = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        (s0, maps0), (s1, maps1) = plain(x), wide(x)
        assert torch.equal(s0, s1)
        d0, d1 = plain.dense_descriptors(maps0), wide.dense_descriptors(maps1)
        assert d1.shape == (1, 96, 64, 96)
        cosine = (d1[:, :64] * d0).sum(1)
        assert cosine.min() > 0.98 and cosine.max() < 1.0 - 1e-6
        extra = d1[:, 64:].norm(dim=1)
        assert 1e-3 < extra.mean() < 0.3
        xy = torch.tensor([[[3.0, 4.0], [50.0, 20.0], [95.0, 63.0]]])
        desc = wide.describe(maps1, xy)[0]
        assert torch.allclose(desc, d1[0, :, xy[0, :, 1].long(), xy[0, :, 0].long()].T, atol=1e-5)
        assert torch.allclose(desc.norm(dim=-1), torch.ones(3), atol=1e-6)
    path = tmp_path / "wide.pt"
    lite.train_save(wide, {}, path)
    assert load_extractor("lite", weights=str(path), resize_max=None, max_keypoints=20).net.dim == 96
    with pytest.raises(ConfigError, match="widened, not narrowed"):
        lite.train_build({"dim": 64, "weights": str(path), "context": None})
    with pytest.raises(ValueError, match="below"):
        wide.widen(32)


# the file shipped before the current one: its second run was lite_zoom_reproj at 600 steps with the peak term at 0.2
PREVIOUS_SECOND_RUN = {"steps": 600, "time_limit_minutes": 14, "threads": 2, "losses.reprojection.peaky": 0.2,
                       "validation.every": 600}


@pytest.mark.parametrize("preset, overrides, figure, weights", [
    ("lite_zoom", None, "lite_zoom_scratch", None),                             # the shipped file
    ("lite_zoom_reproj", None, "lite_zoom_reproj", "runs/lite_zoom_scratch/weights.pt"),
    ("lite_zoom_reproj", PREVIOUS_SECOND_RUN, "lite_zoom_reproj600", "runs/lite_zoom_scratch/weights.pt"),
    ("lite_scratch", None, "lite_scratch", None),                               # two files before it
    ("lite_scratch_nre", None, "lite_scratch_nre", "runs/lite_scratch/weights.pt")])
def test_shipped_recipe_presets_resolve_to_the_configs_of_the_shipped_runs(preset, overrides, figure, weights):
    # docs/figures/<figure>_config.yaml is the run directory's config.yaml of each of the two trainings that made
    # localfeat/weights/lite.pt (the second starts from the first's weights), and of those that made the files
    # before it; the presets (with the documented overrides) must still resolve to them, key for key.
    import yaml

    from localfeat.train import resolve_config

    run_config = yaml.safe_load((REPO / "docs" / "figures" / f"{figure}_config.yaml").read_text())
    assert resolve_config(preset, overrides) == run_config
    assert run_config["model"] == {"name": "lite", "dim": 96, "weights": weights, "context": True, "fine": None,
                                   "context4": None}
