"""LightGlue / LighterGlue in bf16 against fp32, official weights, the reference pairs of reference/official.

For each (matcher, features, mode): seconds per pair (median of --rounds, fp32 and bf16 alternated, after a
warm-up each), the ratio bf16 / fp32, the match agreement (IoU of the two match sets), the number of matches
of each and the layers run. Needs `make weights` (LightGlue files in .cache/weights).

    .venv/bin/python benchmarks/bench_glue_precision.py --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))
OFFICIAL = SHARED / "reference" / "official"
os.environ.setdefault("LOCALFEAT_WEIGHTS", os.pathsep.join(
    [str(p) for p in sorted(SHARED.glob("weights_*"))] + [str(REPO / ".cache" / "weights")]))

from localfeat import Features, load_matcher  # noqa: E402
from localfeat.hardware import cpu_info  # noqa: E402

CASES = [("lightglue", "disk", "adaptive"), ("lightglue", "disk", "full"), ("lightglue", "aliked", "adaptive"),
         ("lightglue", "aliked", "full"), ("lighterglue", "xfeat", "default")]


def pair(features: str) -> tuple[Features, Features]:
    """The two stored feature sets of the reference pair of `features` (their files name the scores
    'keypoint_scores' for LightGlue, 'scores' for LighterGlue)."""
    name, scores = (("lighterglue_sacre_coeur_1_2", "scores") if features == "xfeat"
                    else (f"lightglue_{features}_sacre_coeur_1_2", "keypoint_scores"))
    ref = dict(np.load(OFFICIAL / f"{name}.npz"))
    return tuple(Features(ref[f"keypoints{i}"], ref[f"{scores}{i}"], ref[f"descriptors{i}"],
                          tuple(int(v) for v in ref[f"image_size{i}"])) for i in (0, 1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    info = cpu_info()
    print(f"CPU: {info.name}; native bf16: {info.has_bf16}; {args.threads} threads; median of {args.rounds}\n")
    print("| matcher | features | mode | fp32 s | bf16 s | bf16 / fp32 | match IoU | matches fp32 / bf16 | layers |")
    print("|---|---|---|---:|---:|---:|---:|---|---|")
    for matcher, features, mode in CASES:
        f0, f1 = pair(features)
        conf = {} if matcher == "lighterglue" else {"features": features}
        if mode == "full":
            conf.update(depth_confidence=None, width_confidence=None)
        m = {prec: load_matcher(matcher, device="cpu", precision=prec, **conf) for prec in ("fp32", "bf16")}
        times = {prec: [] for prec in m}
        outs = {prec: m[prec].run(f0, f1) for prec in m}  # warm-up
        for r in range(args.rounds):
            for prec in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                t = time.perf_counter()
                outs[prec] = m[prec].run(f0, f1)
                times[prec].append(time.perf_counter() - t)
        sets = {prec: set(map(tuple, o["matches"].numpy().tolist())) for prec, o in outs.items()}
        iou = len(sets["fp32"] & sets["bf16"]) / max(1, len(sets["fp32"] | sets["bf16"]))
        t32, t16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
        print(f"| {matcher} | {features} | {mode} | {t32:.3f} | {t16:.3f} | {t16 / t32:.2f} | {iou:.3f} | "
              f"{len(sets['fp32'])} / {len(sets['bf16'])} | {outs['fp32']['stop']} / {outs['bf16']['stop']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
