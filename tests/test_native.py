"""localfeat.native: C kernels built on first use, cached per source/compiler/CPU, optional."""
import os
import stat
import warnings

import pytest
import torch

from localfeat import native

SOURCE = "int lf_answer(void) { return 42; }\n"


@pytest.fixture
def kernels(tmp_path, monkeypatch):
    """A private kernels cache and a fresh load cache."""
    monkeypatch.setenv("LOCALFEAT_KERNELS", str(tmp_path / "kernels"))
    native._load.cache_clear()
    yield tmp_path / "kernels"
    native._load.cache_clear()


def test_build_is_cached_atomic_and_follows_the_umask(kernels, tmp_path):
    cc = native.find_compiler()
    if cc is None:
        pytest.skip("no C compiler on this machine")
    src = tmp_path / "answer.c"
    src.write_text(SOURCE)
    old = os.umask(0o027)
    try:
        lib = native.build(src, cc)
    finally:
        os.umask(old)
    assert lib.parent == kernels and lib.name.startswith("answer-") and lib.suffix == ".so"
    assert stat.S_IMODE(lib.stat().st_mode) == 0o750                     # 0777 & ~umask
    assert [p.name for p in kernels.iterdir()] == [lib.name]              # no temporary left behind
    mtime = lib.stat().st_mtime_ns
    assert native.build(src, cc) == lib and lib.stat().st_mtime_ns == mtime   # cached: not rebuilt
    import ctypes
    assert ctypes.CDLL(str(lib)).lf_answer() == 42
    src.write_text(SOURCE.replace("42", "43"))                             # a new source, a new library
    assert native.build(src, cc) != lib


def test_a_failed_build_names_the_file_and_the_compiler_message(kernels, tmp_path):
    cc = native.find_compiler()
    if cc is None:
        pytest.skip("no C compiler on this machine")
    src = tmp_path / "broken.c"
    src.write_text("int broken(void) { return }\n")
    with pytest.raises(RuntimeError, match="broken.c"):
        native.build(src, cc)
    assert not any(kernels.iterdir())                                      # nothing half-written


def test_kernels_are_optional(kernels, monkeypatch, tmp_path):
    # Disabled: no library, no build. A compiler that fails: one warning, then the torch path.
    monkeypatch.setenv("LOCALFEAT_NATIVE", "0")
    assert native.load_kernel("matchers/nn_kernel.c") is None
    monkeypatch.setenv("LOCALFEAT_NATIVE", "1")
    failing = tmp_path / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'no compiler here' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    assert native.find_compiler() == str(failing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.load_kernel("matchers/nn_kernel.c") is None
    assert any("nn_kernel.c is not available" in str(w.message) and "no compiler here" in str(w.message)
               for w in caught)


def test_the_openmp_runtime_is_torchs(kernels):
    # Kernels link the runtime torch runs, so their parallel regions use torch's own threads.
    path = native.openmp_runtime()
    if torch.backends.openmp.is_available():
        assert path is not None and os.path.isfile(path)
        assert any(name in os.path.basename(path) for name in ("gomp", "iomp", "omp"))
        with open("/proc/self/maps") as f:
            assert path in f.read()
    else:
        assert path is None


def test_blas_symbol_finds_torchs_sgemm_and_it_computes_a_product():
    # The C sweep calls MKL's sgemm_ through its address; where torch has no MKL (e.g. an ARM build), or the
    # symbol is missing, matching takes the torch path (use_native() is False).
    import ctypes

    from localfeat.matchers import nearest_neighbor as nn
    assert native.blas_symbol("no_such_blas_function_") is None
    addr = native.blas_symbol("sgemm_")
    if "blas_info=mkl" in torch.__config__.show().lower():
        assert addr is not None                          # x86 torch wheels link MKL (the pinned 2.13.0 does)
    if addr is None:
        assert not nn.use_native()
        return
    i32, f32 = ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_float)
    sgemm = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, i32, i32, i32, f32, ctypes.c_void_p, i32,
                             ctypes.c_void_p, i32, f32, ctypes.c_void_p, i32)(addr)
    a, b = torch.arange(6, dtype=torch.float32).view(2, 3), torch.arange(12, dtype=torch.float32).view(4, 3)
    c = torch.empty(2, 4)
    m, n, k = (ctypes.c_int32(v) for v in (4, 2, 3))
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    # row-major c = a @ b.T, as nn_kernel.c's gemm_tile calls it (column-major c^T = b^T-as-stored . a)
    sgemm(b"T", b"N", m, n, k, one, b.data_ptr(), k, a.data_ptr(), k, zero, c.data_ptr(), m)
    assert torch.equal(c, a @ b.T)
    assert torch.equal(c, torch.tensor([[5.0, 14.0, 23.0, 32.0], [14.0, 50.0, 86.0, 122.0]]))


def test_matching_without_sgemm_takes_the_torch_path(monkeypatch):
    from localfeat.matchers import nearest_neighbor as nn
    monkeypatch.setattr(nn, "blas_symbol", lambda name: None)
    assert not nn.use_native()
    d0 = torch.nn.functional.normalize(torch.randn(40, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    idx, best = nn.match_nearest_neighbours(d0, d0)
    assert (idx[:, 0] == idx[:, 1]).all() and len(idx) == 40 and abs(best - 1).max() < 1e-6
