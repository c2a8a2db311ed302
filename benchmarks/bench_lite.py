"""lite against XFeat, ALIKE-t, ALIKED-n16 and SIFT, all measured in the same run.

HPatches real sequences of ../shared/data/hpatches_subset (D2-Net protocol: mutual NN, MMA in
original-image pixels, homography accuracy at 3 px by the ALIKE protocol), images at a longer side of 640,
2,048 keypoints: each model's 2,048 best (ALIKE-t and ALIKED-n16 without their default score threshold of 0.2,
which keeps 1,000-1,900 points on these images and raises MMA as any stricter selection does; ALIKE-t is also
run with it, as an extra row; the table's keypoints column is the mean per image); CPU seconds per image with
`--threads` torch threads (median over 3 rounds of the 12 images, each model in a fresh process, after a
warm-up); relative-pose AUC on the ScanNet sample (15 pairs, extraction at 640, RANSAC 2 px at full resolution).
Needs ../shared/data (or LOCALFEAT_SHARED_DATA).

    python benchmarks/bench_lite.py                  # the table of docs/lite.md
    python benchmarks/bench_lite.py --weights runs/lite/weights.pt --skip-pose
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))
os.environ.setdefault("LOCALFEAT_WEIGHTS", os.pathsep.join(str(p) for p in sorted(DATA.glob("weights_*"))))

from localfeat.eval.hpatches import EvalSettings, ExtractorSource, evaluate_hpatches  # noqa: E402
from localfeat.eval.pose import evaluate_pose  # noqa: E402
from localfeat.io.images import read_image  # noqa: E402
from localfeat.config import parse_model_spec  # noqa: E402
from localfeat.registry import load_extractor  # noqa: E402

MODELS = ("lite", "xfeat", "alike:variant=alike-t,scores_th=None", "aliked:variant=aliked-n16,scores_th=None", "sift",
          "alike:variant=alike-t")


def image_times(spec: str, images: list[Path], resize_max: int, keypoints: int) -> list[float]:
    """CPU seconds of each image (after a warm-up) with one model, in this process."""
    name, conf = parse_model_spec(spec)
    ex = load_extractor(name, **{**conf, "resize_max": resize_max, "max_keypoints": keypoints, "device": "cpu"})
    arrays = [read_image(p, ex.input_mode) for p in images]
    ex.extract(arrays[0])  # warm-up
    times = []
    for a in arrays:
        t = time.perf_counter()
        ex.extract(a)
        times.append(time.perf_counter() - t)
    return times


def seconds_per_image(specs: list[str], root: str, resize_max: int, keypoints: int, threads: int,
                      rounds: int = 3) -> dict:
    """Median CPU seconds per image of every model, each timed in a fresh process (as a user runs one model:
    in one process, a model run after ALIKED-n16 slows down by up to 1.5x, from the allocator's state),
    `rounds` times, the order of the models reversed every other round so that load drifts hit all alike."""
    import json
    import subprocess

    times: dict = {spec: [] for spec in specs}
    for r in range(rounds):
        for spec in (specs if r % 2 == 0 else specs[::-1]):
            out = subprocess.run([sys.executable, __file__, "--time-one", spec, "--root", root, "--resize-max",
                                  str(resize_max), "--keypoints", str(keypoints), "--threads", str(threads)],
                                 capture_output=True, text=True, check=True)
            times[spec] += json.loads(out.stdout.strip().splitlines()[-1])
    return {spec: float(np.median(t)) for spec, t in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--weights", default=None, help="lite weights file (default: the packaged weights)")
    p.add_argument("--resize-max", type=int, default=640)
    p.add_argument("--keypoints", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--root", default=str(DATA / "hpatches_subset"), help="HPatches-format folder")
    p.add_argument("--rounds", type=int, default=3, help="timing passes over the images (one process each)")
    p.add_argument("--time-one", metavar="SPEC", help=argparse.SUPPRESS)  # internal: time one model, print JSON
    p.add_argument("--skip-pose", action="store_true")
    p.add_argument("--output", default=None, help="keep the runs here (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.time_one:
        import json

        print(json.dumps(image_times(args.time_one, sorted(Path(args.root).glob("*/*.ppm")), args.resize_max,
                                     args.keypoints)))
        return 0
    out = Path(args.output or tempfile.mkdtemp(prefix="localfeat_bench_lite_"))
    specs = [s + (f",weights={args.weights}" if s == "lite" and args.weights else "")
             if ":" in s else (s + (f":weights={args.weights}" if s == "lite" and args.weights else ""))
             for s in args.models]
    sources = [ExtractorSource(s, max_size=args.resize_max, conf={"max_keypoints": args.keypoints}) for s in specs]
    res = evaluate_hpatches(args.root, sources, out / "hpatches", EvalSettings(top_k=args.keypoints), exclude=(),
                            plot=True)
    images = sorted(Path(args.root).glob("*/*.ppm"))
    seconds = seconds_per_image(specs, args.root, args.resize_max, args.keypoints, args.threads, args.rounds)
    rows = []
    for spec, label in zip(specs, [s.label for s in sources]):
        m = res["methods"][label]
        mma = m["mma_overall"]
        hom = m["homography_accuracy"]["3"]
        sec = seconds[spec]
        pose = None
        if not args.skip_pose:
            name, conf = parse_model_spec(spec)
            scannet = DATA / "scannet_sample_superglue"
            pose = evaluate_pose(scannet / "scannet_sample_pairs_with_gt.txt", scannet / "images", model=name,
                                 conf={**conf, "resize_max": 640, "max_keypoints": args.keypoints},
                                 ransac_thresh=2.0, output=out / "pose")
        rows.append((spec, mma, hom, m.get("n_features"), sec, pose))
    print(f"\n{len(images)} images of {args.root} at a longer side of {args.resize_max}, {args.keypoints} keypoints, "
          f"mutual NN; {torch.get_num_threads()} threads; CPU: {cpu_name()}\n")
    print("| model | keypoints | MMA@1 | MMA@3 | MMA@5 | hom. acc.@3 | pose AUC@5/10/20 (ScanNet) | s/image | vs XFeat |")
    print("|---|---|---|---|---|---|---|---|---|")
    xfeat_sec = next((r[4] for r in rows if r[0].startswith("xfeat")), float("nan"))
    for spec, mma, hom, n_features, sec, pose in rows:
        pose_txt = "-" if pose is None else "/".join(f"{100 * pose[k]:.1f}" for k in ("auc@5", "auc@10", "auc@20"))
        print(f"| {spec} | {n_features:.0f} | {mma[0]:.3f} | {mma[2]:.3f} | {mma[4]:.3f} | {hom:.3f} | {pose_txt} | {sec:.3f} | "
              f"{sec / xfeat_sec:.2f}x |")
    print(f"\nruns kept in {out}")
    return 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
