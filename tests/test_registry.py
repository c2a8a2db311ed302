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
    with pytest.raises(ConfigError, match=r"valid keys: \['block_rows', 'device', 'max_distance', 'mutual', 'precision', 'ratio'\]"):
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
    assert ("  sift\n    config: resize_max=1600, device=None, precision='fp32', channels_last=False, "
            "max_keypoints=None") in out
    assert "weights: not needed" in out and "nearest_neighbor" in out


def _extractor_blocks(out: str) -> dict:
    """`localfeat models` output -> {extractor name: its indented lines}."""
    section = out.split("extractors:\n", 1)[1].split("matchers:\n", 1)[0]
    blocks, name = {}, None
    for line in section.splitlines():
        if line.startswith("  ") and not line.startswith("    "):
            name = line.strip()
            blocks[name] = []
        elif name is not None:
            blocks[name].append(line.strip())
    return blocks


def test_every_extractor_has_max_keypoints_and_models_shows_it(capsys):
    assert main(["models"]) == 0
    blocks = _extractor_blocks(capsys.readouterr().out)
    assert set(blocks) == set(model_classes("extractor"))
    for name, cls in model_classes("extractor").items():
        assert "max_keypoints" in cls.all_defaults(), name
        config = next(line for line in blocks[name] if line.startswith("config: "))
        assert f"max_keypoints={cls.all_defaults()['max_keypoints']!r}" in config, (name, config)
    assert "aliases (upstream names): num_points -> max_keypoints, nms_size -> nms_window" in blocks["keynet"]
    assert "aliases (upstream names): top_k -> max_keypoints, nms_kernel -> nms_window" in blocks["xfeat"]


@pytest.mark.parametrize("name, given, ours", [
    ("r2d2", {"top_k": 300}, {"max_keypoints": 300}),
    ("xfeat", {"top_k": None, "nms_kernel": 3}, {"max_keypoints": None, "nms_window": 3}),
    ("keynet", {"num_points": 100, "nms_size": 9}, {"max_keypoints": 100, "nms_window": 9}),
    # ALIKE(D): n_limit caps threshold mode; top_k=k is the original's top-k mode (no threshold, n_limit unused)
    ("aliked", {"n_limit": 2048}, {"max_keypoints": 2048}),
    ("alike", {"top_k": 50, "n_limit": 10}, {"max_keypoints": 50, "scores_th": None}),
    ("alike", {"top_k": None}, {}),
    ("sift", {"max_keypoints": 7}, {"max_keypoints": 7}),
])
def test_upstream_names_are_aliases_of_ours(name, given, ours):
    cls = model_classes("extractor")[name]
    used = {}
    assert cls.resolve_aliases(given, used) == ours
    assert set(used) == {k for k in ours if k not in given and k != "scores_th"}


@pytest.mark.parametrize("name, conf, message", [
    ("r2d2", {"top_k": 10, "max_keypoints": 20}, r"r2d2: top_k=10 is the upstream name of max_keypoints, which is "
                                                  r"also given \(max_keypoints=20\); give only max_keypoints"),
    ("alike", {"top_k": 10, "max_keypoints": 20}, r"alike: top_k=10 is the upstream name of max_keypoints"),
])
def test_an_alias_and_our_key_with_different_values_is_an_error(name, conf, message):
    with pytest.raises(ConfigError, match=message):
        model_classes("extractor")[name].resolve_aliases(conf)
    same = dict(conf, max_keypoints=conf["top_k"])
    assert model_classes("extractor")[name].resolve_aliases(same)["max_keypoints"] == conf["top_k"]
