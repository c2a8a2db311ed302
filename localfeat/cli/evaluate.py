"""Verb group `eval`: HPatches (`eval hpatches`), relative poses (`eval pose`), invariance sweeps
(`eval invariance`)."""
from __future__ import annotations

from pathlib import Path

from .args import add_command, add_engine_args, add_matcher_args, add_model_args, engine_options, matcher_spec, \
    model_spec

EVAL_EXAMPLE = ("localfeat eval hpatches --root hpatches-sequences-release --model sift "
                "--model aliked:variant=aliked-n16rot,max_keypoints=2048 --top-k 5000 -o out/hpatches "
                "--compare-published R2D2=published_hpatches/r2d2.npy")


def cmd_eval_hpatches(args) -> int:
    from ..datasets.hpatches import D2NET_EXCLUDED
    from ..eval.hpatches import (EvalSettings, ExtractorSource, NpzSource, StoreSource, evaluate_hpatches,
                                 summary_row)
    from ..eval.published import parse_label
    from ..geometry import RansacParams

    from ..config import parse_model_spec
    from ..dense import is_detector_free

    if not args.model and not args.features:
        raise ValueError("give at least one --model SPEC or --features PATH")
    dense = [spec for spec in args.model or [] if is_detector_free(parse_model_spec(spec)[0])]
    if dense:
        _eval_hpatches_detector_free(args, dense)
        if len(dense) == len(args.model or []) and not args.features:
            return 0
    sources = [ExtractorSource(spec, max_size=args.max_size, engine=args.engine, engine_options=engine_options(args))
               for spec in args.model or [] if spec not in dense]
    for item in args.features or []:
        label, path = parse_label(item)
        if path.is_dir():
            if not args.ext:
                raise ValueError(f"--features {path} is a folder of per-image npz files: give their extension "
                                 "with --ext (files are <seq>/<k>.ppm.<ext>, e.g. --ext r2d2)")
            sources.append(NpzSource(path, args.ext, label=label))
        elif path.is_file():
            sources.append(StoreSource(path, label=label))
        else:
            raise FileNotFoundError(f"--features {path}: no such FeatureStore file or npz folder")
    settings = EvalSettings(top_k=args.top_k, ransac=RansacParams(
        method=args.ransac, threshold=args.ransac_threshold, max_iters=args.ransac_iters,
        confidence=args.ransac_confidence))
    exclude = () if args.all_sequences else D2NET_EXCLUDED
    results = evaluate_hpatches(args.root, sources, args.output, settings=settings, exclude=exclude,
                                compare_published=args.compare_published or [], workers=args.workers,
                                cache_dir=args.cache_dir)
    ds = results["dataset"]
    print(f"HPatches: {ds['sequences'].get('i', 0)} i_ + {ds['sequences'].get('v', 0)} v_ sequences, "
          f"{ds['n_pairs']} pairs" + (f"; excluded (D2-Net protocol, --all-sequences keeps them): "
                                     f"{', '.join(ds['excluded'])}" if ds["excluded"] else ""))
    print(f"{'method':40s} MMA@1  MMA@3  MMA@5  MHA@1  MHA@3  MHA@5  #feat   #match")
    rows = list(results["methods"].items()) + [(f"{k} (published)", v) for k, v in results["published"].items()]
    for label, m in rows:
        r = summary_row(m)
        vals = [r[0], r[1], r[2], r[6], r[7], r[8]]
        text = " ".join(f"{v:6.3f}" if v is not None else "     -" for v in vals)
        feat = f"{r[14]:7.1f}" if r[14] is not None else "      -"
        match = f"{r[15]:8.1f}" if r[15] is not None else "       -"
        print(f"{label[:40]:40s} {text} {feat} {match}")
    print(f"wrote {Path(args.output) / 'results.json'}, results.md, results.csv, per_sequence.csv, mma.png")
    return 0


def _eval_hpatches_detector_free(args, specs) -> None:
    """Detector-free matchers (LoFTR family, XFeat*): judged on their pair matches (`eval.detector_free`)."""
    from ..config import parse_model_spec
    from ..datasets.hpatches import D2NET_EXCLUDED
    from ..eval.detector_free import evaluate_hpatches_matcher
    from ..geometry import RansacParams

    ransac = RansacParams(method=args.ransac, threshold=args.ransac_threshold, max_iters=args.ransac_iters,
                          confidence=args.ransac_confidence)
    print(f"{'detector-free method':40s} MMA@1  MMA@3  MMA@5  MHA@1  MHA@3  MHA@5  AUC@3   #match")
    for spec in specs:
        name, conf = parse_model_spec(spec)
        if args.max_size is not None:
            conf["resize_max"] = args.max_size
        r = evaluate_hpatches_matcher(args.root, name, conf, out_dir=args.cache_dir or args.output, ransac=ransac,
                                      exclude=() if args.all_sequences else D2NET_EXCLUDED)["summary"]
        mma, mha = r["mma"].get("overall") or [0.0] * 15, r["homography_accuracy"]
        vals = [mma[0], mma[2], mma[4], mha["1"], mha["3"], mha["5"], r["homography_auc"]["3"]]
        print(f"{spec[:40]:40s} " + " ".join(f"{v:6.3f}" for v in vals) + f" {r['mean_num_matches']:8.1f}")


def cmd_eval_pose(args) -> int:
    from ..eval.pose import POSE_AUC_THRESHOLDS, evaluate_pose

    model, conf = model_spec(args)
    matcher, matcher_conf = matcher_spec(args)
    result = evaluate_pose(args.pairs, args.images, model=model, conf=conf, matcher=matcher,
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


INVARIANCE_EXAMPLE = ("localfeat eval invariance --model sift --model aliked:variant=aliked-n16 "
           "--model aliked:variant=aliked-n16rot --model affine_sim:base=sift -o out/invariance")


def _steps(items) -> dict:
    out = {}
    for item in items or []:
        axis, sep, values = item.partition("=")
        if not sep:
            raise ValueError(f"--steps {item!r}: expected AXIS=v1,v2,... (e.g. rotation=0,45,90)")
        out[axis.strip()] = [float(v) for v in values.split(",") if v.strip()]
    return out


def cmd_eval_invariance(args) -> int:
    from ..eval.invariance import AXES, run_sweeps, write_outputs

    axes = args.axis or list(AXES)
    run = run_sweeps(args.model, photos=args.photos, axes=axes, steps=_steps(args.steps), size=args.size,
                     max_photos=args.max_photos, top_k=args.top_k,
                     cache_dir=Path(args.cache_dir or args.output) / "cache")
    paths = write_outputs(run, args.output, plot=not args.no_plot)
    print(f"photos: {', '.join(run['settings']['photos'])} (max side {args.size} px)")
    for spec, per_axis in run["results"].items():
        print(f"\n{spec}")
        for axis, rows in per_axis.items():
            cells = " ".join(f"{r['value']:g}:{r['n_correct']}/{r['mma']['3']:.2f}" for r in rows)
            print(f"  {axis:12s} value:n_correct/MMA@3  {cells}")
    print(f"\nwrote {', '.join(str(Path(p)) for p in paths.values())}")
    return 0


def register(sub, groups) -> None:
    from ..eval.invariance import AXES

    p = add_command(groups["eval"], "hpatches",
                    "HPatches-sequences evaluation (D2-Net MMA protocol, homography accuracy, repeatability)",
                    EVAL_EXAMPLE, cmd_eval_hpatches)
    p.add_argument("--root", required=True, help="folder holding the i_*/ and v_*/ sequences")
    p.add_argument("--model", action="append", metavar="SPEC",
                   help="extractor as NAME or NAME:key=value,key=value (repeatable)")
    p.add_argument("--features", action="append", metavar="[LABEL=]PATH",
                   help="features computed elsewhere: a FeatureStore (.h5, names <seq>/<k>.ppm) or a folder of "
                        "per-image npz files <seq>/<k>.ppm.<ext> (repeatable)")
    p.add_argument("--ext", help="extension of the per-image npz files of --features folders, e.g. r2d2, d2-net")
    p.add_argument("-o", "--output", required=True, help="output folder (results, tables, figure, cache)")
    p.add_argument("--top-k", type=int, default=None, help="keep the K best-scoring keypoints per image")
    p.add_argument("--max-size", type=int, default=None,
                   help="extractors: downscale images so that max(H, W) <= S (sets resize_max)")
    p.add_argument("--all-sequences", action="store_true",
                   help="keep the 8 high-resolution sequences the D2-Net protocol excludes")
    p.add_argument("--compare-published", nargs="+", metavar="[LABEL=]FILE",
                   help="D2-Net-format cache files (.npy) to draw beside; read with pickle: only files you trust")
    p.add_argument("--ransac", default="opencv", choices=["opencv", "opencv-usac", "poselib"])
    p.add_argument("--ransac-threshold", type=float, default=3.0, help="pixels (default 3, as ALIKE)")
    p.add_argument("--ransac-iters", type=int, default=2000)
    p.add_argument("--ransac-confidence", type=float, default=0.995)
    p.add_argument("--workers", type=int, default=None, help="threads over pairs (default: up to 2)")
    p.add_argument("--cache-dir", default=None, help="where features and per-pair results are cached "
                   "(default: the output folder)")
    add_engine_args(p)  # extractors (--model) run on the engine; pairs are evaluated here (--workers)

    p = add_command(groups["eval"], "pose", "relative pose AUC@5/10/20 on pairs with ground-truth K and T_0to1",
                    "localfeat eval pose --pairs scannet_sample_pairs_with_gt.txt --images scannet/images "
                    "--model sift --resize-max 640 --ransac-thresh 2", cmd_eval_pose)
    p.add_argument("--pairs", required=True, help="SuperGlue-format text file or XFeat-style JSON of pairs")
    p.add_argument("--images", required=True, help="folder the pair names are relative to")
    add_model_args(p)
    add_matcher_args(p, conf_help="matcher config (default: mutual NN, plus ratio=0.8 for sift)")
    p.add_argument("--ransac-thresh", type=float, default=1.0, help="RANSAC threshold in pixels")
    p.add_argument("--estimator", choices=["opencv", "pycolmap"], default="opencv")
    p.add_argument("--max-pairs", type=int, default=None, help="evaluate only the first N pairs")
    p.add_argument("--output", default=None, help="folder for the result JSON (reused when present)")
    p.add_argument("--overwrite", action="store_true", help="recompute even if the result JSON exists")

    p = add_command(groups["eval"], "invariance",
                    "invariance sweeps: synthetic pairs with exact ground truth along one axis at a time",
                    INVARIANCE_EXAMPLE, cmd_eval_invariance)
    p.add_argument("--model", action="append", required=True, metavar="SPEC",
                   help="extractor as NAME or NAME:key=value,key=value (repeatable)")
    p.add_argument("--photos", default=None, help="folder of photos (default: scikit-image's bundled photos)")
    p.add_argument("-o", "--output", required=True, help="output folder (results.json, results.csv, <axis>.png)")
    p.add_argument("--axis", action="append", choices=list(AXES), help="axes to run (repeatable; default all)")
    p.add_argument("--steps", action="append", metavar="AXIS=v1,v2,...", help="override the steps of an axis")
    p.add_argument("--size", type=int, default=400, help="photos are scaled to this longer side (pixels)")
    p.add_argument("--max-photos", type=int, default=3, help="use the first N photos (default 3)")
    p.add_argument("--top-k", type=int, default=2000, help="keep the K best-scoring keypoints per image")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG figures")
    p.add_argument("--cache-dir", default=None, help="where per-(model, axis) results are cached, in "
                   "CACHE_DIR/cache (default: the output folder); a rerun with the same settings reuses them")
