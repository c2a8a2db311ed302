"""Config values that used to crash, hang, exhaust memory or silently change results (issue 19)."""
import time

import pytest

from localfeat.config import ConfigError, check_choice, parse_value
from localfeat.extractors._r2d2_nets import parse_net_string
from localfeat.hub import CheckpointError
from localfeat.registry import load_extractor, load_matcher


@pytest.mark.parametrize("conf,message", [
    ({"sigma": 0}, "sift: sigma must be a finite number in \\(0, 10\\], got 0"),
    ({"sigma": float("nan")}, "sift: sigma must be a finite number in .*, got nan"),
    ({"n_octave_layers": 0}, "sift: n_octave_layers must be an integer in \\[1, 10\\], got 0"),
    ({"n_octave_layers": 100000}, "sift: n_octave_layers must be an integer in \\[1, 10\\], got 100000"),
    ({"rootsift": "maybe"}, "sift: rootsift must be true or false, got 'maybe'"),
    ({"contrast_threshold": "high"}, "sift: contrast_threshold must be a finite number in \\[-inf, inf\\], got 'high'"),
    ({"resize_max": 0}, "sift: resize_max must be None or a positive integer, got 0"),
    ({"resize_max": -1}, "sift: resize_max must be None or a positive integer, got -1"),
])
def test_sift_config_values(conf, message):
    with pytest.raises(ConfigError, match=message):
        load_extractor("sift", **conf)


@pytest.mark.parametrize("conf,message", [
    ({"ratio": -1}, "ratio must be None or a finite number in \\(0, 1\\], got -1"),
    ({"ratio": float("nan")}, "ratio must be None or a finite number in \\(0, 1\\], got nan"),
    ({"max_distance": float("nan")}, "max_distance must be None or a finite number in \\(0, inf\\], got nan"),
    ({"mutual": "yes"}, "mutual must be true or false, got 'yes'"),
])
def test_nearest_neighbour_config_values(conf, message):
    with pytest.raises(ConfigError, match=message):
        load_matcher("nearest_neighbor", **conf)
    assert load_matcher("nearest_neighbor", ratio=0.8, max_distance=1.2).conf["ratio"] == 0.8


def test_missing_cuda_device_is_a_config_error():
    with pytest.raises(ConfigError, match="device='cuda:7': (no CUDA device on this machine|this machine has)"):
        load_extractor("sift", device="cuda:7")
    with pytest.raises(ConfigError, match="device='gpu-please' is not a torch device"):
        load_extractor("sift", device="gpu-please")


def test_affine_sim_views_are_bounded():
    start = time.monotonic()
    with pytest.raises(ConfigError, match="affine_sim: phi_step must be a finite number in \\(0, 180\\], got 0"):
        load_extractor("affine_sim", phi_step=0)
    with pytest.raises(ConfigError, match="affine_sim: tilts must be a finite number in \\[1, 32.0\\], "
                                          "got 1000000000.0"):
        load_extractor("affine_sim", tilts=[1e9])
    with pytest.raises(ConfigError, match="make more than 1000 views"):
        load_extractor("affine_sim", tilts=[1, 32], phi_step=1e-6)
    assert time.monotonic() - start < 10  # refused, not computed
    # t = 1: phi 0; t = 2: phi = k * 72 / 2 < 180, i.e. 0, 36, 72, 108, 144
    assert load_extractor("affine_sim", tilts=[1, 2], phi_step=72.0).views == [
        (1.0, 0.0), (2.0, 0.0), (2.0, 36.0), (2.0, 72.0), (2.0, 108.0), (2.0, 144.0)]


def test_yaml_alias_chains_are_refused_and_messages_are_short():
    chain = "a: &a [x, x]\n" + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}]\n"
                                       for i in range(20))
    start = time.monotonic()
    with pytest.raises(ConfigError, match="uses YAML aliases") as info:
        parse_value(chain)
    assert time.monotonic() - start < 1 and len(str(info.value)) < 200
    with pytest.raises(ConfigError) as info:
        check_choice("m", "mode", "x" * 1_000_000, ["a", "b"])
    assert len(str(info.value)) < 200 and "(1000002 characters)" in str(info.value)
    assert parse_value("1e-3") == 0.001 and parse_value("[1, 2]") == [1, 2] and parse_value("cuda:0") == "cuda:0"


def test_r2d2_net_string_arguments_are_bounded():
    assert parse_net_string("Quad_L2Net_ConfCFS(mchan=6)") == ("Quad_L2Net_ConfCFS", {"mchan": 6})
    with pytest.raises(CheckpointError, match="mchan=4096 is not a valid int in \\[1, 16\\]"):
        parse_net_string("Quad_L2Net_ConfCFS(mchan=4096)")
