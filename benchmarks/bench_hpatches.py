"""Speed of the HPatches evaluation at full benchmark size: 540 pairs, 5,000 features per image, features given.

The dataset is synthetic (108 sequences written by `localfeat hpatches synth`, so images and
homographies are real files and the dataset fingerprint is computed as for HPatches); the
features are generated in memory from the true homographies (a share of image-1 keypoints warped
with 1 px noise and a perturbed descriptor, the rest random), so matching, RANSAC, repeatability
and matching score do realistic work. The timed run is `evaluate_source` (matching + all metrics +
cache writes), once per worker count; the first worker count is the baseline of the ratios.

    .venv/bin/python benchmarks/bench_hpatches.py                  # 108 sequences, 5000 features, workers 1,2
    .venv/bin/python benchmarks/bench_hpatches.py --sequences 10   # quick look
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from localfeat.datasets.hpatches import HPatchesSequences  # noqa: E402
from localfeat.datasets.synth import generate  # noqa: E402
from localfeat.eval.hpatches import CallableSource, EvalSettings, evaluate_pair, evaluate_source  # noqa: E402
from localfeat.geometry import inside_image, warp_points  # noqa: E402
from localfeat.types import Features  # noqa: E402


def make_source(data: HPatchesSequences, n: int, dim: int, inlier_share: float, seed: int, spent: dict):
    """A CallableSource generating the features of a sequence on first use (time counted in `spent`)."""
    memo: dict = {}

    def sequence_features(seq: str) -> dict:
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, data.sequences.index(seq)])
        w, h = data.image_size(seq, 1)
        k1 = rng.uniform([0, 0], [w - 1, h - 1], size=(n, 2))
        d1 = rng.normal(size=(n, dim)).astype(np.float32)
        out = {1: Features(k1, rng.uniform(size=n), d1 / np.linalg.norm(d1, axis=1, keepdims=True), (w, h))}
        for k in range(2, 7):
            wk, hk = data.image_size(seq, k)
            kk = rng.uniform([0, 0], [wk - 1, hk - 1], size=(n, 2))
            dk = rng.normal(size=(n, dim)).astype(np.float32)
            warped = warp_points(k1, data.homography(seq, k)) + rng.normal(0, 1.0, size=(n, 2))
            keep = inside_image(warped, (wk, hk)) & (rng.uniform(size=n) < inlier_share)
            kk[keep] = warped[keep]
            dk[keep] = d1[keep] + 0.6 * rng.normal(size=(int(keep.sum()), dim)).astype(np.float32) / np.sqrt(dim)
            out[k] = Features(kk, rng.uniform(size=n), dk / np.linalg.norm(dk, axis=1, keepdims=True), (wk, hk))
        spent["generate"] = spent.get("generate", 0.0) + time.perf_counter() - t0
        return out

    def get(name: str) -> Features:
        seq, file = name.split("/")
        if seq not in memo:
            memo.clear()
            memo[seq] = sequence_features(seq)
        return memo[seq][int(file.split(".")[0])]

    return CallableSource("synthetic-features", get, {"n": n, "dim": dim, "inlier_share": inlier_share,
                                                      "seed": seed})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=108, help="108 sequences = 540 pairs, as HPatches minus 8")
    parser.add_argument("--features", type=int, default=5000, help="keypoints per image")
    parser.add_argument("--dim", type=int, default=128, help="descriptor dimension")
    parser.add_argument("--image-size", type=int, default=640, help="max(W, H) of the synthetic images")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts; the first is the baseline")
    parser.add_argument("--work-dir", default=None, help="where the data and caches go (default: a temp dir)")
    args = parser.parse_args()

    import torch

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_hpatches_"))
    data_dir = work / "data"
    t0 = time.perf_counter()
    if not (data_dir / "synth.json").exists():
        generate(data_dir, n_sequences=args.sequences, seed=0, image_max_size=args.image_size)
    data = HPatchesSequences(data_dir, exclude=())
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    fingerprint = data.fingerprint()
    t_fp = time.perf_counter() - t0
    n_pairs = len(data.pairs())
    print(f"dataset: {len(data.sequences)} sequences, {n_pairs} pairs in {data_dir} "
          f"(written in {t_data:.1f} s, fingerprint {t_fp:.2f} s); {args.features} features x {args.dim}-D per image; "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    # Warm-up (lazy imports, allocator, OpenCV/torch thread pools) so that the first timed run is not penalised.
    warm = make_source(data, args.features, args.dim, 0.6, 0, {})
    seq = data.sequences[0]
    evaluate_pair(warm.get(data, data.image_name(seq, 1)), warm.get(data, data.image_name(seq, 2)),
                  data.homography(seq, 2), EvalSettings())
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        spent, timing = {}, {}
        source = make_source(data, args.features, args.dim, 0.6, 0, spent)
        t0, c0 = time.perf_counter(), time.process_time()
        result = evaluate_source(source, data, EvalSettings(), work / f"run_w{workers}_{time.time_ns()}",
                                 fingerprint=fingerprint, workers=workers, timing=timing)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        busy = timing.get("match", 0.0) + timing.get("other", 0.0)
        rows.append({"workers": workers, "wall": wall, "cpu": cpu, "eval": wall - spent.get("generate", 0.0),
                     "gen": spent.get("generate", 0.0), "match_share": timing.get("match", 0.0) / busy,
                     "mma3": result["mma_overall"][2], "n_matches": result["n_matches"]})
    base = rows[0]["eval"]
    print(f"\n{'workers':>7} {'wall s':>8} {'cpu s':>7} {'feature gen s':>13} {'eval s':>8} {'ms/pair':>8} "
          f"{'matching share':>14} {'speed-up':>9} {'vs 300 s target':>15}  MMA@3  #match")
    for r in rows:
        print(f"{r['workers']:>7} {r['wall']:>8.1f} {r['cpu']:>7.1f} {r['gen']:>13.1f} {r['eval']:>8.1f} "
              f"{1000 * r['eval'] / n_pairs:>8.1f} {100 * r['match_share']:>13.1f}% {base / r['eval']:>8.2f}x "
              f"{r['eval'] / 300:>14.2f}x  {r['mma3']:.3f} {r['n_matches']:.0f}")
    same = all(r["mma3"] == rows[0]["mma3"] and r["n_matches"] == rows[0]["n_matches"] for r in rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} cores (other jobs slow the wall times)")
    print(f"\nresults identical across worker counts: {same}")
    print("cpu s = CPU time of the process (all threads); wall s includes feature generation (feature gen s)")
    print("matching share = time in mutual-NN matching / time in matching + metrics + RANSAC (summed over threads)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
