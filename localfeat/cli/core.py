"""Verbs `extract`, `match`, `view` and `models`: the pipeline's files in, files out."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .args import _merge_spec, add_command, add_engine_args, add_matcher_args, add_model_args, add_pair_args, \
    engine_options, matcher_spec, model_spec, resolve_pairs
from .args import EXIT_PARTIAL

DEFAULT_MAX_LINES = 300  # `view`: more lines than this hide the pictures they are drawn on


def cmd_extract(args) -> int:
    from ..pipeline import extract

    name, conf = model_spec(args)
    report = extract(args.images, args.output, model=name, conf=conf, on_error=args.on_error,
                     overwrite=args.overwrite, root=args.root, layout=args.layout, engine=args.engine,
                     engine_options=engine_options(args))
    print(f"extract -> {args.output}: {report.summary()}")
    return EXIT_PARTIAL if report.failed else 0


def cmd_match_images(args) -> int:
    """`match --model NAME IMAGES`: a detector-free matcher on image pairs -> pair matches (+ quantised files)."""
    from ..config import ConfigError
    from ..dense import is_detector_free, match_pairs, quantize
    from ..io.images import list_images

    name, conf = _merge_spec("--model", args.model, args.conf, "--conf")
    if args.resize_max is not None:
        conf["resize_max"] = args.resize_max
    if not is_detector_free(name):
        raise ConfigError(f"--model {name!r} is not a detector-free matcher (loftr, efficientloftr, xfeat_star); "
                          "for an extractor, run `localfeat extract` then `localfeat match features.h5`")
    root, names = list_images(args.features)
    pairs = resolve_pairs(args, lambda: names)
    report = match_pairs(root, args.output, pairs, model=name, conf=conf, overwrite=args.overwrite)
    print(f"match -> {args.output}: {report.summary()}")
    if args.quantize:
        done = [p for p in pairs if f"{p[0]} {p[1]}" not in dict(report.failed)]
        n = quantize(args.output, args.quantize[0], args.quantize[1], cell=args.cell, pairs=done)
        print(f"quantised to {args.cell}-px cells: {n} images -> {args.quantize[0]}, {args.quantize[1]}")
    return 3 if report.failed else 0


def cmd_match(args) -> int:
    from ..io.h5 import FeatureStore
    from ..pipeline import match

    if args.model is not None:
        if args.engine != "local":
            raise ValueError("--engine ray runs `match features.h5`; detector-free matching (--model) runs locally")
        return cmd_match_images(args)
    name, conf = matcher_spec(args, conf_attr="conf")
    pairs = resolve_pairs(args, lambda: FeatureStore(args.features, mode="r").names())
    report = match(args.features, args.output, pairs, matcher=name, conf=conf or {}, overwrite=args.overwrite,
                   layout=args.layout, engine=args.engine, engine_options=engine_options(args, "pairs"))
    print(f"match -> {args.output}: {report.summary()}")
    return EXIT_PARTIAL if report.failed else 0


def _load_inliers(path: str) -> np.ndarray:
    """A boolean mask (M,) from a .npy file or a text file of 0/1 values."""
    if path.endswith(".npy"):
        return np.load(path).astype(bool)
    return np.loadtxt(path).astype(bool).reshape(-1)


def _score_legend(scores: np.ndarray) -> list:
    from ..viz import score_colors

    low, high = score_colors(np.array([0.0, 1.0]))
    return [(low, f"score {float(scores.min()):.2f}"), (high, f"score {float(scores.max()):.2f}")]


def view(args) -> tuple[Path, str]:
    """Keypoints (one image), matches (two images) or --heatmaps (one image) as a picture in the format of
    the output's extension, with a title (models, counts) and a legend. Returns (path, one-line summary)."""
    from ..geometry import fundamental_inliers
    from ..io.h5 import FeatureStore, MatchStore, StoreError
    from ..io.images import read_image, resize_max
    from ..registry import get_class, load_extractor
    from ..viz import GREEN, RED, draw_heatmaps, draw_keypoints, draw_matches, save_image, score_colors, \
        with_header

    if len(args.images) not in (1, 2):
        raise ValueError(f"view takes one or two images, got {len(args.images)}")
    if args.inliers and args.ransac:
        raise ValueError("give --inliers FILE or --ransac, not both")
    if args.max_lines < 0:
        raise ValueError(f"--max-lines must be >= 0 (0 = every match), got {args.max_lines}")
    paths = [Path(p) for p in args.images]
    images = [read_image(p) for p in paths]

    def store_name(path: Path) -> str:
        return path.relative_to(args.root).as_posix() if args.root else path.name

    extractor = None
    if args.heatmaps or not args.features:
        name, conf = model_spec(args)
        extractor = load_extractor(name, **conf)
    if args.heatmaps:
        if not hasattr(extractor, "dense_maps"):
            raise ValueError(f"model {extractor.name!r} has no dense maps to show (--heatmaps)")
        # Heatmaps of the image the model sees (honours --resize-max; large images stay fast).
        shown, _ = resize_max(images[0], extractor.conf.get("resize_max"))
        # Each panel carries its own title (map name and value range).
        return save_image(args.output, draw_heatmaps(shown, extractor.dense_maps(shown))), \
            f"dense maps of {extractor.name}"
    if args.features:
        store = FeatureStore(args.features, mode="r")
        missing = [store_name(p) for p in paths if store_name(p) not in store]
        if missing:
            names = store.names()
            raise StoreError(
                f"{args.features} has no image named {missing[0]!r} (it holds {len(names)}, e.g. "
                f"{names[:3]}); store names are paths relative to the image root: pass --root FOLDER")
        identity = store.stored_identity()
        model_name = identity[0] if identity else None
        feats = [store.get(store_name(p)) for p in paths]
    else:
        model_name = extractor.name
        feats = [extractor.extract(img) for img in images]
    if len(paths) == 1:
        f = feats[0]
        colors = score_colors(f.scores) if len(f) else None
        summary = f"{len(f)} keypoints ({model_name or 'features'})"
        picture = with_header(draw_keypoints(images[0], f.keypoints, colors), [f"{paths[0].name}: {summary}"],
                              _score_legend(f.scores) if len(f) else None)
        return save_image(args.output, picture), summary
    if args.matches:
        matches = MatchStore(args.matches, mode="r").get(store_name(paths[0]), store_name(paths[1]),
                                                        num_keypoints=(len(feats[0]), len(feats[1])))
        how = f"{model_name or 'features'}, matches from {Path(args.matches).name}"
    else:
        name, conf = matcher_spec(args, conf_attr="matcher_conf")
        matcher_cls = get_class("matcher", name)
        matcher = matcher_cls(**matcher_cls.conf_for_features(conf or {}, model_name))
        matches = matcher.match(feats[0], feats[1])
        how = f"{model_name or 'features'} + {matcher.name}"
    inliers, legend = None, _score_legend(matches.scores) if len(matches) else None
    counts = f"{len(feats[0])} / {len(feats[1])} keypoints, {len(matches)} matches"
    if args.inliers:
        inliers = _load_inliers(args.inliers)
        counts += f", {int(inliers.sum())} inliers ({Path(args.inliers).name})"
        legend = [(GREEN, "inlier"), (RED, "outlier")]
    elif args.ransac:
        inliers = fundamental_inliers(feats[0].keypoints[matches.indices[:, 0]],
                                      feats[1].keypoints[matches.indices[:, 1]], threshold=args.ransac_px)
        counts += f", {int(inliers.sum())} RANSAC inliers (fundamental matrix, {args.ransac_px:g} px)"
        legend = [(GREEN, "RANSAC inlier"), (RED, "outlier")]
    max_lines = args.max_lines or None
    shown = min(len(matches), max_lines) if max_lines else len(matches)
    lines = [f"{paths[0].name}  |  {paths[1].name}    ({how})",
             counts + (f"; {shown} of {len(matches)} drawn (--max-lines)" if shown < len(matches) else "")]
    picture = draw_matches(images[0], images[1], feats[0].keypoints, feats[1].keypoints, matches.indices,
                           inliers=inliers, scores=matches.scores, max_lines=max_lines)
    return save_image(args.output, with_header(picture, lines, legend)), counts


def cmd_view(args) -> int:
    path, summary = view(args)
    print(f"view -> {path}: {summary}")
    return 0


def cmd_models(args) -> int:
    from ..hub import status
    from ..registry import model_classes

    for kind in ("extractor", "matcher"):
        print(f"{kind}s:")
        for name, cls in model_classes(kind).items():
            defaults = cls.all_defaults()
            print(f"  {name}")
            print("    config: " + ", ".join(f"{k}={v!r}" for k, v in defaults.items()))
            aliases = cls.all_aliases()
            if aliases:
                print("    aliases (upstream names): " + ", ".join(f"{a} -> {k}" for a, k in aliases.items()))
            try:
                specs = cls.weight_specs(defaults)
            except Exception as exc:  # a model's spec table should never break the listing
                specs, note = [], f"unknown ({exc})"
            else:
                note = "not needed" if not specs else "; ".join(status(s) for s in specs)
            print(f"    weights: {note}")
    from ..presets import EXTRACT, MATCH

    print("extract presets (--preset NAME):")
    for p in EXTRACT.values():
        conf = ", ".join(f"{k}={v!r}" for k, v in p.conf.items())
        print(f"  {p.name:16s} {p.model}: {conf}; matcher preset {p.match}")
    print("match presets (match --preset NAME, elsewhere --match-preset NAME):")
    for p in MATCH.values():
        print(f"  {p.name:22s} {p.matcher}: " + ", ".join(f"{k}={v!r}" for k, v in p.conf.items()))
    return 0


def register(sub, groups) -> None:
    p = add_command(sub, "extract", "extract features of images into an HDF5 FeatureStore",
                    "localfeat extract photos/ -o features.h5 --model sift --conf max_keypoints=4096", cmd_extract)
    p.add_argument("images", help="a folder (recursive), a glob in quotes, or a text file listing images")
    p.add_argument("-o", "--output", required=True, help="features.h5 to write (resumed if it exists)")
    # lite: localfeat's own learned model, shipped in the package (no weights lookup or download).
    add_model_args(p, default_model="lite")
    p.add_argument("--root", default=None, help="image root: names are paths relative to it (default: the "
                   "folder; for a list file, its folder if it holds every image, else their deepest common folder)")
    p.add_argument("--layout", choices=["localfeat", "hloc"], default=None,
                   help="file layout of a new output: localfeat (default) or hloc (readable by hloc's code)")
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                   help="bad image: skip it, report it and exit with code 3 at the end (default), or stop")
    p.add_argument("--overwrite", action="store_true", help="start the output from scratch")
    add_engine_args(p)

    p = add_command(sub, "match", "match image pairs of a FeatureStore into an HDF5 MatchStore, or (--model) "
                    "match images with a detector-free matcher (LoFTR, EfficientLoFTR, XFeat*)",
                    "localfeat match features.h5 -o matches.h5 --exhaustive --conf ratio=0.8\n"
                    "  localfeat match --model loftr:pretrained=outdoor_ds photos/ --pairs pairs.txt "
                    "-o pair_matches.h5 --quantize features.h5 matches.h5", cmd_match)
    p.add_argument("features", help="features.h5; with --model: the image folder (recursive), glob or list file")
    p.add_argument("-o", "--output", required=True,
                   help="matches.h5 to write (resumed if it exists); with --model: the pair matches file "
                        "(keypoints0/keypoints1/scores per pair, see docs/detector_free.md)")
    add_pair_args(p)
    add_matcher_args(p, conf_option="--conf", preset_option="--preset")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="a detector-free matcher as NAME or NAME:key=value,... (--conf items go to it)")
    p.add_argument("--resize-max", type=int, default=None,
                   help="with --model: downscale images so that max(H, W) <= N (keypoints in original pixels)")
    p.add_argument("--quantize", nargs=2, metavar=("FEATURES", "MATCHES"), default=None,
                   help="with --model: also write per-image keypoints (grid-quantised) and index matches, "
                        "for `export colmap` / SfM")
    p.add_argument("--cell", type=float, default=8.0, help="grid cell size in pixels for --quantize (default 8)")
    p.add_argument("--layout", choices=["localfeat", "hloc"], default=None,
                   help="file layout of a new output: localfeat (default) or hloc (matches0 / matching_scores0)")
    p.add_argument("--overwrite", action="store_true", help="start the output from scratch")
    add_engine_args(p)

    p = add_command(sub, "view", "draw keypoints of one image, or matches of two, with a title and a legend",
                    "localfeat view a.jpg b.jpg --features features.h5 --matches matches.h5 -o pair.png",
                    cmd_view)
    p.add_argument("images", nargs="+", help="one image (keypoints/heatmaps) or two (matches)")
    p.add_argument("-o", "--output", required=True, help="picture to write; its extension sets the format "
                   "(.png, .jpg, .webp, ...)")
    p.add_argument("--features", help="features.h5; without it, features are extracted with --model")
    p.add_argument("--matches", help="matches.h5 (two images); without it, images are matched with --matcher")
    p.add_argument("--root", default=None, help="image root the store names are relative to "
                   "(default: the folder of each image)")
    add_model_args(p)
    add_matcher_args(p)
    p.add_argument("--inliers", metavar="FILE", help="npy/txt boolean mask (M,) colouring inliers green, outliers red")
    p.add_argument("--ransac", action="store_true",
                   help="colour matches green/red as inliers/outliers of a RANSAC fundamental matrix")
    p.add_argument("--ransac-px", type=float, default=1.0, metavar="PX", help="RANSAC threshold (default 1 px)")
    p.add_argument("--heatmaps", action="store_true", help="draw the model's dense score maps over the image")
    p.add_argument("--max-lines", type=int, default=DEFAULT_MAX_LINES,
                   help=f"draw at most N matches, evenly spread (default {DEFAULT_MAX_LINES}; 0 = all)")

    add_command(sub, "models", "list registered extractors and matchers, defaults and weights status",
                "localfeat models", cmd_models)
