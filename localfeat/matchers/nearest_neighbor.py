"""Nearest-neighbour matching of L2-normalised descriptors: one blockwise GEMM pass, exact results.

How (one sweep over blocks of the similarity matrix, each block computed by one GEMM and left in cache):
1. The GEMM (float32, or bfloat16 with `precision="bf16"`) is only a filter: a bound `eps` on its error
   is derived from the descriptors (their norms and, for bf16, their rounding errors), so that
   |filter(i, j) - exact(i, j)| <= eps for every pair.
2. In each block, per row and per column, the best filter value and (a lower bound of) the second best
   are updated, both ways in the same pass. Only elements whose filter value is within the error bound
   of the best two can be among the exact best two; they are few and are re-scored exactly.
   On CPU the whole sweep is C (`nn_kernel.c`, built on first use by `localfeat.native`, run on torch's
   OpenMP threads: `_sweep_native`): each thread computes small tiles with torch's MKL sgemm (one
   single-threaded call per tile) and searches each tile while it is in that core's cache. Without a C
   compiler or MKL, with LOCALFEAT_NATIVE=0 or on a GPU, torch ops do it (`_sweep`: one GEMM per block,
   maxima of chunks of `chunk` columns or rows, vectorised `amax`). Both give the same results to the
   last bit.
3. The exact score of a pair is the float64 dot product of the float32 descriptors summed in a fixed
   pairwise order, so it does not depend on block sizes, threads, the GEMM's precision or the CPU:
   ties are exact ties and go to the lowest index, and the fp32 and bf16 passes give identical matches.

Only a block of `block_rows` x `block_cols` filter values exists at a time (sized from the CPU caches; in
the C sweep, one tile per thread), so 30,000 x 30,000 matching needs a few MB instead of 3.6 GB. Many
near-ties (descriptors within eps of each other, e.g. thousands of copies of one vector) stay exact but
cost more: every candidate is re-scored.
"""
from __future__ import annotations

import ctypes
import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch

from ..hardware import cpu_info
from ..native import blas_symbol, load_kernel, native_enabled
from ..types import Features, Matches
from .base import Matcher

NEG_INF = float("-inf")
PRECISIONS = ("fp32", "bf16", "auto")
_BF16_UNIT_ROUNDOFF = 2.0 ** -8   # bfloat16: 8 significant bits
_FP32_UNIT_ROUNDOFF = 2.0 ** -24
_EXACT_PAIRS_PER_STEP = 1 << 12   # pairs re-scored at once: 4k x D float64 temporaries
_CHUNK = 32                       # granularity of the candidate search (rows / columns per chunk max)
_MIN_ROWS_PER_THREAD = 256        # below this, splitting the rows between threads does not pay
_FLUSH_PAIRS = 1 << 20            # candidates kept before an exact re-scoring (memory bound: ~40 B each)
_NATIVE_CAPACITY = 1 << 14        # candidates per direction and thread the C kernel keeps before re-scoring


def _distance(similarity: np.ndarray) -> np.ndarray:
    """Euclidean distance of unit vectors from their dot product: sqrt(2 - 2 s) (float64; -inf -> inf)."""
    return np.sqrt(np.maximum(2.0 - 2.0 * similarity, 0.0))


def _passes(best: np.ndarray, second: np.ndarray, ratio: Optional[float],
            max_distance: Optional[float]) -> np.ndarray:
    """Which best neighbours (exact similarities, float64) pass the ratio test and max_distance. No
    second neighbour (similarity -inf, distance inf): the ratio test cannot reject. numpy: a few
    operations on N values, cheaper than torch's dispatch."""
    keep = np.ones(len(best), dtype=bool)
    if ratio is not None:
        keep &= _distance(best) < ratio * _distance(second)
    if max_distance is not None:
        keep &= _distance(best) <= max_distance
    return keep


def resolve_precision(precision: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for the filter GEMM; 'auto' = bf16 on CUDA with bf16 and on CPUs with native bf16
    matrix instructions (AVX-512 BF16, AMX), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"nearest_neighbor: precision={precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_info().has_bf16 else "fp32"


def choose_blocks(n0: int, n1: int, dim: int, chunk: int, threads: Optional[int] = None) -> tuple[int, int]:
    """(block_rows, block_cols) of the similarity blocks, from the CPU's caches.

    A block of columns of desc1 (block_cols x dim float32) fills half of one core's L2, so the GEMM
    reuses it from cache; a similarity block (block_rows x block_cols float32) fits in the share of the
    L3 of each of the `threads` threads at work (half of L3 / threads), so the pass after the GEMM reads
    it from cache. Large blocks keep the GEMM efficient and the fixed cost per block (Python dispatch,
    thread synchronisation) small (measured at 2k and 8k descriptors on a 2-core EPYC: blocks of
    256 rows cost up to 1.5x more than 1024-2048 rows). Both are multiples of `chunk` (the granularity
    of the torch path's candidate search) and no larger than the inputs need.
    """
    info = cpu_info()
    threads = threads or torch.get_num_threads()
    cols = max(chunk, min(4096, info.l2 // (8 * dim)) // chunk * chunk)
    cols = min(cols, -(-n1 // chunk) * chunk)
    rows = max(chunk, (info.l3 // (2 * threads) // (4 * cols)) // chunk * chunk)
    rows = min(rows, -(-n0 // chunk) * chunk)
    return rows, cols


def choose_tiles(n0: int, n1: int, dim: int, threads: int) -> tuple[int, int]:
    """(tile_rows, tile_cols) of the C sweep's tiles, from the CPU's L2 (per core): a block of tile_cols
    columns of desc1 fills half of it, so the GEMM reuses it from cache while the rows go by, and a tile
    of similarities fills it. (Measured at 2k descriptors, 128-D, on a 2-core EPYC with 1 MB of L2: 256 x
    1024 tiles take 0.93-0.96x the time of 64 x 1024 ones, and 32-row tiles 1.1x: fewer, larger GEMM
    calls.) tile_rows is a multiple of 4 (the pass sweeps 4 rows at once); neither is larger than needed."""
    l2 = cpu_info().l2
    cols = max(64, min(4096, l2 // (8 * dim)) // 16 * 16)
    rows = max(4, l2 // (4 * cols) // 4 * 4)
    per_thread = -(-n0 // threads)
    return min(rows, -(-per_thread // 4) * 4), min(cols, n1)


def _max_row_norm(x: torch.Tensor) -> float:
    """max_i ||x_i|| of a float32 (N, D) tensor, rounded up by a relative (D + 1) 2^-23 (twice the bound
    on the rounding of a float32 sum of D squares). On CPU in one single-threaded C pass (or numpy) where
    torch's parallel reduction would first wake its thread pool (a third of a millisecond after an idle
    spell)."""
    if len(x) == 0:
        return 0.0
    lib = _native_kernel() if x.device.type == "cpu" else None
    if lib is not None:
        x = x.contiguous()
        squares = lib.lf_max_sq_norm(x.data_ptr(), x.shape[0], x.shape[1])
    elif x.device.type == "cpu":
        squares = float(np.einsum("ij,ij->i", x.numpy(), x.numpy()).max())
    else:
        squares = float((x * x).sum(1).max())
    return math.sqrt(squares * (1 + (x.shape[1] + 1) * 2.0 ** -23))


def filter_error_bound(a: torch.Tensor, b: torch.Tensor, a_low: torch.Tensor, b_low: torch.Tensor) -> float:
    """Bound on |GEMM(a_low, b_low)[i, j] - a_i . b_j| for every pair (rigorous, worst case).

    a (N0, D), b (N1, D) float32; a_low, b_low the GEMM's inputs (float32 or bfloat16). The bound adds
    the inputs' rounding (known exactly: ||a_low_i - a_i|| per row), float32 accumulation over D terms
    (gamma_D ||a|| ||b||), and the rounding of a bf16 output. When torch may run float32 matmuls in
    lower precision (TF32 on CUDA, set_float32_matmul_precision != 'highest'), float32 inputs are
    treated as if rounded to bf16 inside the GEMM.
    """
    dim = a.shape[1]
    na, nb = _max_row_norm(a), _max_row_norm(b)
    gamma = dim * _FP32_UNIT_ROUNDOFF / (1 - dim * _FP32_UNIT_ROUNDOFF)
    if a_low.dtype == torch.float32:
        reduced = torch.get_float32_matmul_precision() != "highest" or (
            a.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
        u = _BF16_UNIT_ROUNDOFF if reduced else 0.0
        ea, eb = u * na, u * nb
        out = 0.0
    else:
        ea, eb = _max_row_norm(a_low.float() - a), _max_row_norm(b_low.float() - b)
        out = _BF16_UNIT_ROUNDOFF
    la, lb = na + ea, nb + eb
    bound = ea * nb + na * eb + ea * eb + gamma * la * lb + out * la * lb * (1 + gamma)
    # Margins: the float64 re-scoring's own error, underflow in the GEMM (flushed denormals), and the
    # float32 rounding of the thresholds "filter value - 2 eps" (half an ulp of a value <= la * lb).
    return 1.0625 * bound + 4 * dim * (2.0 ** -53) * la * lb + dim * 2.0 ** -120 + 2.0 ** -22 * la * lb


def exact_similarity(a64: torch.Tensor, b64: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Exact similarities a[i] . b[j] (P,) float64 of float32 descriptors given as float64 a64 (N0, D),
    b64 (N1, D) (the float32 values converted, so every product is exact).

    The D products are summed by halving (pairwise, in an order set by D alone), so the value of a
    pair never depends on how many pairs are scored together, on threads or on the CPU, and equal
    descriptors give equal scores (exact ties).
    """
    out = torch.empty(len(i), dtype=torch.float64, device=a64.device)
    dim = a64.shape[1]
    width = 1 << max(0, (dim - 1).bit_length())
    step = _EXACT_PAIRS_PER_STEP
    for s in range(0, len(i), step):
        x = a64.index_select(0, i[s:s + step]) * b64.index_select(0, j[s:s + step])
        if width != dim:
            x = torch.nn.functional.pad(x, (0, width - dim))
        while x.shape[1] > 1:
            half = x.shape[1] // 2
            x = x[:, :half] + x[:, half:]
        out[s:s + len(x)] = x[:, 0]
    return out


def _chunk_max(sim: torch.Tensor, chunk: int, dim: int) -> torch.Tensor:
    """Maxima over chunks of a contiguous block (h, w), both ways as vertical (vectorised) reductions.

    dim=0: chunks of `chunk` consecutive rows -> (ceil(h/chunk), w). dim=1: chunk c holds the `chunk`
    columns c, c + s, c + 2s, ... with s = w // chunk -> (h, s), plus one chunk for the last w % chunk
    columns when there are any (see `_chunk_members`).
    """
    h, w = sim.shape
    length = sim.shape[dim]
    full = length // chunk
    if dim == 0:
        parts = [sim[:full * chunk].view(full, chunk, w).amax(1)] if full else []
    else:
        parts = [sim[:, :full * chunk].view(h, chunk, full).amax(1)] if full else []
    if full * chunk < length:
        parts.append(sim.narrow(dim, full * chunk, length - full * chunk).amax(dim, keepdim=True))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _chunk_members(c: torch.Tensor, chunk: int, length: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (P, chunk) of the members of chunks `c` (P,) of `_chunk_max` along a side of `length`,
    clamped into range, and the mask of real members (the tail chunk is shorter)."""
    full = length // chunk
    k = torch.arange(chunk, device=c.device)
    if dim == 0:
        pos = c[:, None] * chunk + k
    else:
        pos = torch.where(c[:, None] < full, c[:, None] + k * full, full * chunk + k)
    if full * chunk == length:
        return pos, None
    inside = pos < length
    return pos.clamp_(max=length - 1), inside


def _update_bounds(best: torch.Tensor, second: torch.Tensor, cmax: torch.Tensor, dim: int,
                   need_second: bool) -> None:
    """Running filter-domain best (exact max of the filter values seen) and a lower bound of the second
    best, in place, from a block's chunk maxima `cmax`: the maxima of two different chunks are two
    different elements, so the second largest chunk maximum is <= the second largest element."""
    g1 = cmax.amax(dim)
    if need_second:
        if cmax.shape[dim] >= 2:
            g2 = torch.where(cmax == g1.unsqueeze(dim), NEG_INF, cmax).amax(dim)
        else:
            g2 = torch.full_like(g1, NEG_INF)
        second.copy_(torch.maximum(torch.minimum(best, g1), torch.maximum(second, g2)))
    torch.maximum(best, g1, out=best)


def _candidates(sim: torch.Tensor, cmax: torch.Tensor, thr: torch.Tensor, chunk: int, dim: int):
    """Elements of a block (h, w) >= the threshold of their row (dim=1, thr (h,)) or column (dim=0,
    thr (w,)), found through the chunk maxima `cmax` (only chunks whose maximum passes are read).
    Returns (rows, cols, values) in the block."""
    if dim == 1:
        r, c = torch.nonzero(cmax >= thr[:, None], as_tuple=True)
        pos, inside = _chunk_members(c, chunk, sim.shape[1], 1)
        vals = sim[r[:, None], pos]
        keep = vals >= thr[r][:, None]
        p, k = torch.nonzero(keep if inside is None else keep & inside, as_tuple=True)
        return r[p], pos[p, k], vals[p, k]
    c, col = torch.nonzero(cmax >= thr[None, :], as_tuple=True)
    pos, inside = _chunk_members(c, chunk, sim.shape[0], 0)
    vals = sim[pos, col[:, None]]
    keep = vals >= thr[col][:, None]
    p, k = torch.nonzero(keep if inside is None else keep & inside, as_tuple=True)
    return pos[p, k], col[p], vals[p, k]


def _merge_exact(best, best_idx, second, key, other, value) -> None:
    """Merge candidates (key, other, exact value) into the running exact best two per key, in place.

    Candidates merged earlier always have lower `other` indices (they come from earlier blocks), so a
    running best is replaced only by a strictly larger value; among the new candidates ties take the
    lowest `other`. `second` is the second largest value (equal to `best` when the best is tied)."""
    if len(key) == 0:
        return
    n, dev = len(best), value.device
    b1 = torch.full((n,), NEG_INF, dtype=value.dtype, device=dev).scatter_reduce_(0, key, value, "amax")
    at_best = value == b1[key]
    b1_idx = torch.full((n,), torch.iinfo(torch.long).max, dtype=torch.long, device=dev).scatter_reduce_(
        0, key[at_best], other[at_best], "amin")
    ties = torch.zeros(n, dtype=torch.long, device=dev).index_add_(0, key[at_best], torch.ones_like(
        key[at_best]))
    rest = torch.full((n,), NEG_INF, dtype=value.dtype, device=dev).scatter_reduce_(
        0, key[~at_best], value[~at_best], "amax")
    b2 = torch.where(ties >= 2, b1, rest)
    better = b1 > best
    second.copy_(torch.where(better, torch.maximum(best, b2), torch.maximum(second, b1)))
    best_idx.copy_(torch.where(better, b1_idx, best_idx))
    torch.maximum(best, b1, out=best)


class _BestTwo:
    """Exact best two per key (float64 values, index of the best), filled by `_merge_exact`."""

    def __init__(self, n: int, device):
        self.best = torch.full((n,), NEG_INF, dtype=torch.float64, device=device)
        self.second = torch.full((n,), NEG_INF, dtype=torch.float64, device=device)
        self.idx = torch.zeros(n, dtype=torch.long, device=device)

    @classmethod
    def of(cls, best: torch.Tensor, second: torch.Tensor, idx: torch.Tensor) -> "_BestTwo":
        """The best two given as tensors (no copy)."""
        out = cls.__new__(cls)
        out.best, out.second, out.idx = best, second, idx
        return out

    def merge_later(self, other: "_BestTwo") -> None:
        """Merge the best two of a later (higher-index) part into these: ties keep ours."""
        better = other.best > self.best
        self.second = torch.where(better, torch.maximum(self.best, other.second),
                                  torch.maximum(self.second, other.best))
        self.idx = torch.where(better, other.idx, self.idx)
        self.best = torch.maximum(self.best, other.best)


def _sweep(a, b, a_low, b_low, a64, b64, eps2: float, need_second: bool, block_rows: int,
           block_cols: int, chunk: int):
    """The blockwise pass over a (n0, D) x b (n1, D): returns (rows, cols) `_BestTwo` (cols over the
    rows of `a` only)."""
    n0, n1, dev = len(a), len(b), a.device
    rows_out, cols_out = _BestTwo(n0, dev), _BestTwo(n1, dev)
    # Filter domain: the best value seen and a lower bound of the second best, per row and per column.
    f_row1, f_row2 = torch.full((n0,), NEG_INF, device=dev), torch.full((n0,), NEG_INF, device=dev)
    f_col1, f_col2 = torch.full((n1,), NEG_INF, device=dev), torch.full((n1,), NEG_INF, device=dev)
    row_bound, col_bound = (f_row2, f_col2) if need_second else (f_row1, f_col1)
    pending: list = []
    pending_pairs = 0

    def flush():
        # Exact re-scoring of the candidates gathered so far that still pass the (now tighter)
        # thresholds, merged into the exact best two.
        nonlocal pending, pending_pairs
        if not pending:
            return
        for direction, bound, out in ((0, row_bound, rows_out), (1, col_bound, cols_out)):
            i = torch.cat([p[0] for p in pending if p[3] == direction])
            j = torch.cat([p[1] for p in pending if p[3] == direction])
            v = torch.cat([p[2] for p in pending if p[3] == direction])
            keep = v >= bound[i if direction == 0 else j] - eps2
            i, j = i[keep], j[keep]
            value = exact_similarity(a64, b64, i, j)
            key, other = (i, j) if direction == 0 else (j, i)
            _merge_exact(out.best, out.idx, out.second, key, other, value)
        pending, pending_pairs = [], 0

    # One buffer for the similarity block (a new tensor per block would page-fault its memory each time).
    buffer = torch.empty(min(block_rows, n0) * min(block_cols, n1), device=dev)
    low_buffer = torch.empty(len(buffer), dtype=a_low.dtype, device=dev)
    for cs in range(0, n1, block_cols):
        b_block = b_low[cs:cs + block_cols]
        cols = slice(cs, cs + len(b_block))
        for rs in range(0, n0, block_rows):
            a_block = a_low[rs:rs + block_rows]
            rows = slice(rs, rs + len(a_block))
            sim = buffer[:len(a_block) * len(b_block)].view(len(a_block), len(b_block))
            if a_low.dtype == torch.float32:
                torch.mm(a_block, b_block.T, out=sim)
            else:
                low = low_buffer[:sim.numel()].view(sim.shape)
                sim.copy_(torch.mm(a_block, b_block.T, out=low))
            rmax, cmax = _chunk_max(sim, chunk, 1), _chunk_max(sim, chunk, 0)
            _update_bounds(f_row1[rows], f_row2[rows], rmax, 1, need_second)
            _update_bounds(f_col1[cols], f_col2[cols], cmax, 0, need_second)
            # Only elements within 2 eps of the best (or of the bound of the second best) can be among
            # the exact best two (the rounding of the thresholds is covered by eps, see filter_error_bound).
            i, j, v = _candidates(sim, rmax, row_bound[rows] - eps2, chunk, 1)
            pending.append((i + rs, j + cs, v, 0))
            i2, j2, v2 = _candidates(sim, cmax, col_bound[cols] - eps2, chunk, 0)
            pending.append((i2 + rs, j2 + cs, v2, 1))
            pending_pairs += len(i) + len(i2)
            if pending_pairs > _FLUSH_PAIRS:
                flush()
    flush()
    return rows_out, cols_out


class _NativeState(ctypes.Structure):
    """Mirror of `nn_state` in nn_kernel.c (field order and types must match; checked at load)."""

    _fields_ = ([("a", ctypes.c_void_p), ("b", ctypes.c_void_p)]
                + [(n, ctypes.c_int64) for n in ("n0", "n1", "dim", "width", "need_second")]
                + [("eps2", ctypes.c_float)]
                + [(n, ctypes.c_void_p) for n in ("row1", "row2", "col1", "col2", "col1_all", "col2_all",
                                                  "row_best", "row_second", "col_best", "col_second", "row_idx",
                                                  "col_idx", "row_cand", "col_cand", "row_cand_v", "col_cand_v")]
                + [(n, ctypes.c_int64) for n in ("capacity", "n_row_cand", "n_col_cand")]
                + [(n, ctypes.c_void_p) for n in ("sums", "tile", "col_thr", "col_block", "col_thr_all")]
                + [(n, ctypes.c_int64) for n in ("tile_rows", "tile_cols")])


def _native_kernel() -> Optional[ctypes.CDLL]:
    """nn_kernel.c compiled (localfeat.native), or None (no compiler, or LOCALFEAT_NATIVE=0): then
    `_sweep` (torch ops) does the same work."""
    return _load_native_kernel() if native_enabled() else None


@functools.lru_cache(maxsize=1)
def _load_native_kernel() -> Optional[ctypes.CDLL]:
    lib = load_kernel("matchers/nn_kernel.c")
    return None if lib is None else configure_kernel(lib)


def configure_kernel(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the argument and return types of nn_kernel.c's functions on a loaded build of it; check
    that its nn_state matches `_NativeState`."""
    lib.lf_nn_state_size.restype = ctypes.c_int64
    if lib.lf_nn_state_size() != ctypes.sizeof(_NativeState):
        raise RuntimeError("nn_kernel.c's nn_state and _NativeState differ; fix the mirror")
    states = ctypes.POINTER(_NativeState)
    lib.lf_nn_sweep.argtypes = [states, ctypes.c_int64] + [ctypes.c_void_p] * 3
    lib.lf_nn_sweep.restype = ctypes.c_int64
    lib.lf_nn_block_bf16.argtypes = [states, ctypes.c_int64, ctypes.c_void_p] + [ctypes.c_int64] * 4
    lib.lf_nn_block_bf16.restype = None
    lib.lf_nn_init.argtypes, lib.lf_nn_init.restype = [states, ctypes.c_int64, ctypes.c_int64], None
    lib.lf_nn_finish.argtypes, lib.lf_nn_finish.restype = [states, ctypes.c_int64], None
    lib.lf_nn_openmp.restype = ctypes.c_int64
    lib.lf_max_sq_norm.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    lib.lf_max_sq_norm.restype = ctypes.c_double
    return lib


_PACKED_GEMM = ("cblas_sgemm_pack_get_size", "cblas_sgemm_pack", "cblas_sgemm_compute")   # MKL's


def use_native() -> bool:
    """True when CPU matching runs the C kernel (`_sweep_native`) instead of torch ops (`_sweep`): a C
    compiler and torch's MKL (its packed sgemm)."""
    return _native_kernel() is not None and all(blas_symbol(name) is not None for name in _PACKED_GEMM)


def _sweep_native(lib, a, b, a_low, b_low, eps2: float, need_second: bool, tile_rows: int, tile_cols: int,
                  threads: int, block_rows: int):
    """`_sweep` by the C kernel (CPU tensors, nn_kernel.c), on `threads` of torch's OpenMP threads.

    float32 filter: one C call (`lf_nn_sweep`). Each thread takes a share of the rows and sweeps it in
    tiles of tile_rows x tile_cols: it packs a block of tile_cols columns once (MKL's packed sgemm), then
    a single-threaded GEMM call per tile writes the tile into this thread's buffer, still in this core's
    cache when the passes over it keep the best two per row and column and collect the candidates. No
    Python and no synchronisation between tiles.
    bfloat16 filter: torch's bf16 GEMM (oneDNN: AVX-512 BF16 or AMX where the CPU has them; MKL's bf16
    GEMM ran 3x slower than its sgemm on an AMD EPYC) writes blocks of block_rows x tile_cols, and one C
    call per block (`lf_nn_block_bf16`) reads the bf16 values: the threads share the block's rows and merge
    its columns' statistics between two barriers (the bf16 error bound is wide: thresholds from all rows
    push fewer candidates than each thread's own: with the ratio test at 2k, 0.77-0.82 of `a @ b.T` against
    0.92-0.94 for per-thread columns on float32 copies of the tiles).
    Then `lf_nn_finish` re-scores the last candidates (exactly, in C) and merges the threads' results.
    Returns (rows, cols) `_BestTwo`, the same values as `_sweep`."""
    n0, n1, dim = len(a), len(b), a.shape[1]
    threads = max(1, min(threads, n0)) if lib.lf_nn_openmp() else 1
    tile_rows, tile_cols = min(tile_rows, n0), min(tile_cols, n1)
    cap = _NATIVE_CAPACITY
    width = 1 << max(0, (dim - 1).bit_length())
    # Three workspaces (few Python objects), carved below. float32: row statistics (2 n0), the merged
    # column statistics (2 n1) and a bf16 block's column thresholds (tile_cols); per thread its column
    # statistics (2 n1), candidate values (2 cap), a tile, its columns' thresholds (tile_cols) and its best
    # two of a bf16 block's columns (2 tile_cols); float64: exact best twos per thread (2 n0 + 2 n1) and
    # pairwise sums (width); int64: per thread indices of the best (n0 + n1) and candidates (4 cap).
    shared = 2 * n0 + 2 * n1 + tile_cols
    f32_each = 2 * n1 + 2 * cap + tile_rows * tile_cols + 3 * tile_cols + 16
    f64_each, i64_each = 2 * n0 + 2 * n1 + width, n0 + n1 + 4 * cap
    f32 = torch.empty(shared + threads * f32_each)
    f64 = torch.empty(threads * f64_each, dtype=torch.float64)
    i64 = torch.empty(threads * i64_each, dtype=torch.long)
    base = f32.data_ptr()
    rows1, rows2, cols1_all, cols2_all = base, base + 4 * n0, base + 8 * n0, base + 8 * n0 + 4 * n1
    col_thr_all = base + 8 * (n0 + n1)
    states = (_NativeState * threads)()
    for t in range(threads):
        f = base + 4 * (shared + t * f32_each)
        tile = (f + 4 * (2 * n1 + 2 * cap) + 63) // 64 * 64          # a tile starts on a cache line
        col_thr = tile + 4 * tile_rows * tile_cols
        d = f64.data_ptr() + 8 * t * f64_each
        i = i64.data_ptr() + 8 * t * i64_each
        states[t] = _NativeState(
            a.data_ptr(), b.data_ptr(), n0, n1, dim, width, int(need_second), eps2,
            rows1, rows2, f, f + 4 * n1, cols1_all, cols2_all,
            d, d + 8 * n0, d + 16 * n0, d + 16 * n0 + 8 * n1, i, i + 8 * n0,
            i + 8 * (n0 + n1), i + 8 * (n0 + n1 + 2 * cap), f + 8 * n1, f + 8 * n1 + 4 * cap,
            cap, 0, 0, d + 16 * (n0 + n1), tile, col_thr, col_thr + 4 * tile_cols, col_thr_all,
            tile_rows, tile_cols)
    lib.lf_nn_init(states, threads, int(a_low.dtype != torch.float32))
    if a_low.dtype == torch.float32:
        if lib.lf_nn_sweep(states, threads, *(blas_symbol(name) for name in _PACKED_GEMM)) != 0:
            raise MemoryError("nearest_neighbor: no memory for the packed GEMM blocks")
    else:
        buffer = torch.empty(min(block_rows, n0) * tile_cols, dtype=a_low.dtype)
        for cs in range(0, n1, tile_cols):
            b_block = b_low[cs:cs + tile_cols]
            for rs in range(0, n0, block_rows):
                a_block = a_low[rs:rs + block_rows]
                sim = buffer[:len(a_block) * len(b_block)].view(len(a_block), len(b_block))
                torch.mm(a_block, b_block.T, out=sim)
                lib.lf_nn_block_bf16(states, threads, sim.data_ptr(), len(a_block), len(b_block), rs, cs)
    lib.lf_nn_finish(states, threads)
    return (_BestTwo.of(f64[:n0], f64[n0:2 * n0], i64[:n0]),
            _BestTwo.of(f64[2 * n0:2 * n0 + n1], f64[2 * n0 + n1:2 * (n0 + n1)], i64[n0:n0 + n1]))


@torch.inference_mode()
def best_two_both_ways(desc0: torch.Tensor, desc1: torch.Tensor, need_second: bool = True,
                       precision: str = "fp32", block_rows: Optional[int] = None,
                       block_cols: Optional[int] = None, chunk: int = _CHUNK,
                       threads: Optional[int] = None, memory_budget: Optional[int] = None):
    """Exact best and second-best similarities both ways, in one blockwise pass.

    desc0 (N0, D), desc1 (N1, D) float32 on one device. Returns (row_idx (N0,) int64, row_best,
    row_second (N0,) float64, col_idx (N1,), col_best, col_second (N1,)): for each row of desc0 its
    most similar row of desc1 (ties: lowest index) and the best and second-best similarities (-inf
    when there is none, and always when `need_second` is False); the same for each row of desc1.
    Similarities are exact (`exact_similarity`) whatever `precision` the filter GEMM runs in.

    block_rows, block_cols (None: from the caches): the similarity blocks of the torch path; in the C
    sweep, the tiles (fp32), or torch's bf16 blocks (their width is the tiles' width).
    `threads` (default: torch's thread count): with the C sweep, the OpenMP threads that share the rows;
    with torch ops on CPU, the parts of desc0's rows swept by their own thread with single-threaded
    torch ops, the column results merged in row order (one synchronisation per call instead of one per
    small op, which costs dearly on a loaded machine).
    """
    a, b = desc0.float().contiguous(), desc1.float().contiguous()
    n0, n1 = len(a), len(b)
    dev = a.device
    if n0 == 0 or n1 == 0:
        rows, cols = _BestTwo(n0, dev), _BestTwo(n1, dev)
        return rows.idx, rows.best, rows.second, cols.idx, cols.best, cols.second
    precision = resolve_precision(precision, dev)
    a_low, b_low = (a, b) if precision == "fp32" else (a.bfloat16(), b.bfloat16())
    eps2 = 2 * filter_error_bound(a, b, a_low, b_low)
    threads = threads or torch.get_num_threads()
    native = _native_kernel() if dev.type == "cpu" and use_native() else None
    # The torch path on CPU sweeps `parts` row ranges in parallel; the C pass and GPUs sweep all rows at once.
    parts = 1 if native is not None or dev.type != "cpu" else max(1, min(threads, n0 // _MIN_ROWS_PER_THREAD))
    if native is not None:
        tile_rows, tile_cols = choose_tiles(n0, n1, a.shape[1], threads)
        if precision == "bf16":   # torch's GEMM writes blocks (block_rows: ~ the L3) that the C passes read
            auto_rows, auto_cols = choose_blocks(n0, n1, a.shape[1], chunk, threads=threads)
            tile_cols, block_rows = block_cols or auto_cols, block_rows or auto_rows
            tile_rows = 4      # no float32 tile
        else:
            tile_rows, tile_cols = block_rows or tile_rows, block_cols or tile_cols
        rows, cols = _sweep_native(native, a, b, a_low, b_low, eps2, need_second, tile_rows, tile_cols, threads,
                                   block_rows or 0)
    else:
        if block_rows is None or block_cols is None:
            auto_rows, auto_cols = choose_blocks(-(-n0 // parts), n1, a.shape[1], chunk, threads=threads)
            block_cols = block_cols or auto_cols
            block_rows = block_rows or max(1, min(auto_rows, (memory_budget or auto_rows * block_cols * 4)
                                                  // (4 * block_cols)))
        rows, cols = _sweep_parts(a, b, a_low, b_low, eps2, need_second, block_rows, block_cols, chunk, parts)
    if not need_second:
        rows.second.fill_(NEG_INF)
        cols.second.fill_(NEG_INF)
    return rows.idx, rows.best, rows.second, cols.idx, cols.best, cols.second


def _sweep_parts(a, b, a_low, b_low, eps2: float, need_second: bool, block_rows: int, block_cols: int,
                 chunk: int, parts: int):
    """`_sweep` over `parts` row ranges of `a`, each by its own thread with single-threaded torch ops, the
    column results merged in row order. Returns (rows, cols) `_BestTwo` of all rows."""
    a64, b64 = a.double(), b.double()
    n0 = len(a)
    bounds = [n0 * k // parts for k in range(parts + 1)]

    def sweep(k: int):
        lo, hi = bounds[k], bounds[k + 1]
        if parts > 1:
            torch.set_num_threads(1)  # this worker thread only (OpenMP's setting is per thread)
        with torch.inference_mode():
            rows, cols = _sweep(a[lo:hi], b, a_low[lo:hi], b_low, a64[lo:hi], b64, eps2, need_second,
                                block_rows, block_cols, chunk)
            cols.idx += lo  # row indices of desc0, not of this part
        return rows, cols

    if parts == 1:
        return sweep(0)
    caller_threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(parts) as pool:
            results = list(pool.map(sweep, range(parts)))
    finally:
        torch.set_num_threads(caller_threads)  # the default that new threads inherit
    cols = results[0][1]
    for _, later in results[1:]:
        cols.merge_later(later)
    rows = _BestTwo.of(torch.cat([r.best for r, _ in results]), torch.cat([r.second for r, _ in results]),
                       torch.cat([r.idx for r, _ in results]))
    return rows, cols


def nearest_neighbour_stats(desc0: torch.Tensor, desc1: torch.Tensor, block_rows: Optional[int] = None,
                            need_second: bool = True, precision: str = "fp32"):
    """Best and second-best similarities in both directions (see `best_two_both_ways`).

    desc0 (N0, D), desc1 (N1, D). Returns (row_idx, row_best, row_second, col_idx, col_best,
    col_second): for each row of desc0 its most similar row of desc1 (ties: lowest index), and
    for each row of desc1 its most similar row of desc0 (ties: lowest index); similarities are
    exact float64. The second-best values are -inf when `need_second` is False.
    """
    return best_two_both_ways(desc0, desc1, need_second, precision=precision, block_rows=block_rows)


def match_nearest_neighbours(desc0, desc1, mutual: bool = True, ratio: Optional[float] = None,
                             max_distance: Optional[float] = None, block_rows: Optional[int] = None,
                             memory_budget: int = 256 << 20, precision: str = "fp32",
                             block_cols: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Match descriptors (N0, D) and (N1, D) (numpy or torch, L2-normalised; used as float32).

    A row i of desc0 matches j = its nearest neighbour in desc1 if it passes the ratio test
    (d1 < ratio * d2, Euclidean distances) and max_distance (d1 <= max_distance); with
    `mutual`, j's nearest neighbour in desc0, under the same tests, must be i. Ties go to the
    lowest index. Similarities and distances are exact (float64 of the float32 descriptors), so
    the result does not depend on `precision` ('fp32', 'bf16' or 'auto': the filter GEMM's
    precision, a matter of speed only), on the block sizes (None: from the CPU caches, capped
    at `memory_budget` bytes of similarities per thread) or on the machine.
    Returns indices int64 (M, 2) sorted by i, and scores float32 (M,) = similarity.
    """
    d0 = torch.as_tensor(desc0).float()
    d1 = torch.as_tensor(desc1).float().to(d0.device)
    n0, n1 = len(d0), len(d1)
    if n0 == 0 or n1 == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    if d0.shape[1] != d1.shape[1]:
        raise ValueError(f"match_nearest_neighbours: descriptor dimensions differ ({d0.shape[1]} vs "
                         f"{d1.shape[1]})")
    stats = best_two_both_ways(d0, d1, need_second=ratio is not None, precision=precision,
                               block_rows=block_rows, block_cols=block_cols, memory_budget=memory_budget)
    row_idx, row_best, row_second, col_idx, col_best, col_second = (x.cpu().numpy() for x in stats)
    keep = _passes(row_best, row_second, ratio, max_distance)
    i = np.arange(n0)
    if mutual:
        col_keep = _passes(col_best, col_second, ratio, max_distance)
        keep &= col_keep[row_idx] & (col_idx[row_idx] == i)
    indices = np.stack([i[keep], row_idx[keep]], 1).astype(np.int64)
    return indices, row_best[keep].astype(np.float32)


class NearestNeighbor(Matcher):
    """Nearest-neighbour matcher on L2-normalised float descriptors.

    Config: mutual (bool, default True), ratio (Lowe's ratio test on distances, None = off),
    max_distance (Euclidean, None = off), block_rows (None = chosen from the CPU caches),
    precision ('fp32', 'bf16' or 'auto': the first pass's GEMM; the matches are identical, see
    `match_nearest_neighbours`). Scores are the descriptor similarities (dot products).
    """

    name = "nearest_neighbor"
    default_conf = {"mutual": True, "ratio": None, "max_distance": None, "block_rows": None,
                    "precision": "fp32"}

    def __init__(self, **conf):
        super().__init__(**conf)
        self.check_choice("precision", PRECISIONS)
        self.check_count("block_rows")
        # NaN or a ratio <= 0 rejects every match without a word.
        self.check_range("ratio", 0, 1, low_open=True, allow_none=True)
        self.check_range("max_distance", 0, low_open=True, allow_none=True)

    def _match(self, features0: Features, features1: Features) -> Matches:
        for k, f in enumerate((features0, features1)):
            if f.descriptors.dtype == np.uint8:
                raise ValueError(f"nearest_neighbor: features{k} has binary (uint8) descriptors; "
                                 "this matcher needs float L2-normalised descriptors")
        if len(features0) and len(features1) and features0.dim != features1.dim:
            raise ValueError(f"nearest_neighbor: descriptor dimensions differ ({features0.dim} vs "
                             f"{features1.dim}); were the two images extracted with the same model?")
        d0 = torch.from_numpy(features0.descriptors).to(self.device)
        d1 = torch.from_numpy(features1.descriptors).to(self.device)
        indices, scores = match_nearest_neighbours(
            d0, d1, mutual=self.conf["mutual"], ratio=self.conf["ratio"],
            max_distance=self.conf["max_distance"], block_rows=self.conf["block_rows"],
            precision=self.conf["precision"])
        return Matches(indices, scores)
