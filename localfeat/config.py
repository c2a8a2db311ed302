"""Strict model configs: merging with defaults, value checks, command-line parsing, config hashes,
and `Model`, the base of every registered extractor and matcher.

This module imports nothing else of localfeat, so any module may use it (the registry, which
discovers models, builds on it).
"""
from __future__ import annotations

from typing import Any

import numpy as np


class ConfigError(ValueError):
    """An unknown model name, an unknown config key, or a bad config value."""


def merge_conf(defaults: dict, conf: dict, where: str) -> dict:
    """Return `defaults` updated with `conf`; an unknown key raises `ConfigError` naming the valid ones."""
    unknown = sorted(set(conf) - set(defaults))
    if unknown:
        raise ConfigError(
            f"{where}: unknown config key(s) {unknown}; valid keys: {sorted(defaults)}")
    merged = dict(defaults)
    merged.update(conf)
    return merged


def check_choice(where: str, key: str, value, choices) -> None:
    """Raise `ConfigError` unless `value` is one of `choices` (the message lists them)."""
    if value not in choices:
        raise ConfigError(f"{where}: {key}={value!r} is not one of {sorted(choices, key=str)}")


def check_count(where: str, key: str, value, allow_none: bool = True, odd: bool = False) -> None:
    """Raise `ConfigError` unless `value` is a positive integer (odd if `odd`), or None when `allow_none`."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (odd and value % 2 == 0):
        kind = "an odd positive integer" if odd else "a positive integer"
        raise ConfigError(f"{where}: {key} must be {'None or ' if allow_none else ''}{kind}, got {value!r}")


def parse_value(text: str) -> Any:
    """Parse a config value given as text on the command line: numbers, booleans, None, lists, strings."""
    import yaml

    if text.strip().lower() in ("none", "null", "~", ""):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, str) and "**" in value:  # e.g. scale_f=2**0.25, as the original R2D2 CLI accepts
        base, _, exp = value.partition("**")
        try:
            return float(base) ** float(exp)
        except ValueError:
            return value
    return value


def parse_conf_items(items) -> dict:
    """['k=v', ...] -> {k: parsed v}; a malformed item raises `ConfigError`."""
    conf = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"config item {item!r} is not of the form key=value")
        conf[key.strip()] = parse_value(value.strip())
    return conf


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """'NAME' or 'NAME:key=value,key=value' -> (NAME, conf).

    Commas inside brackets belong to the value (`scales=[0.5,1]`).
    """
    name, _, rest = spec.partition(":")
    items, depth, current = [], 0, ""
    for ch in rest:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    if current:
        items.append(current)
    return name.strip(), parse_conf_items(items)


def conf_hash(name: str, conf: dict) -> str:
    """A short stable hash of a model name and its full resolved config."""
    import hashlib
    import json

    def norm(v):
        if isinstance(v, (np.floating, float)):
            return float(v)
        if isinstance(v, (np.integer,)):
            return int(v)
        if isinstance(v, tuple):
            return list(v)
        return v

    text = json.dumps({"name": name, "conf": {k: norm(v) for k, v in sorted(conf.items())}},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Model:
    """Base of every registered model: a `name`, a `default_conf`, and a strict `conf`."""

    name: str = ""
    default_conf: dict = {}

    def __init__(self, **conf):
        self.conf = merge_conf(self.all_defaults(), conf, where=f"model {self.name!r}")

    @classmethod
    def all_defaults(cls) -> dict:
        """default_conf merged along the class hierarchy (base classes first)."""
        merged = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "default_conf", {}) or {})
        return merged

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        """The `hub.WeightSpec`s this model needs with config `conf` (none by default)."""
        return []

    def check_choice(self, key: str, choices) -> None:
        """Config value `key` must be one of `choices`."""
        check_choice(self.name, key, self.conf[key], choices)

    def check_count(self, key: str, allow_none: bool = True, odd: bool = False) -> None:
        """Config value `key` must be a positive integer (or None = no limit)."""
        check_count(self.name, key, self.conf[key], allow_none=allow_none, odd=odd)

    @property
    def conf_hash(self) -> str:
        return conf_hash(self.name, self.conf)
