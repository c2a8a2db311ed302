"""Named extract and match presets, as hloc's `confs`: one name for a model and its settings.

    localfeat extract photos/ -o features.h5 --preset aliked-n16
    localfeat match features.h5 -o matches.h5 --exhaustive --preset aliked+lightglue
    localfeat sfm photos/ -o out/ --preset superpoint          (its matcher preset: superpoint+lightglue)

    from localfeat import presets
    extractor = presets.load_extractor("aliked-n16", max_keypoints=1024)   # keys override the preset's
    localfeat.extract("photos/", "features.h5", **presets.extract_args("sift"))
    matcher = presets.load_matcher("aliked+lightglue")

An extract preset names the match preset that suits it (`match`); it is what SfM and pose evaluation
use when no matcher config is given, e.g. Lowe's ratio test for SIFT (`nn-ratio`), mutual nearest
neighbours otherwise (`default_matcher_conf`). Adding a preset is one entry below; every preset must
name a registered model (a test checks it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Optional

from .config import ConfigError


@dataclass(frozen=True)
class MatchPreset:
    """A matcher and its config."""

    name: str
    matcher: str
    conf: Mapping = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class ExtractPreset:
    """An extractor, its config (`resize_max` included) and the match preset that suits it."""

    name: str
    model: str
    conf: Mapping = field(default_factory=dict)
    match: str = "nn-mutual"
    description: str = ""


def _frozen(presets: list) -> Mapping:
    return MappingProxyType({p.name: p for p in presets})


MATCH: Mapping[str, MatchPreset] = _frozen([
    MatchPreset("nn-mutual", "nearest_neighbor", MappingProxyType({"mutual": True}),
                "mutual nearest neighbours (learned descriptors)"),
    MatchPreset("nn-ratio", "nearest_neighbor", MappingProxyType({"mutual": True, "ratio": 0.8}),
                "mutual nearest neighbours with Lowe's ratio test at 0.8 (SIFT)"),
    MatchPreset("superpoint+lightglue", "lightglue", MappingProxyType({"features": "superpoint"}),
                "LightGlue with its SuperPoint weights"),
    MatchPreset("disk+lightglue", "lightglue", MappingProxyType({"features": "disk"}),
                "LightGlue with its DISK weights"),
    MatchPreset("aliked+lightglue", "lightglue", MappingProxyType({"features": "aliked"}),
                "LightGlue with its ALIKED weights"),
    MatchPreset("xfeat+lighterglue", "lighterglue", MappingProxyType({}),
                "LighterGlue, XFeat's LightGlue"),
])

# Sizes follow hloc's confs where it has the model (resize_max 1600 for SIFT and DISK, 1024 otherwise).
EXTRACT: Mapping[str, ExtractPreset] = _frozen([
    ExtractPreset("sift", "sift", MappingProxyType({"max_keypoints": 4096, "resize_max": 1600}), "nn-ratio",
                  "OpenCV SIFT, 4096 keypoints"),
    ExtractPreset("rootsift", "sift", MappingProxyType({"max_keypoints": 4096, "rootsift": True,
                                                          "resize_max": 1600}), "nn-ratio",
                  "RootSIFT, 4096 keypoints"),
    ExtractPreset("superpoint", "superpoint", MappingProxyType({"max_keypoints": 4096, "nms_radius": 3,
                                                                "resize_max": 1024}), "superpoint+lightglue",
                  "SuperPoint as hloc's superpoint_aachen"),
    ExtractPreset("disk", "disk", MappingProxyType({"max_keypoints": 5000, "resize_max": 1600}), "disk+lightglue",
                  "DISK, 5000 keypoints"),
    ExtractPreset("disk-lightglue", "disk", MappingProxyType({"style": "lightglue", "long_side": 1024,
                                                               "max_keypoints": 2048, "resize_max": None}),
                  "disk+lightglue",
                  "DISK as cvg/LightGlue extracts it (kornia's NMS, long side resized to 1024, 2048 keypoints)"),
    ExtractPreset("aliked-n16", "aliked", MappingProxyType({"variant": "aliked-n16", "max_keypoints": 2048,
                                                             "resize_max": 1024}), "aliked+lightglue",
                  "ALIKED-n16, at most 2048 keypoints above the threshold"),
    ExtractPreset("aliked-n16rot", "aliked", MappingProxyType({"variant": "aliked-n16rot", "max_keypoints": 2048,
                                                                "resize_max": 1024}), "nn-mutual",
                  "ALIKED-n16rot (rotation-robust), at most 2048 keypoints"),
    ExtractPreset("lite", "lite", MappingProxyType({"max_keypoints": 2048, "resize_max": 1024}), "nn-mutual",
                  "localfeat's own model (shipped in the package, no download), 2048 keypoints"),
    ExtractPreset("xfeat", "xfeat", MappingProxyType({"max_keypoints": 4096, "resize_max": 1024}),
                  "xfeat+lighterglue", "XFeat sparse, 4096 keypoints"),
    ExtractPreset("r2d2", "r2d2", MappingProxyType({"variant": "r2d2_WASF_N16", "max_keypoints": 5000,
                                                     "resize_max": 1024}), "nn-mutual",
                  "R2D2 (WASF_N16), 5000 keypoints, as hloc's r2d2"),
])


def _lookup(table: Mapping, kind: str, name: str):
    if name not in table:
        raise ConfigError(f"unknown {kind} preset {name!r}; available: {sorted(table)}")
    return table[name]


def extract_preset(name: str) -> ExtractPreset:
    """The extract preset `name` (a `ConfigError` lists the available ones)."""
    return _lookup(EXTRACT, "extract", name)


def match_preset(name: str) -> MatchPreset:
    """The match preset `name` (a `ConfigError` lists the available ones)."""
    return _lookup(MATCH, "match", name)


def extract_args(name: str, **overrides) -> dict:
    """{"model", "conf"} of preset `name`, `overrides` replacing its config keys (for `localfeat.extract`)."""
    p = extract_preset(name)
    return {"model": p.model, "conf": {**p.conf, **overrides}}


def match_args(name: str, **overrides) -> dict:
    """{"matcher", "conf"} of match preset `name`, `overrides` replacing its config keys (for `localfeat.match`)."""
    p = match_preset(name)
    return {"matcher": p.matcher, "conf": {**p.conf, **overrides}}


def load_extractor(name: str, **overrides):
    """The extractor of preset `name`; `overrides` replace config keys (aliases allowed)."""
    from .registry import load_extractor as load

    p = extract_preset(name)
    return load(p.model, **{**p.conf, **overrides})


def load_matcher(name: str, **overrides):
    """The matcher of match preset `name`; `overrides` replace config keys."""
    from .registry import load_matcher as load

    p = match_preset(name)
    return load(p.matcher, **{**p.conf, **overrides})


def default_matcher_conf(model: str, matcher: str, preset: Optional[str] = None) -> dict:
    """The matcher config used when the user gives none: the match preset of the extract preset `preset`
    (default: the one named like `model`, e.g. 'sift' -> 'nn-ratio'; otherwise 'nn-mutual') when it is a
    preset of `matcher`; otherwise {} (the matcher's own defaults)."""
    chosen = EXTRACT.get(preset or model)
    match = MATCH[chosen.match if chosen is not None else "nn-mutual"]
    if match.matcher != matcher:
        match = MATCH["nn-mutual"] if matcher == MATCH["nn-mutual"].matcher else None
    return dict(match.conf) if match is not None else {}


__all__ = ["ExtractPreset", "MatchPreset", "EXTRACT", "MATCH", "extract_preset", "match_preset", "extract_args",
           "match_args", "load_extractor", "load_matcher", "default_matcher_conf"]
