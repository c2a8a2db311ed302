"""Training configs: the defaults, presets (localfeat/train/presets/*.yaml), YAML files, dotted
overrides, and the strict nested merge that turns them into one resolved config."""
from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Optional

import yaml

from ..config import ConfigError, parse_conf_items
from ..registry import trainable
from .losses import build_loss

DEFAULT_CONFIG = {
    "model": "r2d2",
    "freeze": [],
    "seed": 0,
    "steps": 1000,
    "batch_size": 4,
    "data": {
        "source": "homography",
        "images": None,
        "scenes": None,
        "root": None,
        "min_overlap": None,
        "max_overlap": None,
        "occlusion_tolerance": 0.05,
        "crop_size": 192,
        "base_size": 384,
        "scale_range": [0.6, 1.2],
        "rotation_deg": 30.0,
        "zoom": 0.4,
        "perspective": 0.3,
        "shear": 0.1,
        "photometric": 0.7,
        "pool": None,
        "num_workers": 2,
    },
    "losses": {"reliability": 1.0, "repeatability": 1.0},
    "optimizer": {"name": "adam", "lr": 1e-4, "weight_decay": 5e-4},
    "scheduler": {"name": "constant", "warmup_steps": 0, "min_lr": 0.0},
    "checkpoint_every": 100,
    "log_every": 10,
    "validation": {"every": 0, "root": None, "synth_sequences": 6, "synth_size": 320, "synth_seed": 1,
                   "top_k": 1000, "nms": 3, "resize_max": None},
    "time_limit_minutes": None,
    "stop_at_step": None,
    "device": None,
    "amp": True,
    "threads": None,
    "tensorboard": True,
}


class TrainError(RuntimeError):
    """A run directory that cannot be (re)started: existing run, missing checkpoint."""


# ------------------------------------------------------------------------------------------ config
def list_presets() -> dict[str, str]:
    """{preset name: first comment line} of the presets shipped in localfeat/train/presets."""
    out = {}
    for entry in sorted(resources.files("localfeat.train").joinpath("presets").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            first = entry.read_text().splitlines()[0] if entry.read_text() else ""
            out[entry.name[:-5]] = first.lstrip("# ").strip()
    return out


def read_config_source(source: str | os.PathLike, _seen: tuple = ()) -> dict:
    """A preset name (see `list_presets`) or a YAML file -> dict.

    A config may name another in `base:` (a preset name, or a YAML file relative to the file that names
    it): the base is read first (recursively) and this config's keys are merged into it, mappings key by
    key (so `losses: {nre: {...}}` adds a loss and `data: {pool: 8000}` changes one data key), any other
    value replacing the base's.
    """
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"--config {source}: no such file")
        text, key, folder = path.read_text(), str(path.resolve()), path.parent
    else:
        entry = resources.files("localfeat.train").joinpath("presets", f"{source}.yaml")
        if not entry.is_file():
            raise ConfigError(f"--config {source!r} is neither a YAML file nor a preset; "
                              f"presets: {sorted(list_presets())}")
        text, key, folder = entry.read_text(), f"preset:{source}", None   # a preset's base is a preset
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping, got {type(data).__name__}")
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{source}: base must be a preset name or a YAML file, got {base!r}")
    if key in _seen:
        raise ConfigError(f"{source}: base configs form a cycle: {' -> '.join(_seen + (key,))}")
    if folder is not None and base.endswith((".yaml", ".yml")) and not Path(base).is_absolute():
        base = str(folder / base)
    return merge_mappings(read_config_source(base, _seen + (key,)), data)


def merge_mappings(base: dict, update: dict) -> dict:
    """`update` merged into a copy of `base`: mappings key by key (recursively), other values replaced."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_mappings(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def merge_strict(defaults: dict, conf: dict, where: str) -> dict:
    """Nested strict merge: unknown keys are errors; 'losses' and 'model' are free-form (checked later)."""
    unknown = sorted(set(conf) - set(defaults))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(defaults)}")
    out = copy.deepcopy(defaults)
    for key, value in conf.items():
        if isinstance(defaults.get(key), dict) and key not in ("losses",):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} must be a mapping, got {value!r}")
            out[key] = merge_strict(defaults[key], value, f"{where}.{key}")
        elif key == "losses":
            out[key] = copy.deepcopy(value)
        else:
            out[key] = value
    return out


def apply_overrides(conf: dict, overrides: dict) -> dict:
    """Set dotted keys ('data.crop_size': 64, 'model.mchan': 2, 'losses': {...}) in a nested config."""
    conf = copy.deepcopy(conf)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = conf
        for p in parts[:-1]:
            if p == "model" and isinstance(node.get("model"), str):
                node["model"] = {"name": node["model"]}
            if p not in node or not isinstance(node[p], dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return conf


def resolve_config(source: str | os.PathLike | dict, overrides: Optional[dict] = None) -> dict:
    """The full strict config: defaults <- preset/file/dict <- overrides; model and losses validated."""
    raw = dict(source) if isinstance(source, dict) else read_config_source(source)
    raw = apply_overrides(raw, overrides or {})
    conf = merge_strict(DEFAULT_CONFIG, raw, "config")
    model = conf["model"]
    if isinstance(model, str):
        model = {"name": model}
    if not isinstance(model, dict) or "name" not in model:
        raise ConfigError(f"config.model must be NAME or {{name: NAME, ...}}, got {conf['model']!r}")
    conf["model"] = {"name": model["name"], **trainable(model["name"]).resolve(model)}
    build_loss(conf["losses"])  # validates names and keys
    for key in ("steps", "batch_size", "checkpoint_every", "log_every"):
        v = conf[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"config.{key} must be a positive integer, got {v!r}")
    for key, where in (("stop_at_step", conf), ("pool", conf["data"])):
        v = where[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"config.{'data.' if key == 'pool' else ''}{key} must be None or a positive "
                              f"integer, got {v!r}")
    if conf["data"]["source"] not in ("homography", "colmap_scenes", "megadepth"):
        raise ConfigError(f"config.data.source {conf['data']['source']!r} is not 'homography' (data.images: a folder "
                          "of photos), 'colmap_scenes' (data.scenes: a dataset of `localfeat dataset from-colmap`) "
                          "or 'megadepth' (data.root: the MegaDepth folder, data.scenes: LoFTR or D2-Net index files)")
    if conf["data"]["source"] == "colmap_scenes" and not conf["data"]["scenes"]:
        raise ConfigError("config.data.source is 'colmap_scenes': set data.scenes to the dataset folder")
    if conf["data"]["source"] == "megadepth" and not (conf["data"]["scenes"] and conf["data"]["root"]):
        raise ConfigError("config.data.source is 'megadepth': set data.root to the MegaDepth folder (it holds "
                          "Undistorted_SfM/ and phoenix/) and data.scenes to an index file, a folder of them or a list")
    return conf


def parse_overrides(items) -> dict:
    """['a.b=1', 'losses={ap: 1}'] -> {'a.b': 1, 'losses': {'ap': 1}} (values parsed as YAML)."""
    return parse_conf_items(items)
