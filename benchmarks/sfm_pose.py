"""SfM on the Sacre Coeur photos and relative pose on the ScanNet sample, for several extractors.

Prints two Markdown tables; the ratios are against the first model (the baseline, SIFT by default),
measured in the same run. Needs ../shared/data (or LOCALFEAT_SHARED_DATA) and, for learned models,
their weights (LOCALFEAT_WEIGHTS).

    python benchmarks/sfm_pose.py --models sift aliked:top_k=4096 --resize-max 1024
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zlib  # noqa: F401  (before pycolmap: see localfeat.io.colmap._require_pycolmap)
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from localfeat.eval.pose import evaluate_pose  # noqa: E402
from localfeat.registry import parse_model_spec  # noqa: E402
from localfeat.sfm import reconstruct  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sift:max_keypoints=4096", "aliked:top_k=4096"],
                        help="extractor specs NAME[:key=value,...]; the first is the baseline")
    parser.add_argument("--data", default=os.environ.get("LOCALFEAT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--resize-max", type=int, default=1024, help="SfM extraction size")
    parser.add_argument("--pose-resize-max", type=int, default=640, help="pose extraction size (SuperGlue: 640)")
    parser.add_argument("--ransac-thresh", type=float, default=2.0,
                        help="pixels at full ScanNet resolution (2 px = SuperGlue's 1 px at 640x480)")
    parser.add_argument("--output", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--skip-sfm", action="store_true")
    parser.add_argument("--skip-pose", action="store_true")
    args = parser.parse_args()
    data = Path(args.data)
    out = Path(args.output or tempfile.mkdtemp(prefix="localfeat_sfm_pose_"))
    if not args.output:
        print(f"runs kept in {out}")

    if not args.skip_sfm:
        rows = []
        for spec in args.models:
            name, conf = parse_model_spec(spec)
            conf.setdefault("resize_max", args.resize_max)
            start = time.perf_counter()
            s = reconstruct(data / "sfm_sacre_coeur_hloc" / "mapping", out / f"sfm_{name}", model=name, conf=conf)
            rows.append((spec, s, time.perf_counter() - start))
        base = rows[0][1]
        print("\nSfM, Sacre Coeur (10 photos), exhaustive pairs\n")
        print("| model | registered | points3D | track length | reproj. error (px) | points vs baseline | time (s) |")
        print("|---|---|---|---|---|---|---|")
        for spec, s, seconds in rows:
            ratio = s["num_points3d"] / max(base["num_points3d"], 1)
            print(f"| {spec} | {s['num_registered']}/{s['num_images']} | {s['num_points3d']} | "
                  f"{s['mean_track_length']:.2f} | {s['mean_reprojection_error']:.3f} | {ratio:.2f}x | {seconds:.0f} |")

    if not args.skip_pose:
        rows = []
        scannet = data / "scannet_sample_superglue"
        for spec in args.models:
            name, conf = parse_model_spec(spec)
            conf["resize_max"] = args.pose_resize_max
            r = evaluate_pose(scannet / "scannet_sample_pairs_with_gt.txt", scannet / "images", model=name, conf=conf,
                              ransac_thresh=args.ransac_thresh, output=out / "pose")
            rows.append((spec, r))
        base = rows[0][1]
        print(f"\nRelative pose, ScanNet sample (15 pairs), extraction at {args.pose_resize_max} px, "
              f"RANSAC {args.ransac_thresh} px\n")
        print("| model | AUC@5 | AUC@10 | AUC@20 | AUC@20 vs baseline | matches | inliers |")
        print("|---|---|---|---|---|---|---|")
        for spec, r in rows:
            ratio = r["auc@20"] / base["auc@20"] if base["auc@20"] > 0 else float("nan")
            print(f"| {spec} | {100 * r['auc@5']:.2f} | {100 * r['auc@10']:.2f} | {100 * r['auc@20']:.2f} | "
                  f"{ratio:.2f}x | {r['mean_num_matches']:.0f} | {r['mean_num_inliers']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
