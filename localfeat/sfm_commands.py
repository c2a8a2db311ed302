"""CLI verbs of the COLMAP / SfM / pose / reconstruction-dataset area.

    localfeat export colmap   --features F --matches M --images DIR --database out.db
    localfeat import colmap   DATABASE -o features.h5 [--matches matches.h5]
    localfeat sfm             IMAGES -o OUT --model NAME [--matcher NAME] [--pairs exhaustive|sequential K|FILE]
    localfeat eval pose       --pairs FILE --images DIR --model NAME
    localfeat dataset from-colmap MODEL_DIR IMAGES -o DATASET
    localfeat dataset merge   DATASET... -o DATASET
"""
from __future__ import annotations



def _model_args(parser, default_model: str = "sift") -> None:
    parser.add_argument("--model", default=default_model, help="registered extractor (see `localfeat models`)")
    parser.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extractor config, e.g. --conf max_keypoints=4096")
    parser.add_argument("--resize-max", type=int, default=None,
                        help="downscale images so that max(H, W) <= N before extraction")
    parser.add_argument("--matcher", default="nearest_neighbor", help="registered matcher")
    parser.add_argument("--matcher-conf", nargs="*", default=None, metavar="KEY=VALUE",
                        help="matcher config (default: mutual NN, plus ratio=0.8 for sift)")


def _confs(args) -> tuple[dict, dict | None]:
    from .registry import parse_conf_items

    conf = parse_conf_items(args.conf)
    if args.resize_max is not None:
        conf["resize_max"] = args.resize_max
    matcher_conf = parse_conf_items(args.matcher_conf) if args.matcher_conf is not None else None
    return conf, matcher_conf


# ------------------------------------------------------------------------------------ verbs
def cmd_export_colmap(args) -> int:
    from .io.colmap import export_colmap
    from .pairs import read_pairs

    ids = export_colmap(args.features, args.matches, args.database, images=args.images,
                        pairs=read_pairs(args.pairs) if args.pairs else None, camera_model=args.camera_model,
                        default_focal_factor=args.default_focal_factor,
                        camera_per_folder=args.camera_per_folder, min_match_score=args.min_match_score,
                        verified=args.verified, overwrite=args.overwrite)
    print(f"wrote {len(ids)} images to {args.database} (keypoints shifted by +0.5 to COLMAP's convention)")
    return 0


def cmd_import_colmap(args) -> int:
    from .io.colmap import import_colmap

    names = import_colmap(args.database, args.output, matches_out=args.matches, verified=args.verified,
                          overwrite=args.overwrite)
    extra = f" and matches into {args.matches}" if args.matches else ""
    print(f"imported keypoints of {len(names)} images into {args.output}{extra} (shifted by -0.5)")
    return 0


def _summary_text(summary: dict) -> str:
    from .sfm import SUMMARY_KEYS

    lines = []
    for key in SUMMARY_KEYS:
        value = summary[key]
        lines.append(f"  {key:24s} {value:.3f}" if isinstance(value, float) else f"  {key:24s} {value}")
    return "\n".join(lines)


def cmd_sfm(args) -> int:
    from .sfm import reconstruct

    from .registry import parse_conf_items

    conf, matcher_conf = _confs(args)
    pairs = " ".join(args.pairs)
    mapper_options = parse_conf_items(args.mapper)
    summary = reconstruct(args.images, args.output, model=args.model, conf=conf, matcher=args.matcher,
                          matcher_conf=matcher_conf, pairs=pairs, camera_model=args.camera_model,
                          camera_per_folder=args.camera_per_folder, default_focal_factor=args.default_focal_factor,
                          seed=args.seed, mapper_options=mapper_options, verbose=args.verbose_colmap)
    print(f"sfm -> {args.output} ({summary['num_reconstructions']} reconstruction(s); the largest is in "
          f"{args.output}/sparse and {args.output}/sparse_text)")
    print(_summary_text(summary))
    print(f"summary written to {args.output}/summary.json")
    return 0 if summary["num_registered"] > 0 else 1


def cmd_eval_pose(args) -> int:
    from .eval.pose import POSE_AUC_THRESHOLDS, evaluate_pose

    conf, matcher_conf = _confs(args)
    result = evaluate_pose(args.pairs, args.images, model=args.model, conf=conf, matcher=args.matcher,
                           matcher_conf=matcher_conf, ransac_thresh=args.ransac_thresh, estimator=args.estimator,
                           max_pairs=args.max_pairs, output=args.output, overwrite=args.overwrite)
    ident = result["identity"]
    print(f"pose: {ident['model']} ({ident['conf_hash']}) + {ident['matcher']}, {result['num_pairs']} pairs, "
          f"RANSAC {ident['estimator']} {ident['ransac_thresh']} px")
    print("| " + " | ".join(f"AUC@{t}" for t in POSE_AUC_THRESHOLDS) + " | matches | inliers | failures |")
    print("|" + "---|" * (len(POSE_AUC_THRESHOLDS) + 3))
    print("| " + " | ".join(f"{100 * result[f'auc@{t}']:.2f}" for t in POSE_AUC_THRESHOLDS)
          + f" | {result['mean_num_matches']:.1f} | {result['mean_num_inliers']:.1f} | {result['failures']} |")
    if args.output:
        print(f"results in {args.output}")
    return 0


def cmd_dataset_from_colmap(args) -> int:
    from .datasets.colmap_scenes import build_scene

    entry = build_scene(args.model_dir, args.images, args.output, scene=args.scene,
                        depth_maps=None if args.no_dense else (args.depth_maps or "auto"),
                        min_shared=args.min_shared, min_overlap=args.min_overlap,
                        max_pairs_per_image=args.max_pairs_per_image, image_mode=args.image_mode,
                        overwrite=args.overwrite)
    print(f"scene {entry['name']}: {entry['num_images']} images, {entry['num_pairs']} pairs, "
          f"{entry['depth_source']} depth -> {args.output}/index.json")
    return 0


def cmd_dataset_merge(args) -> int:
    from .datasets.colmap_scenes import merge_datasets

    index = merge_datasets(args.datasets, args.output, image_mode=args.image_mode)
    print(f"{args.output}: {len(index['scenes'])} scenes: " + ", ".join(s["name"] for s in index["scenes"]))
    return 0


# ------------------------------------------------------------------------------------ parser
def register(subparsers, add_command, groups) -> None:
    p = add_command(groups["export"], "colmap", "write features and matches to a new COLMAP database",
                    "localfeat export colmap --features features.h5 --matches matches.h5 --images photos/ "
                    "--database out.db", cmd_export_colmap)
    p.add_argument("--features", required=True, help="features.h5 (FeatureStore)")
    p.add_argument("--matches", default=None, help="matches.h5 (MatchStore); without it, keypoints only")
    p.add_argument("--images", default=None, help="image root (for EXIF focal lengths)")
    p.add_argument("--database", required=True, help="COLMAP database to create")
    p.add_argument("--pairs", default=None, metavar="FILE", help="only these pairs (default: every stored pair)")
    p.add_argument("--camera-model", default="SIMPLE_RADIAL",
                   help="COLMAP camera model: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV")
    p.add_argument("--default-focal-factor", type=float, default=1.2,
                   help="focal = factor * max(W, H) when the image has no EXIF focal length")
    p.add_argument("--camera-per-folder", action="store_true", help="one shared camera per image folder")
    p.add_argument("--min-match-score", type=float, default=None, help="drop matches scored below this")
    p.add_argument("--verified", action="store_true",
                   help="also store all matches as verified two-view geometries (skip COLMAP's verification)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing database")

    p = add_command(groups["import"], "colmap", "read the keypoints (and matches) of a COLMAP database",
                    "localfeat import colmap database.db -o features.h5 --matches matches.h5", cmd_import_colmap)
    p.add_argument("database")
    p.add_argument("-o", "--output", required=True, help="features.h5 to write")
    p.add_argument("--matches", default=None, help="also write the matches to this matches.h5")
    p.add_argument("--verified", action="store_true", help="import the verified inlier matches instead of raw ones")
    p.add_argument("--overwrite", action="store_true", help="start the outputs from scratch")

    p = add_command(subparsers, "sfm", "structure-from-motion: extract, match, COLMAP database, verification, "
                    "incremental mapping (pycolmap), summary",
                    "localfeat sfm photos/ -o out/ --model sift --conf max_keypoints=4096 --pairs exhaustive",
                    cmd_sfm)
    p.add_argument("images", help="image folder (recursive), glob or list file")
    p.add_argument("-o", "--output", required=True, help="output folder (features, matches, database, models)")
    _model_args(p)
    p.add_argument("--pairs", nargs="+", default=["exhaustive"], metavar="SPEC",
                   help="'exhaustive' (default), 'sequential K', or a pairs file")
    p.add_argument("--camera-model", default="SIMPLE_RADIAL", help="COLMAP camera model of new cameras")
    p.add_argument("--camera-per-folder", action="store_true", help="one shared camera per image folder")
    p.add_argument("--default-focal-factor", type=float, default=1.2,
                   help="focal = factor * max(W, H) without EXIF")
    p.add_argument("--seed", type=int, default=0, help="random seed of COLMAP's RANSAC and mapper")
    p.add_argument("--mapper", nargs="*", default=[], metavar="KEY=VALUE",
                   help="pycolmap IncrementalPipelineOptions, e.g. --mapper mapper.abs_pose_min_num_inliers=15")
    p.add_argument("--verbose-colmap", action="store_true", help="show COLMAP's own log lines")

    p = add_command(groups["eval"], "pose", "relative pose AUC@5/10/20 on pairs with ground-truth K and T_0to1",
                    "localfeat eval pose --pairs scannet_sample_pairs_with_gt.txt --images scannet/images "
                    "--model sift --resize-max 640 --ransac-thresh 2", cmd_eval_pose)
    p.add_argument("--pairs", required=True, help="SuperGlue-format text file or XFeat-style JSON of pairs")
    p.add_argument("--images", required=True, help="folder the pair names are relative to")
    _model_args(p)
    p.add_argument("--ransac-thresh", type=float, default=1.0, help="RANSAC threshold in pixels")
    p.add_argument("--estimator", choices=["opencv", "pycolmap"], default="opencv")
    p.add_argument("--max-pairs", type=int, default=None, help="evaluate only the first N pairs")
    p.add_argument("--output", default=None, help="folder for the result JSON (reused when present)")
    p.add_argument("--overwrite", action="store_true", help="recompute even if the result JSON exists")

    ds = groups["dataset"]
    p = add_command(ds, "from-colmap", "training dataset from a COLMAP model: K, pose, depth per image, "
                    "covisible pairs, relative paths",
                    "localfeat dataset from-colmap out/sparse photos/ -o dataset/ --scene sacre_coeur",
                    cmd_dataset_from_colmap)
    p.add_argument("model_dir", help="COLMAP model folder (cameras/images/points3D .bin or .txt)")
    p.add_argument("images", help="the images of the model")
    p.add_argument("-o", "--output", required=True, help="dataset folder (created, or extended with a scene)")
    p.add_argument("--scene", default=None, help="scene name (default: the model folder's parent name)")
    p.add_argument("--depth-maps", default=None,
                   help="folder of COLMAP dense depth maps (default: MODEL_DIR/../stereo/depth_maps if present)")
    p.add_argument("--no-dense", action="store_true", help="ignore dense depth maps; sparse depth only")
    p.add_argument("--min-shared", type=int, default=20, help="pairs share at least N 3D points")
    p.add_argument("--min-overlap", type=float, default=0.1, help="pairs have shared/min(points) >= this")
    p.add_argument("--max-pairs-per-image", type=int, default=None, help="keep the best N pairs of each image")
    p.add_argument("--image-mode", choices=["copy", "hardlink"], default="copy",
                   help="how images enter the dataset")
    p.add_argument("--overwrite", action="store_true", help="replace a scene of the same name")

    p = add_command(ds, "merge", "merge the scenes of several datasets into one",
                    "localfeat dataset merge ds_a/ ds_b/ -o ds_all/", cmd_dataset_merge)
    p.add_argument("datasets", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--image-mode", choices=["copy", "hardlink"], default="copy")


__all__ = ["register"]
