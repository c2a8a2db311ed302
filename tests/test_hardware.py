"""CPU facts read from Linux: cache sizes parse, bf16 capability follows the flags."""
from localfeat import hardware
from localfeat.hardware import CpuInfo


def test_cache_size_strings_parse_to_bytes():
    assert hardware._size("32K\n") == 32 * 1024
    assert hardware._size("1024K") == 1 << 20
    assert hardware._size("32M") == 32 << 20
    assert hardware._size("4096") == 4096


def test_bf16_capability_and_summary_follow_the_flags():
    plain = CpuInfo("X", frozenset({"avx2", "fma"}))
    assert not plain.has_bf16
    assert CpuInfo("Y", frozenset({"avx512f", "avx512_bf16"})).has_bf16
    assert CpuInfo("Z", frozenset({"amx_tile", "amx_bf16"})).has_bf16
    line = CpuInfo("EPYC", frozenset({"avx2", "avx512_bf16", "sse4_1"}), l2=2 << 20, l3=32 << 20, cores=2).summary()
    assert line.startswith("EPYC; 2 cores;") and "L2 2048 KiB, L3 32 MiB" in line
    assert "flags: avx2 avx512_bf16;" in line  # only the flags that matter for matrix work


def test_this_machine_is_described():
    info = hardware.cpu_info()
    assert info.name and info.cores >= 1
    assert 0 < info.l1d <= info.l2 <= info.l3
