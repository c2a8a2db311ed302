"""Verb `demo`: the whole pipeline on photos bundled with scikit-image (offline)."""
from __future__ import annotations

from pathlib import Path

from .args import add_command


def cmd_demo(args) -> int:
    from ..demo import run_demo

    run_demo(Path(args.output))
    return 0


def register(sub, groups) -> None:
    p = add_command(sub, "demo", "run the demo on photos bundled with scikit-image",
                    "localfeat demo -o outputs/demo", cmd_demo)
    p.add_argument("-o", "--output", default="outputs/demo")
