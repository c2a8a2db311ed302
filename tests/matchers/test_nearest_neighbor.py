"""Blockwise nearest-neighbour matching equals brute force on the full similarity matrix."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import localfeat
from localfeat.matchers.nearest_neighbor import match_nearest_neighbours
from localfeat.types import Features


def brute_force(d0, d1, mutual, ratio, max_distance):
    """Reference: full matrix in float64, numpy argmax (lowest index on ties)."""
    if len(d0) == 0 or len(d1) == 0:
        return np.zeros((0, 2), np.int64)
    sim = d0.astype(np.float64) @ d1.astype(np.float64).T
    dist = np.sqrt(np.clip(2 - 2 * sim, 0, None))

    def one_way(s, d):
        nn = np.argmax(s, axis=1)
        keep = np.ones(len(s), bool)
        srt = np.sort(d, axis=1)
        if ratio is not None and d.shape[1] > 1:
            keep &= srt[:, 0] < ratio * srt[:, 1]
        if max_distance is not None:
            keep &= srt[:, 0] <= max_distance
        return nn, keep

    nn01, k01 = one_way(sim, dist)
    keep = k01.copy()
    if mutual:
        nn10, k10 = one_way(sim.T, dist.T)
        keep &= k10[nn01] & (nn10[nn01] == np.arange(len(d0)))
    i = np.flatnonzero(keep)
    return np.stack([i, nn01[i]], 1)


@pytest.fixture(params=["native", "torch"])
def impl(request, monkeypatch):
    """Run a test with the C pass (nn_kernel.c) and with the torch-only path (LOCALFEAT_NATIVE=0)."""
    from localfeat.matchers import nearest_neighbor
    from localfeat.native import find_compiler
    if request.param == "native":
        if find_compiler() is None:
            pytest.skip("no C compiler on this machine: only the torch path runs")
        monkeypatch.setenv("LOCALFEAT_NATIVE", "1")
        assert nearest_neighbor.use_native()
    else:
        monkeypatch.setenv("LOCALFEAT_NATIVE", "0")
        assert not nearest_neighbor.use_native()
    return request.param


def random_desc(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n0,n1", [(0, 5), (5, 0), (0, 0), (1, 1), (1, 7), (7, 1), (50, 80), (333, 257)])
@pytest.mark.parametrize("mutual,ratio,max_distance", [
    (True, None, None), (False, None, None), (True, 0.9, None), (False, 0.8, 1.2), (True, None, 1.1)])
def test_blockwise_equals_brute_force(n0, n1, mutual, ratio, max_distance, impl):
    d0, d1 = random_desc(n0, 16, n0 + 1), random_desc(n1, 16, n1 + 1000)
    expected = brute_force(d0, d1, mutual, ratio, max_distance)
    for block_rows in (3, 64, None):
        idx, scores = match_nearest_neighbours(d0, d1, mutual, ratio, max_distance, block_rows=block_rows)
        assert idx.dtype == np.int64 and idx.shape == expected.shape
        assert np.array_equal(idx, expected), f"block_rows={block_rows}"
        if len(idx):
            assert np.allclose(scores, np.sum(d0[idx[:, 0]] * d1[idx[:, 1]], 1), atol=1e-6)


def test_ties_take_the_lowest_index_in_both_directions(impl):
    # Rows 0 and 1 of d1 are identical: row 0 of d0 must pick column 0, and column 0's best row
    # is row 0 (row 2 of d0 duplicates row 0).
    d0 = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    d1 = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    for block_rows in (1, 2, 3):
        idx, _ = match_nearest_neighbours(d0, d1, mutual=True, block_rows=block_rows)
        assert idx.tolist() == [[0, 0], [1, 2]]
        idx, _ = match_nearest_neighbours(d0, d1, mutual=False, block_rows=block_rows)
        assert idx.tolist() == [[0, 0], [1, 2], [2, 0]]


def test_ratio_with_duplicate_neighbours_rejects(impl):
    d0 = np.array([[1, 0]], np.float32)
    d1 = np.array([[1, 0], [1, 0]], np.float32)
    idx, _ = match_nearest_neighbours(d0, d1, mutual=False, ratio=0.99)
    assert len(idx) == 0  # best and second-best equally close: ambiguous


def test_matcher_object_and_errors(device):
    d = random_desc(20, 8, 3)
    f = Features(np.zeros((20, 2)), np.ones(20), d, (10, 10))
    m = localfeat.load_matcher("nearest_neighbor", device=device).match(f, f)
    assert m.indices.tolist() == [[i, i] for i in range(20)] and np.allclose(m.scores, 1, atol=1e-6)
    other = random_desc(15, 8, 4)
    g = Features(np.zeros((15, 2)), np.ones(15), other, (10, 10))
    np.testing.assert_array_equal(localfeat.load_matcher("nearest_neighbor", device=device).match(f, g).indices,
                                  brute_force(d, other, True, None, None))
    g = Features(np.zeros((20, 2)), np.ones(20), random_desc(20, 4, 1), (10, 10))
    with pytest.raises(ValueError, match="descriptor dimensions differ"):
        localfeat.load_matcher("nearest_neighbor").match(f, g)


# --- The one-pass matcher's fast paths (issue 21): exact, whatever the precision, blocks, threads. ---

import threading  # noqa: E402

import torch  # noqa: E402

from localfeat.matchers import nearest_neighbor as nn  # noqa: E402


def lattice_desc(n, d, seed):
    """Descriptors with entries in {-2, ..., 2} / 4: every dot product is exact in bf16, fp32 and float64
    whatever the order of summation, so ties (between different vectors too) are exact ties everywhere."""
    return (np.random.default_rng(seed).integers(-2, 3, size=(n, d)) / 4).astype(np.float32)


@pytest.fixture
def small_parts(monkeypatch):
    """Split rows between threads and flush candidates early even on small inputs (both paths)."""
    monkeypatch.setattr(nn, "_MIN_ROWS_PER_THREAD", 8)
    monkeypatch.setattr(nn, "_FLUSH_PAIRS", 50)
    monkeypatch.setattr(nn, "_NATIVE_CAPACITY", 8)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mutual,ratio,max_distance", [
    (True, None, None), (False, None, None), (True, 0.9, None), (False, 0.8, 1.2), (True, 0.95, 1.1)])
def test_fast_paths_equal_brute_force(precision, mutual, ratio, max_distance, impl):
    # 333 x 257: several blocks both ways, blocks that are not multiples of the chunk, short tail chunks.
    d0, d1 = random_desc(333, 24, 5), random_desc(257, 24, 6)
    expected = brute_force(d0, d1, mutual, ratio, max_distance)
    for block_rows, block_cols in ((64, 96), (100, 37), (333, 257)):
        idx, scores = match_nearest_neighbours(d0, d1, mutual, ratio, max_distance, block_rows=block_rows,
                                               block_cols=block_cols, precision=precision)
        assert np.array_equal(idx, expected), (block_rows, block_cols)
        assert np.allclose(scores, np.sum(d0[idx[:, 0]] * d1[idx[:, 1]], 1), atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("ratio", [None, 0.999])
def test_ties_everywhere_equal_brute_force(small_parts, precision, ratio, impl):
    # Lattice descriptors: many exactly tied similarities in every row and column, plus exact
    # duplicate rows in both sets that fall into different blocks, chunks and thread parts.
    d0, d1 = lattice_desc(150, 8, 1), lattice_desc(140, 8, 2)
    d0[100:120] = d0[3:23]
    d1[90:110] = d1[0:20]
    for mutual in (True, False):
        expected = brute_force(d0, d1, mutual, ratio, None)
        assert len(expected) > 0
        for block_rows, block_cols, threads in ((16, 32, 2), (50, 7, 3), (150, 140, 1)):
            rows = nn.best_two_both_ways(torch.from_numpy(d0), torch.from_numpy(d1), ratio is not None,
                                         precision=precision, block_rows=block_rows, block_cols=block_cols,
                                         chunk=4, threads=threads)
            sim = d0.astype(np.float64) @ d1.astype(np.float64).T
            assert np.array_equal(rows[0].numpy(), np.argmax(sim, 1))  # lowest index among tied maxima
            assert np.array_equal(rows[3].numpy(), np.argmax(sim, 0))
            assert np.array_equal(rows[1].numpy(), sim.max(1)) and np.array_equal(rows[4].numpy(), sim.max(0))
            if ratio is not None:
                assert np.array_equal(rows[2].numpy(), np.sort(sim, 1)[:, -2])
                assert np.array_equal(rows[5].numpy(), np.sort(sim, 0)[-2])
        idx, _ = match_nearest_neighbours(d0, d1, mutual, ratio, None, block_rows=16, block_cols=32,
                                          precision=precision)
        assert np.array_equal(idx, expected)


def test_threads_and_early_flushes_give_identical_matches(small_parts, impl):
    d0, d1 = random_desc(700, 32, 11), random_desc(650, 32, 12)
    expected = brute_force(d0, d1, True, 0.95, None)
    out = [nn.best_two_both_ways(torch.from_numpy(d0), torch.from_numpy(d1), True, precision=precision,
                                 threads=threads, block_rows=64, block_cols=128)
           for precision in ("fp32", "bf16") for threads in (1, 2, 3)]
    for o in out[1:]:
        assert all(torch.equal(x, y) for x, y in zip(out[0], o))
    before = torch.get_num_threads()
    idx, _ = match_nearest_neighbours(d0, d1, mutual=True, ratio=0.95, block_rows=64, block_cols=128)
    assert np.array_equal(idx, expected)
    # The workers' single-thread setting does not leak to the caller nor to threads started later.
    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert torch.get_num_threads() == before and seen == [before]


def test_filter_error_bound_holds_and_is_tight_enough():
    # Worst pair error of the bf16 and fp32 GEMMs against exact float64 stays below the bound, and the
    # bound is small enough to filter (bf16: below 0.02 for unit vectors; fp32: below 1e-4).
    d0 = torch.from_numpy(random_desc(500, 128, 21))
    d1 = torch.from_numpy(random_desc(400, 128, 22))
    exact = d0.double() @ d1.double().T
    for low, limit in ((torch.bfloat16, 0.02), (torch.float32, 1e-4)):
        a, b = d0.to(low), d1.to(low)
        eps = nn.filter_error_bound(d0, d1, a, b)
        err = float(((a @ b.T).double() - exact).abs().max())
        assert err <= eps < limit, (low, err, eps)


def test_exact_similarity_does_not_depend_on_batching():
    a = torch.from_numpy(random_desc(50, 96, 31)).double()
    b = torch.cat([a[:10], torch.from_numpy(random_desc(20, 96, 32)).double()])
    i = torch.arange(50).repeat(3)
    j = torch.randint(0, 30, (150,), generator=torch.Generator().manual_seed(0))
    together = nn.exact_similarity(a, b, i, j)
    alone = torch.stack([nn.exact_similarity(a, b, i[k:k + 1], j[k:k + 1])[0] for k in range(150)])
    assert torch.equal(together, alone)
    assert torch.allclose(together, (a[i] * b[j]).sum(1), rtol=0, atol=1e-15)
    # Duplicated vectors score exactly alike (exact ties).
    dup = nn.exact_similarity(a, b, torch.arange(10), torch.arange(10))
    assert torch.equal(dup, nn.exact_similarity(a, a, torch.arange(10), torch.arange(10)))


def test_block_sizes_follow_the_caches():
    rows, cols = nn.choose_blocks(30000, 30000, 128, 32)
    info = nn.cpu_info()
    assert rows % 32 == 0 and cols % 32 == 0
    assert cols * 128 * 4 <= max(info.l2, 32 * 128 * 4)            # a column block of desc1 fits in L2
    assert rows * cols * 4 <= max(info.l3 // 2, 32 * cols * 4)     # a similarity block fits in L3
    assert nn.choose_blocks(10, 20, 128, 32) == (32, 32)           # never larger than the inputs need


def test_precision_setting_is_checked_and_gives_identical_matches():
    d = random_desc(200, 16, 41)
    f0 = Features(np.zeros((200, 2)), np.ones(200), d, (10, 10))
    f1 = Features(np.zeros((200, 2)), np.ones(200), random_desc(200, 16, 42), (10, 10))
    ref = localfeat.load_matcher("nearest_neighbor").match(f0, f1)
    for precision in ("bf16", "auto"):
        m = localfeat.load_matcher("nearest_neighbor", precision=precision).match(f0, f1)
        assert np.array_equal(m.indices, ref.indices) and np.array_equal(m.scores, ref.scores)
    with pytest.raises(localfeat.config.ConfigError, match="precision='fp16' is not one of"):
        localfeat.load_matcher("nearest_neighbor", precision="fp16")
    with pytest.raises(ValueError, match="precision='int4'; choose one of fp32, bf16, auto"):
        match_nearest_neighbours(d, d, precision="int4")


@pytest.mark.parametrize("need_second", [False, True])
def test_c_pass_equals_torch_ops_bit_for_bit(small_parts, monkeypatch, need_second):
    # The C pass (own exact re-scoring in C, threads on torch's OpenMP team, order-independent merges)
    # gives the same six arrays as the torch ops, to the last bit: random and tied (lattice) data, a
    # dimension that is not a power of two (padded pairwise sums), blocks with tails, 1-3 threads, and
    # one block holding every row (near-ties that the bf16 filter misorders meet in one block: the
    # candidates' thresholds must keep their 2 eps margin there; dimension 8 makes them frequent), and
    # near-copies of 20 vectors whose exact similarities differ below float32's resolution (the float32
    # filter misorders them: its thresholds need the margin too).
    from localfeat.native import find_compiler
    if find_compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert_c_pass_equals_torch_ops(monkeypatch, need_second)


@pytest.mark.parametrize("need_second", [False, True])
def test_portable_build_of_the_c_pass_equals_torch_ops(small_parts, monkeypatch, tmp_path, need_second):
    # The kernel built for a baseline x86-64 (SSE4.2, no AVX-512: the vector-extension fallbacks of
    # vmax, vmin, vge_bits) gives the same bits as well, so a CPU without AVX-512 gets the same matches.
    import ctypes
    import platform
    from localfeat import native
    cc = native.find_compiler()
    if cc is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs a C compiler for x86-64")
    monkeypatch.setenv("LOCALFEAT_KERNELS", str(tmp_path))
    source = Path(nn.__file__).with_name("nn_kernel.c")
    lib = nn.configure_kernel(ctypes.CDLL(str(native.build(source, cc, native.openmp_runtime(), march="x86-64-v2"))))
    if shutil.which("objdump"):   # binutils, beside the compiler: no AVX-512 register in the code
        code = subprocess.run(["objdump", "-d", lib._name], capture_output=True, text=True).stdout
        assert "lf_nn_sweep" in code and "zmm" not in code
    monkeypatch.setattr(nn, "_native_kernel", lambda: lib)
    assert_c_pass_equals_torch_ops(monkeypatch, need_second)


def assert_c_pass_equals_torch_ops(monkeypatch, need_second):
    cases = [(random_desc(301, 24, 51), random_desc(277, 24, 52)), (lattice_desc(150, 8, 3), lattice_desc(130, 8, 4)),
             (random_desc(300, 8, 7), random_desc(300, 8, 107)), (random_desc(300, 8, 1), random_desc(300, 8, 101)),
             (near_copies(300, 32, 9), near_copies(290, 32, 10))]
    for d0, d1 in cases:
        a, b = torch.from_numpy(d0), torch.from_numpy(d1)
        for precision in ("fp32", "bf16"):
            monkeypatch.setenv("LOCALFEAT_NATIVE", "0")
            ref = nn.best_two_both_ways(a, b, need_second, precision=precision, block_rows=40, block_cols=48)
            monkeypatch.setenv("LOCALFEAT_NATIVE", "1")
            for threads, rows, cols in ((1, 40, 48), (2, 37, 100), (3, 301, 277), (2, 16, 17), (2, 301, 301)):
                out = nn.best_two_both_ways(a, b, need_second, precision=precision, block_rows=rows,
                                            block_cols=cols, threads=threads)
                for x, y in zip(out, ref):
                    assert x.dtype == y.dtype and torch.equal(x, y), (precision, threads, rows, cols)


def near_copies(n, d, seed):
    """n unit vectors, each one of 20 base vectors plus noise of 3e-7 per coordinate (below float32's
    resolution of the similarities: ties that the float32 GEMM breaks at random)."""
    rng = np.random.default_rng(seed)
    base = random_desc(20, d, 1000)
    x = base[np.arange(n) % 20] + 3e-7 * rng.normal(size=(n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_max_row_norm_bounds_the_norms():
    # The error bound needs max ||x_i|| rounded up (C pass, numpy, torch give an upper bound within 1e-5).
    x = torch.from_numpy(random_desc(300, 37, 61)) * torch.linspace(0.5, 2.0, 300)[:, None]
    exact = float(x.double().norm(dim=1).max())
    assert exact <= nn._max_row_norm(x) <= exact * (1 + 1e-5)
    assert nn._max_row_norm(x[:0]) == 0.0
