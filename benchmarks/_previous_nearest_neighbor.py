"""The mutual nearest-neighbour matcher as it was before issue 21 (commit 830bff2), kept only as the
reference that `run_all.py` times in the same run ("today's" HPatches evaluation and matching).

Blocks of rows (256 MB budget), float32 similarities, torch.max both ways per block.
"""
from __future__ import annotations

import numpy as np
import torch


def mutual_nn_matches_previous(desc0, desc1, memory_budget: int = 256 << 20) -> np.ndarray:
    """Mutual nearest neighbours (M, 2) int64 of (N0, D), (N1, D) float32, ties to the lowest index."""
    d0 = torch.as_tensor(desc0).float()
    d1 = torch.as_tensor(desc1).float()
    n0, n1 = len(d0), len(d1)
    if n0 == 0 or n1 == 0:
        return np.zeros((0, 2), np.int64)
    block_rows = max(1, min(n0, memory_budget // (12 * n1)))
    with torch.inference_mode():
        row_idx = torch.zeros(n0, dtype=torch.long)
        col_idx = torch.zeros(n1, dtype=torch.long)
        col_best = torch.full((n1,), float("-inf"))
        for start in range(0, n0, block_rows):
            sim = d0[start:start + block_rows] @ d1.T
            row_idx[start:start + len(sim)] = sim.max(dim=1).indices
            b1, b1_idx = sim.max(dim=0)
            better = b1 > col_best
            col_idx = torch.where(better, b1_idx + start, col_idx)
            col_best = torch.where(better, b1, col_best)
        i = torch.arange(n0)
        keep = col_idx[row_idx] == i
        return torch.stack([i[keep], row_idx[keep]], 1).numpy().astype(np.int64)
