"""The evaluation result cache shared by HPatches, pose and invariance runs: one JSON per (method, config
hash, dataset fingerprint) that holds the identity it was computed for, so a stale or foreign entry is
never reused (a file whose identity differs, or that cannot be read, counts as absent)."""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Optional, Sequence

from ..io.atomic import write_text_atomic

logger = logging.getLogger(__name__)


def digest_files(paths: Sequence[Path]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        digest.update(str(path.name).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "method"


def cache_path(cache_dir: Path, method: str, config_hash: str, fingerprint: str) -> Path:
    """``<cache_dir>/<method>__<config hash>__<dataset fingerprint>.json``."""
    return Path(cache_dir) / f"{safe_name(method)}__{config_hash}__{fingerprint}.json"


def normalised(identity: dict, default=str) -> dict:
    """`identity` as it reads back from JSON (tuples become lists; other objects go through `default`)."""
    return json.loads(json.dumps(identity, default=default))


def load_entry(path: Path, identity: dict, default=str) -> Optional[dict]:
    """The JSON object stored at `path` when its "identity" equals `identity` (as written with the JSON
    `default`); None when the file is absent, unreadable or was written for another identity (a hash
    collision, a hand-edited or truncated file)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("ignoring unreadable cache %s", path)
        return None
    if not isinstance(data, dict) or data.get("identity") != normalised(identity, default):
        logger.warning("cache %s was written for another configuration; recomputing", path)
        return None
    return data


def write_entry(path: Path, identity: dict, **payload) -> Path:
    """Write {"identity": identity, **payload} to `path` atomically."""
    return write_text_atomic(path, json.dumps({"identity": normalised(identity), **payload}, indent=1,
                                              sort_keys=True, default=str))


def load_cache(path: Path, identity: dict) -> dict:
    """The per-pair results of an HPatches cache file ({} when absent or foreign)."""
    entry = load_entry(path, identity)
    return entry.get("pairs", {}) if entry else {}


def write_cache(path: Path, identity: dict, pairs: dict) -> None:
    write_entry(path, identity, pairs=pairs)
