"""Small C kernels, compiled on first use with the system's C compiler and loaded with ctypes.

A kernel is one C file of the package with a C ABI (no Python or torch headers, so it builds in a second
with any C compiler). The shared library is cached in ``LOCALFEAT_KERNELS`` (default
``~/.cache/localfeat/kernels``) under a name keyed by the source, the compiler's version, the flags, the
OpenMP runtime and the CPU (``-march=native`` code must not run on another CPU model), and written
atomically.

OpenMP: a kernel is linked to the OpenMP runtime that torch has loaded in this process (libgomp,
libiomp5 or libomp), so its parallel regions run on torch's own threads. A second runtime would start a
second team of threads that compete with torch's for the cores (each team spins for milliseconds after
its work). When torch runs no OpenMP, kernels are built without it and run on one thread.

When no compiler is found, or the build fails, or ``LOCALFEAT_NATIVE=0``, `load_kernel` returns None
(with one warning for a failed build) and the callers use their torch implementation, which gives the
same results. ctypes releases the GIL during a call, so kernels run in parallel from Python threads.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Optional

from .hardware import cpu_info

FLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-std=gnu99")   # and -march=
_OPENMP_LIBRARY = re.compile(r"lib(gomp|iomp5|omp)([-.][^/]*)?\.so[^/]*$")


def kernels_dir() -> Path:
    root = os.environ.get("LOCALFEAT_KERNELS")
    return Path(root) if root else Path.home() / ".cache" / "localfeat" / "kernels"


def native_enabled() -> bool:
    """False when LOCALFEAT_NATIVE is set to 0 / false / no / off."""
    return os.environ.get("LOCALFEAT_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def find_compiler() -> Optional[str]:
    """The C compiler: $CC, else cc, gcc or clang on PATH; None when there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def openmp_runtime() -> Optional[str]:
    """Path of the OpenMP runtime loaded in this process (torch's), or None."""
    import torch  # noqa: F401  (loads torch's runtime, if it has one)
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return None
    found = sorted(p for p in paths if _OPENMP_LIBRARY.search(os.path.basename(p)))
    return found[0] if found else None


_BLAS_LIBRARY = re.compile(r"lib(torch_cpu|mkl_rt|mkl_core)\.so[^/]*$")


@functools.lru_cache(maxsize=None)
def blas_symbol(name: str) -> Optional[int]:
    """Address of the BLAS function `name` (e.g. 'sgemm_', the Fortran interface) of torch's MKL (linked
    into libtorch_cpu on x86, or a shared MKL), or None where there is none. Only MKL: it runs one thread
    when called inside an OpenMP parallel region, as the C kernels call it (an OpenBLAS built with its own
    threads, such as numpy's, warns and may hang there)."""
    import torch  # noqa: F401  (loads torch's BLAS)
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "/" in line})
    except OSError:
        return None
    for path in paths:
        if not _BLAS_LIBRARY.search(os.path.basename(path)):
            continue
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)   # only if loaded already
            return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


def _run(cmd: list) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr.strip()}")


def build(source: Path, cc: str, openmp: Optional[str] = None, march: str = "native") -> Path:
    """Compile `source` into the kernels cache (once per source, compiler, flags, OpenMP runtime and
    CPU) and return the library's path. `openmp`: the runtime to link (then -fopenmp), or None.
    `march`: the target of -march (the tests also build for a baseline such as x86-64-v2, to check the
    portable code paths on a CPU that has AVX-512).

    Raises RuntimeError with the compiler's message when the build fails."""
    cpu = cpu_info()
    flags = (*FLAGS, f"-march={march}")
    key = hashlib.sha256("\n".join([source.read_text(), cc, _compiler_version(cc), " ".join(flags), str(openmp),
                                    cpu.name, " ".join(sorted(cpu.flags))]).encode()).hexdigest()[:16]
    out = kernels_dir() / f"{source.stem}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{source.stem}-") as tmp:
        obj, lib = os.path.join(tmp, "kernel.o"), os.path.join(tmp, "kernel.so")
        # Compile and link apart: with -fopenmp at the link, the compiler would add its own runtime.
        _run([cc, *flags, *(["-fopenmp"] if openmp else []), "-c", str(source), "-o", obj])
        _run([cc, "-shared", obj, *([openmp] if openmp else []), "-o", lib])
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(lib, 0o777 & ~umask)   # a library follows the user's umask
        os.replace(lib, out)            # atomic: another process never loads a half-written library
    return out


@functools.lru_cache(maxsize=None)
def _load(name: str) -> Optional[ctypes.CDLL]:
    source = Path(__file__).parent / name
    cc = find_compiler()
    if cc is None:
        return None
    try:
        openmp = openmp_runtime()
        try:
            path = build(source, cc, openmp)
        except RuntimeError:
            if openmp is None:
                raise
            path = build(source, cc, None)   # e.g. a compiler without OpenMP headers: one thread
        return ctypes.CDLL(str(path))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"localfeat: the C kernel {name} is not available ({e}); using the torch "
                      "implementation (same results, slower)", RuntimeWarning, stacklevel=3)
        return None


def load_kernel(name: str) -> Optional[ctypes.CDLL]:
    """The compiled library of the package's C file `name` (a path relative to the package), or None
    when native kernels are disabled or cannot be built here."""
    if not native_enabled():
        return None
    return _load(name)
