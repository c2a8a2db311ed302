"""The `localfeat` command. Each verb is a thin layer over a Python function.

Verbs of other areas live beside their code and are registered here through
`EXTENSIONS`: modules exposing ``register(subparsers, add_command, groups)``, where
`groups` maps the verb groups 'export', 'import', 'eval' and 'dataset' to their sub-parsers.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

EXTENSIONS: list[str] = [
    # "localfeat.eval.commands",   (each area adds its module here)
    "localfeat.eval.commands",
    "localfeat.sfm_commands",
    "localfeat.train.commands",
    "localfeat.eval.invariance_commands",
    "localfeat.retrieval_commands",
]


def add_command(subparsers, name: str, help: str, example: str, func) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with an example."""
    parser = subparsers.add_parser(name, help=help, description=help,
                                   epilog=f"example:\n  {example}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def add_model_args(parser, default_model: str = "sift") -> None:
    parser.add_argument("--model", default=default_model, help="registered extractor name (see `localfeat models`)")
    parser.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model config, e.g. --conf max_keypoints=2048 rootsift=true")
    parser.add_argument("--resize-max", type=int, default=None,
                        help="downscale images so that max(H, W) <= N before extraction")


def model_conf(args) -> dict:
    from .registry import parse_conf_items

    conf = parse_conf_items(args.conf)
    if getattr(args, "resize_max", None) is not None:
        conf["resize_max"] = args.resize_max
    return conf


# ---------------------------------------------------------------------------------------- verbs
def cmd_extract(args) -> int:
    from .pipeline import extract

    report = extract(args.images, args.output, model=args.model, conf=model_conf(args),
                     on_error=args.on_error, overwrite=args.overwrite)
    print(f"extract -> {args.output}: {report.summary()}")
    return 1 if report.failed and args.on_error == "fail" else 0


def resolve_pairs(args, names_from) -> list:
    from .pairs import exhaustive_pairs, read_pairs, sequential_pairs

    if args.pairs:
        return read_pairs(args.pairs)
    names = names_from()
    if args.sequential:
        return sequential_pairs(names, args.sequential)
    return exhaustive_pairs(names)


def add_pair_args(parser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--exhaustive", action="store_true", help="every pair of images")
    group.add_argument("--sequential", type=int, metavar="K", help="each image with the next K")
    group.add_argument("--pairs", metavar="FILE", help="text file, one `name0 name1` per line")


def cmd_match(args) -> int:
    from .io.h5 import FeatureStore
    from .pipeline import match
    from .registry import parse_conf_items

    pairs = resolve_pairs(args, lambda: FeatureStore(args.features, mode="r").names())
    report = match(args.features, args.output, pairs, matcher=args.matcher,
                   conf=parse_conf_items(args.conf), overwrite=args.overwrite)
    print(f"match -> {args.output}: {report.summary()}")
    return 0


def cmd_view(args) -> int:
    from . import viz

    out = viz.view_command(args)
    print(f"wrote {out}")
    return 0


def cmd_models(args) -> int:
    from .hub import status
    from .registry import model_classes

    for kind in ("extractor", "matcher"):
        print(f"{kind}s:")
        for name, cls in model_classes(kind).items():
            defaults = cls.all_defaults()
            print(f"  {name}")
            print("    config: " + ", ".join(f"{k}={v!r}" for k, v in defaults.items()))
            try:
                specs = cls.weight_specs(defaults)
            except Exception as exc:  # a model's spec table should never break the listing
                specs, note = [], f"unknown ({exc})"
            else:
                note = "not needed" if not specs else "; ".join(status(s) for s in specs)
            print(f"    weights: {note}")
    return 0


def cmd_export_npz(args) -> int:
    from .io.h5 import FeatureStore
    from .io.npz import export_npz

    paths = export_npz(FeatureStore(args.features, mode="r"), args.output, ext=args.ext)
    print(f"wrote {len(paths)} files below {args.output}")
    return 0


def cmd_import_npz(args) -> int:
    from .io.h5 import FeatureStore
    from .io.npz import import_npz

    with FeatureStore(args.output, mode="a") as store:
        names = import_npz(args.folder, store, ext=args.ext, images_root=args.images)
    print(f"imported {len(names)} images into {args.output}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.output))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localfeat", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = add_command(sub, "extract", "extract features of images into an HDF5 FeatureStore",
                    "localfeat extract photos/ -o features.h5 --model sift --conf max_keypoints=4096", cmd_extract)
    p.add_argument("images", help="a folder (recursive), a glob in quotes, or a text file listing images")
    p.add_argument("-o", "--output", required=True, help="features.h5 to write (resumed if it exists)")
    add_model_args(p)
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                   help="bad image: skip it and report at the end (default), or stop")
    p.add_argument("--overwrite", action="store_true", help="start the output from scratch")

    p = add_command(sub, "match", "match image pairs of a FeatureStore into an HDF5 MatchStore",
                    "localfeat match features.h5 -o matches.h5 --exhaustive --conf ratio=0.8", cmd_match)
    p.add_argument("features", help="features.h5")
    p.add_argument("-o", "--output", required=True, help="matches.h5 to write (resumed if it exists)")
    add_pair_args(p)
    p.add_argument("--matcher", default="nearest_neighbor", help="registered matcher name")
    p.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE", help="matcher config")
    p.add_argument("--overwrite", action="store_true", help="start the output from scratch")

    p = add_command(sub, "view", "draw keypoints of one image, or matches of two, as a PNG",
                    "localfeat view a.jpg b.jpg --features features.h5 --matches matches.h5 -o pair.png",
                    cmd_view)
    p.add_argument("images", nargs="+", help="one image (keypoints/heatmaps) or two (matches)")
    p.add_argument("-o", "--output", required=True, help="PNG to write")
    p.add_argument("--features", help="features.h5; without it, features are extracted with --model")
    p.add_argument("--matches", help="matches.h5 (two images); without it, images are matched with --matcher")
    p.add_argument("--root", default=None, help="image root the store names are relative to "
                   "(default: the folder of each image)")
    add_model_args(p)
    p.add_argument("--matcher", default="nearest_neighbor")
    p.add_argument("--inliers", metavar="FILE", help="npy/txt boolean mask (M,) colouring inliers green, outliers red")
    p.add_argument("--heatmaps", action="store_true", help="draw the model's dense score maps over the image")
    p.add_argument("--max-lines", type=int, default=None, help="draw at most N matches")

    add_command(sub, "models", "list registered extractors and matchers, defaults and weights status",
                "localfeat models", cmd_models)

    exp = sub.add_parser("export", help="export features/matches to other formats")
    exp_sub = exp.add_subparsers(dest="export_format", metavar="FORMAT")
    p = add_command(exp_sub, "npz", "write one R2D2/D2-Net-style npz per image",
                    "localfeat export npz features.h5 -o npz_dir --ext r2d2", cmd_export_npz)
    p.add_argument("features")
    p.add_argument("-o", "--output", required=True, help="folder; files are <image name>.<ext>")
    p.add_argument("--ext", default="r2d2")

    imp = sub.add_parser("import", help="import features from other formats")
    imp_sub = imp.add_subparsers(dest="import_format", metavar="FORMAT")
    p = add_command(imp_sub, "npz", "read per-image npz files (R2D2 / D2-Net) into a FeatureStore",
                    "localfeat import npz hpatches/ -o features.h5 --ext d2-net", cmd_import_npz)
    p.add_argument("folder")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--ext", required=True, help="file extension after the image name, e.g. r2d2 or d2-net")
    p.add_argument("--images", default=None, help="image root, for files without `imsize`")

    ev = sub.add_parser("eval", help="evaluate features (HPatches, poses, invariance sweeps)")
    ev_sub = ev.add_subparsers(dest="eval_task", metavar="TASK")

    ds = sub.add_parser("dataset", help="build datasets (e.g. training scenes from COLMAP models)")
    ds_sub = ds.add_subparsers(dest="dataset_verb", metavar="VERB")

    p = add_command(sub, "demo", "run the demo on photos bundled with scikit-image",
                    "localfeat demo -o outputs/demo", cmd_demo)
    p.add_argument("-o", "--output", default="outputs/demo")

    groups = {"export": exp_sub, "import": imp_sub, "eval": ev_sub, "dataset": ds_sub}
    for module in EXTENSIONS:
        importlib.import_module(module).register(sub, add_command, groups)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"localfeat: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    from .hub import WeightsNotFoundError
    from .io.h5 import StoreError
    from .io.images import ImageReadError
    from .registry import ConfigError

    try:
        return args.func(args) or 0
    except (ConfigError, WeightsNotFoundError, StoreError, ImageReadError, FileNotFoundError, ValueError) as exc:
        print(f"localfeat {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
