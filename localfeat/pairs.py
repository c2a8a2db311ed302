"""Image pairs to match: exhaustive, sequential (window k), or read from a text file.

Pairs files hold one pair per line. A line with a tab is split at tabs (so names may hold spaces:
`été/façade 1.jpg<TAB>été/日本 2.jpg`); otherwise at whitespace, as hloc's files are. Columns after the
second are ignored; lines starting with '#' are comments. `write_pairs` writes spaces unless a name
holds whitespace, then tabs, so that what it writes reads back the same here and in hloc when possible.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .io.atomic import write_text_atomic


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
    """Pairs from a text file (format in the module docstring), in file order."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise ValueError(f"{path}:{number}: expected 'name0 name1' (or name0<TAB>name1 for names with "
                             f"spaces), got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def write_pairs(path: str | os.PathLike, pairs: Sequence[tuple[str, str]]) -> None:
    """Write `pairs` as `read_pairs` reads them back (tab-separated when a name holds whitespace)."""
    lines = []
    for a, b in pairs:
        for name in (a, b):
            if "\t" in name or "\n" in name or "\r" in name or name != name.strip():
                raise ValueError(f"image name {name!r} holds a tab, a line break or leading/trailing "
                                 "whitespace, which no pairs file can keep; rename the image")
        sep = "\t" if any(ch.isspace() for ch in a + b) else " "
        lines.append(f"{a}{sep}{b}\n")
    write_text_atomic(path, "".join(lines))
