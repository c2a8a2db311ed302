"""Verb groups `export` and `import`: features and matches to and from other tools' formats
(R2D2 / D2-Net npz files, COLMAP databases)."""
from __future__ import annotations

from .args import add_command


def cmd_export_npz(args) -> int:
    from ..io.h5 import FeatureStore
    from ..io.npz import export_npz

    paths = export_npz(FeatureStore(args.features, mode="r"), args.output, ext=args.ext)
    print(f"wrote {len(paths)} files below {args.output}")
    return 0


def cmd_import_npz(args) -> int:
    from ..io.h5 import FeatureStore
    from ..io.npz import import_npz

    with FeatureStore(args.output, mode="a") as store:
        names = import_npz(args.folder, store, ext=args.ext, images_root=args.images)
    print(f"imported {len(names)} images into {args.output}")
    return 0


def cmd_export_colmap(args) -> int:
    from ..io.colmap import export_colmap
    from ..pairs import read_pairs

    ids = export_colmap(args.features, args.matches, args.database, images=args.images,
                        pairs=read_pairs(args.pairs) if args.pairs else None, camera_model=args.camera_model,
                        default_focal_factor=args.default_focal_factor,
                        camera_per_folder=args.camera_per_folder, min_match_score=args.min_match_score,
                        verified=args.verified, overwrite=args.overwrite)
    print(f"wrote {len(ids)} images to {args.database} (keypoints shifted by +0.5 to COLMAP's convention)")
    return 0


def cmd_import_colmap(args) -> int:
    from ..io.colmap import import_colmap

    names = import_colmap(args.database, args.output, matches_out=args.matches, verified=args.verified,
                          overwrite=args.overwrite)
    extra = f" and matches into {args.matches}" if args.matches else ""
    print(f"imported keypoints of {len(names)} images into {args.output}{extra} (shifted by -0.5)")
    return 0


def register(sub, groups) -> None:
    exp = groups["export"]
    p = add_command(exp, "npz", "write one R2D2/D2-Net-style npz per image",
                    "localfeat export npz features.h5 -o npz_dir --ext r2d2", cmd_export_npz)
    p.add_argument("features")
    p.add_argument("-o", "--output", required=True, help="folder; files are <image name>.<ext>")
    p.add_argument("--ext", default="r2d2")

    p = add_command(exp, "colmap", "write features and matches to a new COLMAP database",
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

    imp = groups["import"]
    p = add_command(imp, "npz", "read per-image npz files (R2D2 / D2-Net) into a FeatureStore",
                    "localfeat import npz hpatches/ -o features.h5 --ext d2-net", cmd_import_npz)
    p.add_argument("folder")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--ext", required=True, help="file extension after the image name, e.g. r2d2 or d2-net")
    p.add_argument("--images", default=None, help="image root, for files without `imsize`")

    p = add_command(imp, "colmap", "read the keypoints (and matches) of a COLMAP database",
                    "localfeat import colmap database.db -o features.h5 --matches matches.h5", cmd_import_colmap)
    p.add_argument("database")
    p.add_argument("-o", "--output", required=True, help="features.h5 to write")
    p.add_argument("--matches", default=None, help="also write the matches to this matches.h5")
    p.add_argument("--verified", action="store_true", help="import the verified inlier matches instead of raw ones")
    p.add_argument("--overwrite", action="store_true", help="start the outputs from scratch")
