"""What the machine offers: CPU name, instruction-set flags, cache sizes, fast low-precision matrix units.

Read once from Linux's /proc/cpuinfo and /sys (other systems get conservative defaults), so that block
sizes follow the caches and benchmark tables can say which CPU they were measured on.
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Flags that mean bf16 matrix work runs natively (AVX-512 BF16 dot products, AMX tiles).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """name: model name; flags: the instruction-set flags; l1d/l2/l3: bytes per cache instance
    (l1d, l2 per core, l3 per instance); cores: logical CPUs usable by this process."""

    name: str
    flags: frozenset = field(default_factory=frozenset)
    l1d: int = 32 << 10
    l2: int = 1 << 20
    l3: int = 8 << 20
    cores: int = 1

    @property
    def has_bf16(self) -> bool:
        """True when the CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX-BF16)."""
        return any(f in self.flags for f in BF16_FLAGS)

    def summary(self) -> str:
        """One line: name, cores, caches and the flags that matter for matrix work."""
        shown = " ".join(f for f in _SHOWN_FLAGS if f in self.flags) or "-"
        return (f"{self.name}; {self.cores} cores; L1d {self.l1d >> 10} KiB, L2 {self.l2 >> 10} KiB, "
                f"L3 {self.l3 >> 20} MiB; flags: {shown}; torch {torch.__version__} "
                f"({torch.backends.cpu.get_cpu_capability()})")


def _size(text: str) -> int:
    text = text.strip().upper()
    for suffix, mult in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if text.endswith(suffix):
            return int(text[:-1]) * mult
    return int(text)


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The CPU of this machine (cached). Unknown fields keep the class defaults."""
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    sizes = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = _size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            sizes[{"1": "l1d", "2": "l2", "3": "l3"}.get(level, "other")] = size
    sizes.pop("other", None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuInfo(name=name, flags=flags, cores=cores, **sizes)
