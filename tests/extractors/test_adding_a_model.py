"""docs/adding_a_model.md: its worked example is one new file, and that file is a working model.

The example's code block is copied, unchanged, into a folder added to the `localfeat.extractors` package for
this test only; nothing else is edited. The test then makes a weights file, and checks registration, the
listing, loading (lookup, unverified-hash warning, strict load), extraction against an independent computation
with the network, and the config errors.
"""
from __future__ import annotations

import re
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, shared
import localfeat.extractors
from localfeat import registry
from localfeat.hub import CheckpointError, WeightsNotFoundError

DOC = REPO / "docs" / "adding_a_model.md"
MODULE = "localfeat.extractors.tinynet"


def example_source() -> str:
    text = DOC.read_text()
    found = re.search(r"<!-- example: localfeat/extractors/tinynet.py -->\s*```python\n(.*?)```", text, re.S)
    assert found, f"{DOC}: the worked example block is missing"
    return found.group(1)


@pytest.fixture
def tinynet(tmp_path, monkeypatch):
    """The example file installed as localfeat.extractors.tinynet, with a fresh registry; the module."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "tinynet.py").write_text(example_source())
    monkeypatch.setattr(localfeat.extractors, "__path__", list(localfeat.extractors.__path__) + [str(package)])
    monkeypatch.setattr(registry, "_TABLES", {"extractor": {}, "matcher": {}})
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", str(weights))
    monkeypatch.setenv("LOCALFEAT_CACHE", str(tmp_path / "cache"))
    yield registry.get_class("extractor", "tinynet"), weights
    sys.modules.pop(MODULE, None)


def test_the_example_is_one_file_that_registers_lists_loads_and_extracts(tinynet, caplog, capsys):
    cls, weights = tinynet
    module = sys.modules[MODULE]
    assert cls.__module__ == MODULE and cls.name == "tinynet"
    # Missing file: the error names the file, its URL and where to put it.
    with pytest.raises(WeightsNotFoundError, match=r"'tinynet-v1.pth' not found\. Download it from "
                       r"https://example.org/tinynet/tinynet-v1.pth and put it in one of: " + re.escape(str(weights))):
        registry.load_extractor("tinynet")
    # The "official" file: a state_dict of the example's network.
    torch.manual_seed(0)
    net = module.TinyNet()
    torch.save(net.state_dict(), weights / "tinynet-v1.pth")
    with caplog.at_level("WARNING"):
        ex = registry.load_extractor("tinynet", device="cpu", max_keypoints=50, detection_threshold=0.0)
    assert ex.weights_path == weights / "tinynet-v1.pth"
    assert any("tinynet-v1.pth: no sha256 is pinned" in r.message for r in caplog.records)
    assert all(torch.equal(ex.net.state_dict()[k], v) for k, v in net.state_dict().items())

    # A textured grey crop of a real photo (grey input: the network sees exactly these values).
    bgr = cv2.imread(str(shared("hpatches_subset", "v_dogman", "1.ppm")))
    image = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[150:350, 250:450])
    feats = ex.extract(image)
    h, w = image.shape[:2]
    assert feats.image_size == (w, h) and len(feats) == 50 and feats.dim == 8
    # Independent computation with the network: the 50 best 5x5 window maxima, descriptors at those pixels.
    with torch.no_grad():
        scores, desc = net(torch.from_numpy(image.astype(np.float32) / 255)[None, None])
    s = scores[0, 0]
    pooled = torch.nn.functional.max_pool2d(scores, 5, stride=1, padding=2)[0, 0]
    yx = ((s == pooled) & (s > 0)).nonzero()
    best = torch.argsort(s[yx[:, 0], yx[:, 1]], descending=True)[:50]
    expected = yx[best].flip(1).numpy().astype(np.float32)
    assert {tuple(p) for p in feats.keypoints.tolist()} == {tuple(p) for p in expected.tolist()}
    assert np.all(np.diff(feats.scores) <= 0)
    x, y = feats.keypoints[:, 0].astype(int), feats.keypoints[:, 1].astype(int)
    np.testing.assert_allclose(feats.scores, s.numpy()[y, x], rtol=1e-5)
    np.testing.assert_allclose(feats.descriptors, desc[0].numpy()[:, y, x].T, atol=1e-5)

    # The listing shows it with its licence and hash status.
    from localfeat.cli import main
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "  tinynet\n" in out and "tinynet-v1.pth (licence MIT; sha256 NOT pinned)" in out


def test_the_example_checks_its_config_and_loads_strictly(tinynet, tmp_path):
    cls, weights = tinynet
    with pytest.raises(registry.ConfigError, match=r"variant='v2' is not one of \['v1'\]"):
        registry.load_extractor("tinynet", variant="v2")
    with pytest.raises(registry.ConfigError, match="nms_size must be an odd positive integer, got 4"):
        registry.load_extractor("tinynet", nms_size=4)
    with pytest.raises(registry.ConfigError, match=r"unknown config key\(s\) \['top_k'\]"):
        registry.load_extractor("tinynet", top_k=5)
    wrong = {"conv1.weight": torch.zeros(8, 1, 3, 3)}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"wrong.pth: not compatible with tinynet \(missing keys"):
        registry.load_extractor("tinynet", weights=str(tmp_path / "wrong.pth"))


def test_the_example_is_trainable_from_its_one_file(tinynet, tmp_path):
    """The four hooks in the file make tinynet trainable: the trainer finds them through the registry, trains
    two steps, and the saved weights are the trained ones and load in the extractor."""
    from localfeat.train import resolve_config, train

    cls, weights = tinynet
    module = sys.modules[MODULE]
    hooks = registry.trainable("tinynet")
    assert (hooks.module, hooks.build, hooks.dense, hooks.save) == (MODULE, module.train_build,
                                                                     module.train_dense, module.train_save)
    assert "tinynet" in registry.trainable_models()
    conf = {"model": {"name": "tinynet"}, "losses": {"ap": 1.0, "distinctiveness": 1.0}, "steps": 2,
            "batch_size": 1, "checkpoint_every": 2, "log_every": 1, "tensorboard": False, "amp": False,
            "data": {"crop_size": 32, "base_size": 64, "num_workers": 0,
                     "images": str(shared("hpatches_subset", "v_dogman"))}}
    assert resolve_config(conf)["model"] == {"name": "tinynet", "weights": None}
    with pytest.raises(registry.ConfigError, match=r"unknown config key\(s\) \['variant'\]"):
        resolve_config({**conf, "model": {"name": "tinynet", "variant": "v1"}})
    # the dense outputs: shapes, ranges, the luminance the extractor's gray input gives
    torch.manual_seed(0)
    net = hooks.build({"weights": None})
    rgb = torch.rand(2, 3, 16, 24)
    out = hooks.dense(net, rgb)
    gray = 0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:]
    scores, desc = net(gray)
    assert out["stride"] == 1 and out["scores"].shape == (2, 1, 16, 24) and out["descriptors"].shape == (2, 8, 16, 24)
    torch.testing.assert_close(out["scores"], scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["descriptors"], desc, rtol=1e-5, atol=1e-6)

    run = train(conf, tmp_path / "run")
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    torch.manual_seed(0)
    init = hooks.build({"weights": None}).state_dict()
    assert ck["step"] == 2 and any(not torch.equal(init[k], ck["model"][k]) for k in init)
    ex = registry.load_extractor("tinynet", weights=str(run / "weights.pt"), device="cpu")
    assert ex.weights_path == run / "weights.pt"
    assert ex.net.state_dict().keys() == ck["model"].keys()
    assert all(torch.equal(ex.net.state_dict()[k], ck["model"][k]) for k in ck["model"])
    # weights= a file resumes training from it (the same tensors)
    again = hooks.build({"weights": str(run / "weights.pt")})
    assert all(torch.equal(again.state_dict()[k], ck["model"][k]) for k in ck["model"])


def test_partial_training_hooks_are_an_error_naming_the_missing_ones(tinynet, monkeypatch):
    module = sys.modules[MODULE]
    monkeypatch.delattr(module, "train_save")
    monkeypatch.setattr(registry, "_TABLES", {"extractor": {}, "matcher": {}, "trainable": {}})
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    monkeypatch.setitem(sys.modules, MODULE, module)
    with pytest.raises(RuntimeError, match=r"tinynet defines the training hook\(s\) .* but not \['train_save'\]"):
        registry.trainable("tinynet")
