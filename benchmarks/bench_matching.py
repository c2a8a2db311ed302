"""Nearest-neighbour matching at scale: blockwise vs brute force (full similarity matrix).

Each variant runs in its own process so that peak memory (VmHWM) is its own.
Prints wall time and peak EXTRA memory (peak RSS minus RSS once the descriptors exist).

    .venv/bin/python benchmarks/bench_matching.py --n 30000 --dim 128
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def child(variant: str, n: int, dim: int, threads: int) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    d0 = rng.standard_normal((n, dim), dtype=np.float32)
    d1 = rng.standard_normal((n, dim), dtype=np.float32)
    d0 /= np.linalg.norm(d0, axis=1, keepdims=True)
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    from localfeat.matchers.nearest_neighbor import match_nearest_neighbours

    t0, t1 = torch.from_numpy(d0), torch.from_numpy(d1)
    match_nearest_neighbours(t0[:100], t1[:100])  # warm-up (thread pools, kernels)
    base = _rss_kb("VmRSS")
    start = time.perf_counter()
    if variant == "blockwise":
        idx, _ = match_nearest_neighbours(t0, t1, mutual=True)
    else:  # brute force: the whole similarity matrix at once
        with torch.inference_mode():
            sim = t0 @ t1.T
            nn01 = sim.argmax(1)
            nn10 = sim.argmax(0)
            i = torch.arange(n)
            keep = nn10[nn01] == i
            idx = torch.stack([i[keep], nn01[keep]], 1).numpy()
    seconds = time.perf_counter() - start
    peak = _rss_kb("VmHWM")
    print(json.dumps({"variant": variant, "seconds": seconds, "extra_mb": (peak - base) / 1024,
                      "matches": int(len(idx)), "checksum": int(np.asarray(idx).sum())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["blockwise", "brute"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.dim, args.threads)
        return
    rows = {}
    for variant in ("blockwise", "brute"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--n", str(args.n), "--dim",
                              str(args.dim), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True).stdout
        rows[variant] = json.loads(out.strip().splitlines()[-1])
    b, f = rows["blockwise"], rows["brute"]
    print(f"mutual NN, {args.n} x {args.n} x {args.dim}, {args.threads} threads")
    print(f"{'variant':<10} {'time s':>8} {'peak extra MB':>14} {'matches':>8}")
    for r in (b, f):
        print(f"{r['variant']:<10} {r['seconds']:8.2f} {r['extra_mb']:14.0f} {r['matches']:8d}")
    print(f"identical matches: {b['matches'] == f['matches'] and b['checksum'] == f['checksum']}; "
          f"time ratio blockwise/brute {b['seconds'] / f['seconds']:.2f}; "
          f"memory ratio {b['extra_mb'] / max(f['extra_mb'], 1):.3f}")


if __name__ == "__main__":
    main()
