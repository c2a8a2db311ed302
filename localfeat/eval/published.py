"""Published HPatches results stored in the D2-Net notebook's cache format, for comparison curves.

A cache file is a numpy ``.npy`` holding a pickled object array:
- D2-Net / R2D2 / DISK repositories: ``[i_err, v_err, [seq_type, n_feats, n_matches]]``;
- ALIKE's hseq/cache: ``[i_err, v_err, i_err_homo, v_err_homo, [seq_type, n_feats, n_matches]]``.
``i_err[t]`` / ``v_err[t]`` are SUMS over the illumination / viewpoint pairs of the per-pair
accuracy at t px; ``seq_type`` has one 'i'/'v' per pair, ``n_feats`` one count per image read,
``n_matches`` one count per pair. MMA_i(t) = i_err[t] / n_i_pairs, MMA_v(t) = v_err[t] / n_v_pairs,
MMA(t) = (i_err[t] + v_err[t]) / (n_i_pairs + n_v_pairs); without `seq_type` the D2-Net
constants 260 / 280 pairs are used.

SECURITY: reading these files needs pickle, which can run code. `load_published` only opens
the file it is given, which must be one the user named and trusts.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

D2NET_PAIRS = {"i": 52 * 5, "v": 56 * 5}


@dataclass
class PublishedResult:
    """MMA curves (and ALIKE's homography accuracy when present) of one published cache file."""

    label: str
    path: str
    thresholds: list
    mma_overall: list
    mma_illumination: list
    mma_viewpoint: list
    n_pairs: dict
    n_features: Optional[float] = None
    n_matches: Optional[float] = None
    homography_accuracy: Optional[dict] = None
    homography_accuracy_illumination: Optional[dict] = None
    homography_accuracy_viewpoint: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The same keys as a method of results.json, where they exist."""
        out = asdict(self)
        out.update({"homography_auc": None, "repeatability": None, "matching_score": None})
        return out


def _sums(d, where: str) -> dict:
    if not isinstance(d, dict) or not d:
        raise ValueError(f"{where}: expected a dict {{threshold: summed accuracy}}, got {type(d).__name__}")
    return {int(k): float(v) for k, v in d.items()}


def parse_label(item: str) -> tuple[Optional[str], Path]:
    """'LABEL=PATH' or 'PATH' -> (label or None, path)."""
    label, sep, path = item.partition("=")
    if sep and not Path(item).exists():
        return label.strip(), Path(path)
    return None, Path(item)


def load_published(item: str, label: Optional[str] = None) -> PublishedResult:
    """Read one D2-Net-format cache file named by the user ('PATH' or 'LABEL=PATH').

    The label defaults to the file name without extension. Raises FileNotFoundError when the file
    is absent and ValueError when it is not a D2-Net cache.
    """
    parsed_label, path = parse_label(str(item))
    label = label or parsed_label or path.stem
    if not path.is_file():
        raise FileNotFoundError(f"--compare-published {path}: no such file (give the path of a D2-Net "
                                "cache .npy, e.g. r2d2.npy from ALIKE's hseq/cache)")
    # Pickle is needed by the format; this file was named by the user (see the module docstring).
    data = np.load(path, allow_pickle=True)
    items = list(data) if isinstance(data, np.ndarray) and data.dtype == object else None
    if items is None or len(items) not in (2, 3, 4, 5):
        raise ValueError(f"{path}: not a D2-Net HPatches cache (expected [i_err, v_err, ...])")
    i_err, v_err = _sums(items[0], f"{path} i_err"), _sums(items[1], f"{path} v_err")
    homo = None
    if len(items) >= 4 and isinstance(items[2], dict):
        homo = (_sums(items[2], f"{path} i_err_homo"), _sums(items[3], f"{path} v_err_homo"))
    stats = items[-1] if not isinstance(items[-1], dict) else None
    n_pairs = dict(D2NET_PAIRS)
    n_features = n_matches = None
    if stats is not None and len(stats) >= 1:
        seq_type = np.asarray(stats[0])
        if seq_type.size:
            n_pairs = {"i": int(np.sum(seq_type == "i")), "v": int(np.sum(seq_type == "v"))}
        if len(stats) >= 2 and np.size(stats[1]):
            n_features = float(np.mean(stats[1]))
        if len(stats) >= 3 and np.size(stats[2]):
            n_matches = float(np.mean(stats[2]))
    else:
        logger.info("%s has no statistics; assuming the D2-Net pair counts %s", path, D2NET_PAIRS)
    thresholds = sorted(set(i_err) & set(v_err))
    ni, nv = n_pairs["i"], n_pairs["v"]

    def curve(num, den):
        return [num[t] / den for t in thresholds] if den else None

    overall = [(i_err[t] + v_err[t]) / (ni + nv) for t in thresholds]
    result = PublishedResult(
        label=label, path=str(path), thresholds=thresholds, mma_overall=overall,
        mma_illumination=curve(i_err, ni), mma_viewpoint=curve(v_err, nv),
        n_pairs={"overall": ni + nv, "illumination": ni, "viewpoint": nv},
        n_features=n_features, n_matches=n_matches)
    if homo is not None:
        hi, hv = homo
        ts = sorted(set(hi) & set(hv))
        result.homography_accuracy = {str(t): (hi[t] + hv[t]) / (ni + nv) for t in ts}
        result.homography_accuracy_illumination = {str(t): hi[t] / ni for t in ts} if ni else None
        result.homography_accuracy_viewpoint = {str(t): hv[t] / nv for t in ts} if nv else None
    return result
