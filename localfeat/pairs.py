"""Image pairs to match: exhaustive, sequential (window k), or read from a text file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


def exhaustive_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair (names[i], names[j]), i < j."""
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def sequential_pairs(names: Sequence[str], window: int) -> list[tuple[str, str]]:
    """(names[i], names[j]) for i < j <= i + window, in the given order (e.g. video frames)."""
    if window < 1:
        raise ValueError(f"sequential window must be >= 1, got {window}")
    return [(names[i], names[j]) for i in range(len(names))
            for j in range(i + 1, min(len(names), i + window + 1))]


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Pairs from a text file: `name0 name1` per line (extra columns ignored, '#' comments)."""
    pairs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{path}:{number}: expected 'name0 name1', got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def write_pairs(path: str | os.PathLike, pairs: Sequence[tuple[str, str]]) -> None:
    Path(path).write_text("".join(f"{a} {b}\n" for a, b in pairs))
