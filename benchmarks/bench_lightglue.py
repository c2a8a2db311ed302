"""CPU time per image pair of the LightGlue matcher at 512 / 1024 / 2048 keypoints per image,
with adaptive depth/width off and on, against mutual nearest neighbours measured in the same run.

Without --weights the network has random weights of the full configuration (9 layers; PyTorch's default
initialisation). Random token-confidence heads are never confident, so "adaptive" then measures only the
overhead of the checks (nothing stops or is pruned); the row "adaptive, all confident" forces every token
confident (stop after the first layer) and is the lower bound of what adaptive depth can save; the row
"pruning only" shows what point pruning saves when about half of the points go at each layer. With the
official file (--weights superpoint_lightglue.pth) the "adaptive" row shows the real behaviour.

    python benchmarks/bench_lightglue.py --features superpoint --sizes 512 1024 2048 --repeats 3 --threads 1

On a shared machine prefer --threads 1: process CPU time then counts work, not threads waiting.
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
from localfeat.matchers.lightglue import LightGlueNet, paired_features


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


def measure(matchers: dict, f0: Features, f1: Features, repeats: int) -> dict:
    """Median wall and process-CPU seconds per pair, and the number of matches, for each matcher.

    The matchers are timed in turn within each repeat, so that a change of machine load affects them
    alike and their ratios stay meaningful on a shared machine.
    """
    times = {label: ([], []) for label in matchers}
    counts = {label: len(m.match(f0, f1)) for label, m in matchers.items()}  # warm-up
    for _ in range(repeats):
        for label, matcher in matchers.items():
            w, c = time.perf_counter(), time.process_time()
            matcher.match(f0, f1)
            times[label][0].append(time.perf_counter() - w)
            times[label][1].append(time.process_time() - c)
    return {label: (statistics.median(walls), statistics.median(cpus), counts[label])
            for label, (walls, cpus) in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example:\n  python benchmarks/bench_lightglue.py --sizes 512 1024")
    parser.add_argument("--features", default="superpoint", choices=sorted(paired_features()))
    parser.add_argument("--weights", default=None, help="official state_dict (default: random weights)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dim = paired_features()[args.features]["input_dim"]

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
        configs["adaptive, all confident (stop after layer 1)"] = forced
        # Pruning alone: confident tokens, stopping impossible (depth 1.0), and width 0.5 keeps the points of
        # matchability > 0.5, about half of them at each layer with these random heads.
        pruning = load_matcher("lightglue", depth_confidence=1.0, width_confidence=0.5, **common)
        with torch.no_grad():
            for head in pruning.net.token_confidence:
                head.token[0].bias += 20.0
        configs["pruning only (confident tokens, width 0.5)"] = pruning

        print(f"LightGlue ({args.features}, {'random weights' if args.weights is None else args.weights}), "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
        print("| keypoints | configuration | wall s/pair | CPU s/pair | wall vs full | CPU vs full "
              "| CPU vs mutual NN | matches |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        configs["mutual NN (baseline)"] = load_matcher("nearest_neighbor", device="cpu")
        for n in args.sizes:
            f0, f1 = make_pair(n, dim, seed=n)
            results = measure(configs, f0, f1, args.repeats)
            full_wall, full_cpu, _ = results["full (adaptive off)"]
            nn_wall, nn_cpu, _ = results["mutual NN (baseline)"]
            for label, (wall, cpu, count) in results.items():
                print(f"| {n} | {label} | {wall:.3f} | {cpu:.3f} | {wall / full_wall:.2f} | "
                      f"{cpu / full_cpu:.2f} | {cpu / nn_cpu:.0f}x | {count} |")

if __name__ == "__main__":
    main()
