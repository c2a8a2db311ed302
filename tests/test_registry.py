"""Registry: discovery, strict configs, value and spec parsing."""
import pytest

import localfeat
from localfeat.cli import main
from localfeat.registry import (ConfigError, conf_hash, model_classes, parse_conf_items, parse_model_spec,
                                parse_value)


def test_sift_and_nearest_neighbor_are_registered():
    assert "sift" in model_classes("extractor")
    assert "nearest_neighbor" in model_classes("matcher")


def test_unknown_name_lists_available_models():
    with pytest.raises(ConfigError, match=r"unknown extractor 'sfit'; available: \[.*'sift'"):
        localfeat.load_extractor("sfit")
    with pytest.raises(ConfigError, match=r"unknown matcher 'nn'; available: \[.*'nearest_neighbor'"):
        localfeat.load_matcher("nn")


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['max_kpts'\]; valid keys: \[.*'max_keypoints'"):
        localfeat.load_extractor("sift", max_kpts=10)
    with pytest.raises(ConfigError, match=r"valid keys: \['block_rows', 'device', 'max_distance', 'mutual', 'ratio'\]"):
        localfeat.load_matcher("nearest_neighbor", ratio_thresh=0.8)


def test_parse_value():
    assert parse_value("None") is None and parse_value("null") is None
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("False") is False and parse_value("aliked-n16") == "aliked-n16"
    assert parse_value("[0.5, 1, 2]") == [0.5, 1, 2]
    assert parse_value("2**0.25") == pytest.approx(2 ** 0.25)


def test_parse_model_spec():
    assert parse_model_spec("sift") == ("sift", {})
    assert parse_model_spec("aliked:variant=aliked-n16rot,n_limit=2048") == (
        "aliked", {"variant": "aliked-n16rot", "n_limit": 2048})
    assert parse_model_spec("d2net:scales=[0.5,1,2],multiscale=true") == (
        "d2net", {"scales": [0.5, 1, 2], "multiscale": True})
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_conf_items(["oops"])


def test_conf_hash_changes_with_any_value():
    base = localfeat.load_extractor("sift").conf
    assert conf_hash("sift", base) == conf_hash("sift", dict(base))
    assert conf_hash("sift", base) != conf_hash("sift", {**base, "max_keypoints": 10})
    assert conf_hash("sift", base) != conf_hash("rootsift", base)


def test_models_command_lists_defaults_and_weights(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "  sift\n    config: resize_max=None, device=None, max_keypoints=None" in out
    assert "weights: not needed" in out and "nearest_neighbor" in out
