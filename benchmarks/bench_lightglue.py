"""CPU time per image pair of the LightGlue matcher at 512 / 1024 / 2048 keypoints per image,
with adaptive depth/width off and on, against mutual nearest neighbours measured in the same run.

Without --weights the network has random weights of the full configuration (9 layers; PyTorch's default
initialisation). Random token-confidence heads are never confident, so "adaptive" then measures only the
overhead of the checks (nothing stops or is pruned); the row "adaptive, all confident" forces every token
confident (stop after the first layer) and is the lower bound of what adaptive depth can save. With the
official file (--weights superpoint_lightglue.pth) the "adaptive" row shows the real behaviour.

    python benchmarks/bench_lightglue.py --features superpoint --sizes 512 1024 2048 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from localfeat import Features, load_matcher
from localfeat.matchers.lightglue import FEATURES, LightGlueNet


def make_pair(n: int, dim: int, seed: int) -> tuple[Features, Features]:
    """Two views: 60 % of the points re-observed through an affine map with noisy descriptors."""
    rng = np.random.default_rng(seed)
    k0 = rng.uniform([0, 0], [1023, 767], (n, 2)).astype(np.float32)
    d0 = rng.standard_normal((n, dim)).astype(np.float32)
    shared = int(0.6 * n)
    k1 = np.concatenate([k0[:shared] @ np.array([[0.7, -0.08], [0.1, 0.72]], np.float32) + [40, 25],
                         rng.uniform([0, 0], [799, 599], (n - shared, 2))]).astype(np.float32)
    d1 = np.concatenate([d0[:shared] + 0.3 * rng.standard_normal((shared, dim)),
                         rng.standard_normal((n - shared, dim))]).astype(np.float32)
    order = rng.permutation(n)
    k1, d1 = k1[order], d1[order]
    d0 /= np.linalg.norm(d0, axis=1, keepdims=True)
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    ones = np.ones(n, np.float32)
    return Features(k0, ones, d0, (1024, 768)), Features(k1, ones, d1, (800, 600))


def measure(matcher, f0: Features, f1: Features, repeats: int) -> tuple[float, float, int]:
    """Median wall and process-CPU seconds per pair, and the number of matches."""
    matcher.match(f0, f1)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        matches = matcher.match(f0, f1)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), len(matches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example:\n  python benchmarks/bench_lightglue.py --sizes 512 1024")
    parser.add_argument("--features", default="superpoint", choices=sorted(FEATURES))
    parser.add_argument("--weights", default=None, help="official state_dict (default: random weights)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dim = FEATURES[args.features][1]

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            weights = str(Path(tmp) / "random.pth")
            torch.save(LightGlueNet(dim, 9).state_dict(), weights)
        common = {"features": args.features, "weights": weights, "device": "cpu"}
        configs = {
            "full (adaptive off)": load_matcher("lightglue", depth_confidence=None, width_confidence=None, **common),
            "adaptive (0.95 / 0.99)": load_matcher("lightglue", **common),
        }
        forced = load_matcher("lightglue", **common)
        with torch.no_grad():
            for head in forced.net.token_confidence:
                head.token[0].bias += 20.0
        configs["adaptive, all confident"] = forced
        nn = load_matcher("nearest_neighbor", device="cpu")

        print(f"LightGlue ({args.features}, {'random weights' if args.weights is None else args.weights}), "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
        print(f"| keypoints | configuration | wall s/pair | CPU s/pair | vs full | vs mutual NN | matches |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for n in args.sizes:
            f0, f1 = make_pair(n, dim, seed=n)
            nn_wall, nn_cpu, nn_count = measure(nn, f0, f1, args.repeats)
            full_wall = None
            for label, matcher in configs.items():
                wall, cpu, count = measure(matcher, f0, f1, args.repeats)
                full_wall = full_wall or wall
                print(f"| {n} | {label} | {wall:.3f} | {cpu:.3f} | {wall / full_wall:.2f} | "
                      f"{wall / nn_wall:.0f}x | {count} |")
            print(f"| {n} | mutual NN (baseline) | {nn_wall:.4f} | {nn_cpu:.4f} | {nn_wall / full_wall:.3f} | 1x "
                  f"| {nn_count} |")


if __name__ == "__main__":
    main()
