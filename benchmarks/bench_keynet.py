"""Key.Net CPU time vs the original's recorded timings (shared/data/reference/keynet/timings.json).

Input as the reference: v_dogman/1.ppm resized to 640 x 480 (INTER_LINEAR), grey. Measures the score-map
forward alone and the full multi-scale detection (num_points 5000, descriptor off, as the reference's
zero-stub descriptor), 1 warm-up then the median of --repeat runs, with the load average beside it.

    python benchmarks/bench_keynet.py --shared ../shared/data
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import cv2
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    shared = Path(args.shared)
    os.environ.setdefault("LOCALFEAT_WEIGHTS", str(shared / "weights_keynet"))
    if args.threads:
        torch.set_num_threads(args.threads)
    from localfeat import load_extractor

    ref = json.loads((shared / "reference" / "keynet" / "timings.json").read_text())["results"]
    img = cv2.resize(cv2.imread(str(shared / "hpatches_subset" / "v_dogman" / "1.ppm"), cv2.IMREAD_GRAYSCALE),
                     (640, 480), interpolation=cv2.INTER_LINEAR)
    ex = load_extractor("keynet", descriptor=None, device="cpu")
    t = torch.from_numpy(img).float().div(255.0)[None, None]

    def timed(fn):
        fn()
        runs = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    rows = [("score-map forward", timed(lambda: ex.score_map(t)), ref["keynet_scoremap_forward"]["median_s"]),
            ("multi-scale detection", timed(lambda: ex.detect(img)), ref["keynet_multiscale_detection"]["median_s"])]
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'what':24s} {'localfeat s':>12s} {'original s':>11s} {'ratio':>7s}")
    for name, ours, theirs in rows:
        print(f"{name:24s} {ours:12.3f} {theirs:11.3f} {ours / theirs:7.2f}")


if __name__ == "__main__":
    main()
