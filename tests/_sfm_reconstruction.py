"""One SIFT reconstruction of the Sacre Coeur photos per test session, shared by test_sfm.py,
test_colmap_dataset.py and test_pose.py (the SfM run is the slow part; run it once)."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import shared

# One COLMAP thread: with several, the mapper's result depends on thread timing even with a fixed seed
# (on a loaded machine the shared run registered 6 of 10 photos instead of 10).
SFM_ARGS = ["--model", "sift", "--conf", "max_keypoints=2048", "--resize-max", "1024", "--seed", "0",
            "--colmap-threads", "1"]
_CACHE: dict = {}


def sacre_coeur_sfm(tmp_path_factory) -> tuple[int, Path, dict]:
    """(exit code of `localfeat sfm`, output folder, summary.json) of the shared run."""
    if "sfm" not in _CACHE:
        from localfeat.cli import main

        out = tmp_path_factory.mktemp("sfm_sacre_coeur")
        code = main(["sfm", str(shared("sfm_sacre_coeur_hloc", "mapping")), "-o", str(out)] + SFM_ARGS)
        summary = json.loads((out / "summary.json").read_text())
        _CACHE["sfm"] = (code, out, summary)
    return _CACHE["sfm"]


def sacre_coeur_dataset(tmp_path_factory) -> Path:
    """A dataset folder built from the shared reconstruction (scene 'sacre_coeur')."""
    if "dataset" not in _CACHE:
        from localfeat.datasets.colmap_scenes import build_scene

        _, out, _ = sacre_coeur_sfm(tmp_path_factory)
        root = tmp_path_factory.mktemp("dataset") / "ds"
        build_scene(out / "sparse", shared("sfm_sacre_coeur_hloc", "mapping"), root, scene="sacre_coeur")
        _CACHE["dataset"] = root
    return _CACHE["dataset"]
