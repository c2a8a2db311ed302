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

# Official files too large for shared/data (the LightGlue matchers): `make weights` fetches them here.
TEST_WEIGHTS = Path(os.environ.get("LOCALFEAT_TEST_WEIGHTS", REPO / ".cache" / "weights"))

# Weights: every ../shared/data/weights_* folder and TEST_WEIGHTS, before the user's cache; never
# download in tests.
os.environ["LOCALFEAT_WEIGHTS"] = os.pathsep.join(
    [str(p) for p in sorted(SHARED_DATA.glob("weights_*")) if p.is_dir()] + [str(TEST_WEIGHTS)]
    + [p for p in os.environ.get("LOCALFEAT_WEIGHTS", "").split(os.pathsep) if p])
os.environ["LOCALFEAT_OFFLINE"] = "1"


def shared(*parts) -> Path:
    """Path inside ../shared/data; fails (never skips) when the fixture data is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"fixture data missing: {path} (set LOCALFEAT_SHARED_DATA to the shared/data folder)")
    return path


def fetched_weights(name: str) -> Path:
    """An official file fetched by `make weights` into TEST_WEIGHTS; fails (never skips) when absent."""
    path = TEST_WEIGHTS / name
    if not path.is_file():
        pytest.fail(f"official weights missing: {path} (run `make weights`, or set LOCALFEAT_TEST_WEIGHTS "
                    "to the folder that holds them)")
    return path


@pytest.fixture
def shared_data() -> Path:
    return shared()


def _devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_devices())
def device(request) -> str:
    """Every device a test should pass on: 'cpu' always, 'cuda' too where a GPU is present."""
    return request.param
