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


def short_repr(value, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: error messages must not echo huge values."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 25] + f"... ({len(text)} characters)"


def check_choice(where: str, key: str, value, choices) -> None:
    """Raise `ConfigError` unless `value` is one of `choices` (the message lists them)."""
    if value not in choices:
        raise ConfigError(f"{where}: {key}={short_repr(value)} is not one of {sorted(choices, key=str)}")


def check_range(where: str, key: str, value, low: float | None = None, high: float | None = None,
                low_open: bool = False, allow_none: bool = False, integer: bool = False) -> None:
    """Raise `ConfigError` unless `value` is a finite number (an integer if `integer`) within [low, high]
    ((low, high] if `low_open`), or None when `allow_none`."""
    if value is None and allow_none:
        return
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = number and bool(np.isfinite(value)) and (not integer or float(value).is_integer())
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{where}: {key} must be {'None or ' if allow_none else ''}{kind} in {bounds}, "
                          f"got {short_repr(value)}")


def check_count(where: str, key: str, value, allow_none: bool = True, odd: bool = False) -> None:
    """Raise `ConfigError` unless `value` is a positive integer (odd if `odd`), or None when `allow_none`."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (odd and value % 2 == 0):
        kind = "an odd positive integer" if odd else "a positive integer"
        raise ConfigError(f"{where}: {key} must be {'None or ' if allow_none else ''}{kind}, got {short_repr(value)}")


def check_types(where: str, defaults: dict, conf: dict) -> None:
    """The types every model gets checked: a key whose default is a bool takes a bool (not 'maybe'), a key
    whose default is a number takes a finite number (not NaN, inf or text); None stays allowed where the
    model's own checks allow it. Ranges are each model's business (`check_range`, `check_count`)."""
    for key, default in defaults.items():
        value = conf.get(key)
        if value is None or default is None:
            continue
        if isinstance(default, (bool, np.bool_)):
            if not isinstance(value, (bool, np.bool_)):
                raise ConfigError(f"{where}: {key} must be true or false, got {short_repr(value)}")
        elif isinstance(default, (int, float, np.integer, np.floating)):
            check_range(where, key, value)


def parse_value(text: str) -> Any:
    """Parse a config value given as text on the command line: numbers, booleans, None, lists, strings."""
    import yaml

    if text.strip().lower() in ("none", "null", "~", ""):
        return None
    if len(text) > 10_000:
        raise ConfigError(f"config value of {len(text)} characters: too long (at most 10000)")
    try:
        # Aliases are refused before anything is built: a short chain of them expands exponentially.
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise ConfigError(f"config value {short_repr(text)} uses YAML aliases (*name), which are not "
                              "accepted in command-line values")
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as text; a number is meant
        try:
            value = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            pass
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


# Options that change how a model runs; at these values they are left out of config hashes, so a store or
# cache written before the option existed keeps its hash. Another value changes the outputs, so it is hashed.
HASH_NEUTRAL_DEFAULTS = {"precision": "fp32", "channels_last": False}


def conf_hash(name: str, conf: dict) -> str:
    """A short stable hash of a model name and its full resolved config (keys of HASH_NEUTRAL_DEFAULTS
    at those values left out)."""
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

    def neutral(key, value):  # the type too: channels_last=0 is not the default False
        default = HASH_NEUTRAL_DEFAULTS.get(key, neutral)
        return type(value) is type(default) and value == default

    kept = {k: v for k, v in conf.items() if not neutral(k, v)}
    text = json.dumps({"name": name, "conf": {k: norm(v) for k, v in sorted(kept.items())}},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Model:
    """Base of every registered model: a `name`, a `default_conf`, and a strict `conf`."""

    name: str = ""
    default_conf: dict = {}
    # Upstream names accepted in configs: alias -> our key (e.g. {"top_k": "max_keypoints"}). Each model
    # documents its aliases; `localfeat models` lists them; `conf` and its hash hold our keys only.
    conf_aliases: dict = {}

    def __init__(self, **conf):
        defaults = self.all_defaults()
        self.given_as = {}  # our key -> the alias the caller used, for error messages
        conf = self.resolve_aliases(conf, self.given_as)
        self.conf = merge_conf(defaults, conf, where=f"model {self.name!r}")
        check_types(self.name, defaults, self.conf)

    @classmethod
    def all_aliases(cls) -> dict:
        """conf_aliases merged along the class hierarchy: alias -> our key."""
        merged = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "conf_aliases", {}) or {})
        return merged

    @classmethod
    def resolve_aliases(cls, conf: dict, given_as: dict | None = None) -> dict:
        """`conf` with every alias replaced by our key; an alias and its key both given with different
        values is a `ConfigError`. `given_as` (optional) receives our key -> the alias used."""
        out = dict(conf)
        for alias, key in cls.all_aliases().items():
            if alias not in out:
                continue
            value = out.pop(alias)
            if key in conf and conf[key] != value:
                raise ConfigError(f"{cls.name}: {alias}={short_repr(value)} is the upstream name of {key}, "
                                  f"which is also given ({key}={short_repr(conf[key])}); give only {key}")
            out[key] = value
            if given_as is not None:
                given_as[key] = alias
        return out

    def _key_text(self, key: str) -> str:
        alias = getattr(self, "given_as", {}).get(key)
        return f"{key} (given as {alias})" if alias else key

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
        check_choice(self.name, self._key_text(key), self.conf[key], choices)

    def check_count(self, key: str, allow_none: bool = True, odd: bool = False) -> None:
        """Config value `key` must be a positive integer (or None = no limit)."""
        check_count(self.name, self._key_text(key), self.conf[key], allow_none=allow_none, odd=odd)

    def check_range(self, key: str, low=None, high=None, low_open: bool = False, allow_none: bool = False,
                    integer: bool = False) -> None:
        """Config value `key` must be a finite number in [low, high] ((low, high] if `low_open`)."""
        check_range(self.name, self._key_text(key), self.conf[key], low, high, low_open=low_open,
                    allow_none=allow_none, integer=integer)

    @property
    def conf_hash(self) -> str:
        return conf_hash(self.name, self.conf)
