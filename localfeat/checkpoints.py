"""Reading official checkpoints into our modules: unwrap the entry that holds the state_dict, load strictly.

Shared by the DISK, SuperPoint and D2-Net extractors (private to the extractors package).
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import torch

from ..hub import CheckpointError, load_torch_checkpoint

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
