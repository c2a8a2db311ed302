"""Verb `sfm`: extract, match, COLMAP database, verification, incremental mapping, summary."""
from __future__ import annotations

from .args import add_command, add_matcher_args, add_model_args, matcher_spec, model_spec


def _summary_text(summary: dict) -> str:
    from ..sfm import SUMMARY_KEYS

    lines = []
    for key in SUMMARY_KEYS:
        value = summary[key]
        lines.append(f"  {key:24s} {value:.3f}" if isinstance(value, float) else f"  {key:24s} {value}")
    return "\n".join(lines)


def cmd_sfm(args) -> int:
    from ..config import parse_conf_items
    from ..sfm import reconstruct

    model, conf = model_spec(args)
    matcher, matcher_conf = matcher_spec(args)
    pairs = " ".join(args.pairs)
    mapper_options = parse_conf_items(args.mapper)
    summary = reconstruct(args.images, args.output, model=model, conf=conf, matcher=matcher,
                          matcher_conf=matcher_conf, pairs=pairs, camera_model=args.camera_model,
                          camera_per_folder=args.camera_per_folder, default_focal_factor=args.default_focal_factor,
                          seed=args.seed, num_threads=args.colmap_threads, mapper_options=mapper_options,
                          verbose=args.verbose_colmap)
    print(f"sfm -> {args.output} ({summary['num_reconstructions']} reconstruction(s); the largest is in "
          f"{args.output}/sparse and {args.output}/sparse_text)")
    print(_summary_text(summary))
    print(f"summary written to {args.output}/summary.json")
    return 0 if summary["num_registered"] > 0 else 1


def register(sub, groups) -> None:
    p = add_command(sub, "sfm", "structure-from-motion: extract, match, COLMAP database, verification, "
                    "incremental mapping (pycolmap), summary",
                    "localfeat sfm photos/ -o out/ --model sift --conf max_keypoints=4096 --pairs exhaustive",
                    cmd_sfm)
    p.add_argument("images", help="image folder (recursive), glob or list file")
    p.add_argument("-o", "--output", required=True, help="output folder (features, matches, database, models)")
    add_model_args(p)
    add_matcher_args(p, conf_help="matcher config (default: mutual NN, plus ratio=0.8 for sift)")
    p.add_argument("--pairs", nargs="+", default=["exhaustive"], metavar="SPEC",
                   help="'exhaustive' (default), 'sequential K', or a pairs file")
    p.add_argument("--camera-model", default="SIMPLE_RADIAL", help="COLMAP camera model of new cameras")
    p.add_argument("--camera-per-folder", action="store_true", help="one shared camera per image folder")
    p.add_argument("--default-focal-factor", type=float, default=1.2,
                   help="focal = factor * max(W, H) without EXIF")
    p.add_argument("--seed", type=int, default=0, help="random seed of COLMAP's RANSAC and mapper")
    p.add_argument("--colmap-threads", type=int, default=-1, metavar="N",
                   help="threads of COLMAP's matching verification and mapper (default -1: all cores; with more "
                        "than 1, COLMAP's result can change from run to run even with a fixed seed)")
    p.add_argument("--mapper", nargs="*", default=[], metavar="KEY=VALUE",
                   help="pycolmap IncrementalPipelineOptions, e.g. --mapper mapper.abs_pose_min_num_inliers=15")
    p.add_argument("--verbose-colmap", action="store_true", help="show COLMAP's own log lines")
