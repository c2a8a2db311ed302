"""Registered extractors and matchers: name -> class.

A model is a class with a unique `name` and a `default_conf` dict; it is found
by importing every module of `localfeat.extractors` and `localfeat.matchers`
(no central list to edit). Configs and their parsing live in `localfeat.config`
(re-exported here for existing callers).

An extractor is trainable when its module also defines the training hooks (see `Trainable`):
`TRAIN_DEFAULTS`, `train_build`, `train_dense` and `train_save`; `trainable(name)` returns them.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from .config import (ConfigError, Model, check_choice, check_count, conf_hash, merge_conf,  # noqa: F401
                     parse_conf_items, parse_model_spec, parse_value)

logger = logging.getLogger(__name__)


_TABLES: dict[str, dict] = {"extractor": {}, "matcher": {}, "trainable": {}}
_DISCOVERED = False

# The names of a model module's training hooks (all four, or none).
TRAIN_HOOKS = ("TRAIN_DEFAULTS", "train_build", "train_dense", "train_save")


@dataclass(frozen=True)
class Trainable:
    """What `localfeat.train` needs of a trainable extractor, read from the hooks of its module:

      default_conf = TRAIN_DEFAULTS: the training model config (strict; 'weights' None = from scratch);
      build(conf)            = train_build: the network (nn.Module) for a resolved model config;
      dense(net, images)     = train_dense: images (B, 3, H, W) float RGB in [0, 1] -> the dense outputs the
                               losses read (see `localfeat.train.losses._base`), with their 'stride';
      save(net, conf, path)  = train_save: a weights file that `load_extractor(name, weights=path)` loads
                               (the release's layout), written atomically.
    """

    name: str
    module: str
    default_conf: dict
    build: Callable
    dense: Callable
    save: Callable

    def resolve(self, conf: dict) -> dict:
        """The full model config (strict): `default_conf` updated with `conf` (without 'name')."""
        return merge_conf(self.default_conf, {k: v for k, v in conf.items() if k != "name"},
                          where=f"model {self.name!r} (training)")


def _trainable_of(module: ModuleType, classes: list[type]):
    """The `Trainable` of an extractor module that defines the training hooks, else None."""
    present = [h for h in TRAIN_HOOKS if hasattr(module, h)]
    if not present:
        return None
    missing = [h for h in TRAIN_HOOKS if h not in present]
    if missing:
        raise RuntimeError(f"{module.__name__} defines the training hook(s) {present} but not {missing}: "
                           f"a trainable model module defines all of {list(TRAIN_HOOKS)}")
    if len(classes) != 1:
        raise RuntimeError(f"{module.__name__} defines training hooks and {len(classes)} extractors "
                           f"{sorted(c.name for c in classes)}: the hooks train the one extractor of their module")
    return Trainable(classes[0].name, module.__name__, dict(module.TRAIN_DEFAULTS), module.train_build,
                     module.train_dense, module.train_save)


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _TABLES["trainable"] = {}
    from .extractors.base import Extractor
    from .matchers.base import DetectorFreeMatcher, Matcher

    for package, kind, base in (("localfeat.extractors", "extractor", Extractor),
                                ("localfeat.matchers", "matcher", (Matcher, DetectorFreeMatcher))):
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_") or info.name == "base":
                continue
            module = importlib.import_module(f"{package}.{info.name}")
            classes = []
            for obj in vars(module).values():
                if (isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module.__name__
                        and obj.name):
                    other = _TABLES[kind].get(obj.name)
                    if other is not None and other is not obj:
                        raise RuntimeError(f"{kind} name {obj.name!r} registered twice: {other} and {obj}")
                    _TABLES[kind][obj.name] = obj
                    classes.append(obj)
            if kind == "extractor":
                hooks = _trainable_of(module, classes)
                if hooks is not None:
                    _TABLES["trainable"][hooks.name] = hooks
    _DISCOVERED = True


def model_classes(kind: str) -> dict[str, type]:
    """name -> class for kind 'extractor' or 'matcher'."""
    _discover()
    return dict(sorted(_TABLES[kind].items()))


def trainable_models() -> dict[str, Trainable]:
    """name -> `Trainable` of every extractor whose module defines the training hooks."""
    _discover()
    return dict(sorted(_TABLES["trainable"].items()))


def trainable(name: str) -> Trainable:
    """The training hooks of extractor `name`; a ConfigError naming the trainable models if it has none."""
    table = trainable_models()
    if name not in table:
        raise ConfigError(f"model {name!r} cannot be trained: trainable models are {sorted(table)} "
                          f"(registered extractors: {sorted(model_classes('extractor'))})")
    return table[name]


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
