"""Shared test fixtures: where ../shared/data is, and weights lookup pointed at it.

The offline data lives beside the repository (``../shared/data``) or where the
environment variable LOCALFEAT_SHARED_DATA says. It is never copied into the repository.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))
REFERENCE = SHARED_DATA / "reference"

# Weights: every ../shared/data/weights_* folder, before the user's cache; never download in tests.
os.environ["LOCALFEAT_WEIGHTS"] = os.pathsep.join(
    [str(p) for p in sorted(SHARED_DATA.glob("weights_*")) if p.is_dir()]
    + [p for p in os.environ.get("LOCALFEAT_WEIGHTS", "").split(os.pathsep) if p])
os.environ["LOCALFEAT_OFFLINE"] = "1"


def shared(*parts) -> Path:
    """Path inside ../shared/data; fails (never skips) when the fixture data is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"fixture data missing: {path} (set LOCALFEAT_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture
def shared_data() -> Path:
    return shared()
