"""Registered extractors and matchers: name -> class.

A model is a class with a unique `name` and a `default_conf` dict; it is found
by importing every module of `localfeat.extractors` and `localfeat.matchers`
(no central list to edit). Configs and their parsing live in `localfeat.config`
(re-exported here for existing callers).
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
from .config import (ConfigError, Model, check_choice, check_count, conf_hash, merge_conf,  # noqa: F401
                     parse_conf_items, parse_model_spec, parse_value)

logger = logging.getLogger(__name__)


_TABLES: dict[str, dict[str, type]] = {"extractor": {}, "matcher": {}}
_DISCOVERED = False


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    from .extractors.base import Extractor
    from .matchers.base import DetectorFreeMatcher, Matcher

    for package, kind, base in (("localfeat.extractors", "extractor", Extractor),
                                ("localfeat.matchers", "matcher", (Matcher, DetectorFreeMatcher))):
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_") or info.name == "base":
                continue
            module = importlib.import_module(f"{package}.{info.name}")
            for obj in vars(module).values():
                if (isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module.__name__
                        and obj.name):
                    other = _TABLES[kind].get(obj.name)
                    if other is not None and other is not obj:
                        raise RuntimeError(f"{kind} name {obj.name!r} registered twice: {other} and {obj}")
                    _TABLES[kind][obj.name] = obj
    _DISCOVERED = True


def model_classes(kind: str) -> dict[str, type]:
    """name -> class for kind 'extractor' or 'matcher'."""
    _discover()
    return dict(sorted(_TABLES[kind].items()))


def get_class(kind: str, name: str) -> type:
    table = model_classes(kind)
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; available: {sorted(table)}")
    return table[name]


def load_extractor(name: str, **conf):
    """Instantiate the registered extractor `name` with config `conf` (strict)."""
    return get_class("extractor", name)(**conf)


def load_matcher(name: str, **conf):
    """Instantiate the registered matcher `name` with config `conf` (strict)."""
    return get_class("matcher", name)(**conf)
