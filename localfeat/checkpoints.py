"""Loading weight files into networks: the one path every model uses (`load_weights`).

`load_weights(net, spec, override, model=...)` finds the file (`hub.find_weights`: lookup, download,
sha256 check), reads its state_dict (`state_dict_from_file`: weights_only, the entry that holds it),
applies the model's explicit key conversion if any, and loads it strictly (`load_strict`: an error
naming the file and the key/shape differences). See the pattern in the docstring of `localfeat.hub`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .hub import CheckpointError, WeightSpec, find_weights, load_torch_checkpoint

logger = logging.getLogger(__name__)


def state_dict_from_file(path: str | os.PathLike, entries: Sequence[str] = (),
                         allowed_globals: Sequence = ()) -> dict:
    """The state_dict (name -> tensor) stored in the checkpoint `path`.

    The file may be a bare state_dict, or a dict holding it under one of `entries` (tried in order,
    e.g. DISK's 'extractor' / 'disk', D2-Net's 'model'). Loaded with weights_only=True; legacy pickles
    holding other objects need them in `allowed_globals`.
    """
    obj = load_torch_checkpoint(path, allowed_globals=allowed_globals)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict (a state_dict or a checkpoint), found {type(obj).__name__}")
    for key in entries:
        if key in obj and isinstance(obj[key], dict):
            logger.debug("%s: using checkpoint entry %r", path, key)
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: not a state_dict of tensors; expected a bare state_dict"
            + (f" or a dict with one of the entries {list(entries)}" if entries else "")
            + f", found keys {sorted(obj)[:8]}")
    return dict(obj)


def load_strict(module: torch.nn.Module, state_dict: dict, path, model_name: str) -> None:
    """`module.load_state_dict(state_dict, strict=True)` with an error naming the file and the key differences."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing keys {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            details.append(f"unexpected keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        if wrong:
            details.append("shape mismatch " + ", ".join(
                f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:4]))
        raise CheckpointError(f"{path}: not compatible with {model_name} ({'; '.join(details)}); "
                              "check the file and the model's variant/config")
    module.load_state_dict(state_dict, strict=True)


def load_weights(net: torch.nn.Module, spec: WeightSpec, override: Optional[str | os.PathLike] = None, *,
                 model: str, entries: Sequence[str] = (), allowed_globals: Sequence = (),
                 convert: Optional[Callable[[dict, Path], dict]] = None) -> Path:
    """Load the official file of `spec` (or `override`, a path) into `net` strictly; `net` ends in eval mode.

    model:    the name used in messages ('DISK', 'lightglue disk', ...).
    entries / allowed_globals: see `state_dict_from_file`.
    convert:  (state_dict, path) -> state_dict, the model's explicit handling of an official file's
              renamed or extra keys (it must raise `CheckpointError` on what it does not expect).
    Returns the path of the file loaded.
    """
    path = find_weights(spec, override=override)
    state = state_dict_from_file(path, entries=entries, allowed_globals=allowed_globals)
    if convert is not None:
        state = convert(state, path)
    load_strict(net, state, path, model)
    net.eval()
    logger.info("%s: loaded %s", model, path)
    return path


def training_weights(spec: WeightSpec, weights: Optional[str | os.PathLike]) -> Optional[Path]:
    """The file a training model config's `weights` names: None (from scratch: no file), 'official' (the file
    of `spec`, found and verified) or a path."""
    if weights is None:
        return None
    return find_weights(spec, override=None if weights == "official" else weights)
