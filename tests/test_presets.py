"""Named extract/match presets: valid configs of registered models, the same from Python and the CLI,
and the matcher defaults of SfM and pose evaluation (Lowe's ratio for SIFT) coming from them."""
import shutil

import numpy as np
import pytest
from conftest import shared

import localfeat
from localfeat import presets
from localfeat.cli import main
from localfeat.config import ConfigError, merge_conf
from localfeat.io.h5 import FeatureStore, MatchStore
from localfeat.registry import conf_hash, model_classes


@pytest.mark.parametrize("name", sorted(presets.EXTRACT))
def test_every_extract_preset_is_a_valid_config_of_a_registered_model(name):
    p = presets.EXTRACT[name]
    cls = model_classes("extractor")[p.model]
    conf = merge_conf(cls.all_defaults(), cls.resolve_aliases(dict(p.conf)), where=name)
    assert conf["max_keypoints"] == p.conf["max_keypoints"] and conf["resize_max"] == p.conf["resize_max"]
    assert p.match in presets.MATCH


@pytest.mark.parametrize("name", sorted(presets.MATCH))
def test_every_match_preset_is_a_valid_config_of_a_registered_matcher(name):
    p = presets.MATCH[name]
    cls = model_classes("matcher")[p.matcher]
    merge_conf(cls.all_defaults(), dict(p.conf), where=name)


def test_the_presets_the_issue_names_exist():
    assert {"sift", "aliked-n16", "disk", "superpoint", "xfeat", "r2d2"} <= set(presets.EXTRACT)
    assert presets.MATCH["aliked+lightglue"].matcher == "lightglue"
    assert presets.EXTRACT["aliked-n16"].match == "aliked+lightglue"


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown extract preset 'sfit'; available: \[.*'sift'"):
        presets.extract_preset("sfit")
    with pytest.raises(ConfigError, match=r"unknown match preset 'nn'; available: \[.*'nn-ratio'"):
        presets.match_preset("nn")


def test_default_matcher_conf_is_the_preset_of_the_model():
    assert presets.default_matcher_conf("sift", "nearest_neighbor") == {"mutual": True, "ratio": 0.8}
    assert presets.default_matcher_conf("aliked", "nearest_neighbor") == {"mutual": True}
    assert presets.default_matcher_conf("superpoint", "nearest_neighbor") == {"mutual": True}  # its preset: LightGlue
    assert presets.default_matcher_conf("sift", "lightglue") == {}
    assert presets.default_matcher_conf("aliked", "lightglue", preset="aliked-n16") == {"features": "aliked"}


def test_python_overrides_replace_preset_keys():
    ex = presets.load_extractor("sift", max_keypoints=100)
    assert ex.name == "sift" and ex.conf["max_keypoints"] == 100 and ex.conf["resize_max"] == 1600
    assert presets.extract_args("sift", resize_max=320) == {
        "model": "sift", "conf": {"max_keypoints": 4096, "resize_max": 320}}
    assert presets.load_matcher("nn-ratio").conf["ratio"] == 0.8
    with pytest.raises(TypeError):  # presets are read-only: a run cannot change them for the next
        presets.EXTRACT["sift"].conf["max_keypoints"] = 1


def test_cli_preset_equals_the_python_preset(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted(shared("sfm_sacre_coeur_hloc", "mapping").glob("*.jpg"))[:2]:
        shutil.copy(src, images / src.name)
    names = sorted(p.name for p in images.iterdir())
    out = tmp_path / "cli"
    assert main(["extract", str(images), "-o", str(out / "f.h5"), "--preset", "sift", "--conf", "max_keypoints=500",
                 "--resize-max", "320"]) == 0
    assert main(["match", str(out / "f.h5"), "-o", str(out / "m.h5"), "--exhaustive", "--preset", "nn-ratio"]) == 0
    api = tmp_path / "api"
    localfeat.extract(images, api / "f.h5", **presets.extract_args("sift", max_keypoints=500, resize_max=320))
    localfeat.match(api / "f.h5", api / "m.h5", [tuple(names)], **presets.match_args("nn-ratio"))
    cli_store = FeatureStore(out / "f.h5", mode="r")
    expected = {**presets.EXTRACT["sift"].conf, "max_keypoints": 500, "resize_max": 320}
    assert cli_store.stored_identity() == ("sift", conf_hash("sift", localfeat.load_extractor("sift", **expected).conf))
    assert cli_store.stored_identity() == FeatureStore(api / "f.h5", mode="r").stored_identity()
    for name in names:
        assert np.array_equal(cli_store.get(name).keypoints, FeatureStore(api / "f.h5", mode="r").get(name).keypoints)
    a, b = MatchStore(out / "m.h5", mode="r").get(*names), MatchStore(api / "m.h5", mode="r").get(*names)
    assert len(a) > 0 and np.array_equal(a.indices, b.indices)
    ratio_free = localfeat.load_matcher("nearest_neighbor").match(cli_store.get(names[0]), cli_store.get(names[1]))
    assert len(a) < len(ratio_free)  # the ratio test of the preset was applied

    capsys.readouterr()
    assert main(["extract", str(images), "-o", str(out / "g.h5"), "--preset", "nope"]) == 2
    assert "unknown extract preset 'nope'; available:" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --model and --preset exclude each other
        main(["extract", str(images), "-o", str(out / "g.h5"), "--preset", "sift", "--model", "sift"])
