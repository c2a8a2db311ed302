"""CLI verbs of the HPatches area: `localfeat eval hpatches`, `localfeat hpatches synth`, `localfeat hpatches download`."""
from __future__ import annotations

from pathlib import Path

EVAL_EXAMPLE = ("localfeat eval hpatches --root hpatches-sequences-release --model sift "
                "--model aliked:variant=aliked-n16rot,n_limit=2048 --top-k 5000 -o out/hpatches "
                "--compare-published R2D2=published_hpatches/r2d2.npy")


def cmd_eval_hpatches(args) -> int:
    from ..datasets.hpatches import D2NET_EXCLUDED
    from ..geometry import RansacParams
    from .published import parse_label
    from .hpatches import EvalSettings, ExtractorSource, NpzSource, StoreSource, evaluate_hpatches, summary_row

    if not args.model and not args.features:
        raise ValueError("give at least one --model SPEC or --features PATH")
    sources = [ExtractorSource(spec, max_size=args.max_size) for spec in args.model or []]
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


def cmd_synth(args) -> int:
    from ..datasets.synth import generate

    names = generate(args.output, n_sequences=args.sequences, seed=args.seed, photos=args.photos,
                     image_max_size=args.max_size)
    print(f"wrote {len(names)} sequences ({sum(n.startswith('i_') for n in names)} i_, "
          f"{sum(n.startswith('v_') for n in names)} v_) to {args.output}")
    return 0


def cmd_download(args) -> int:
    from ..datasets.hpatches import download_hpatches

    out = download_hpatches(args.output, sha256=args.sha256)
    print(f"HPatches sequences in {out}")
    return 0


def register(subparsers, add_command, groups) -> None:
    """Add `eval hpatches` to the eval group and the `hpatches` verb group (synth, download)."""
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

    hp = subparsers.add_parser("hpatches", help="HPatches-format data: synthetic sequences, download")
    hp_sub = hp.add_subparsers(dest="hpatches_command", metavar="ACTION")
    p = add_command(hp_sub, "synth", "write synthetic HPatches-format sequences from photos (offline)",
                    "localfeat hpatches synth -o data/synth --sequences 10 --seed 0", cmd_synth)
    p.add_argument("-o", "--output", required=True, help="folder to write <seq>/1.ppm..6.ppm, H_1_2..H_1_6")
    p.add_argument("--sequences", type=int, default=10, help="number of sequences, alternately i_ and v_")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photos", default=None, help="folder of photos (default: scikit-image's bundled photos)")
    p.add_argument("--max-size", type=int, default=640, help="max(W, H) of the images written")
    p = add_command(hp_sub, "download", "download and extract the official HPatches sequences (about 1.3 GB)",
                    "localfeat hpatches download -o data/", cmd_download)
    p.add_argument("-o", "--output", required=True, help="folder for the archive and hpatches-sequences-release/")
    p.add_argument("--sha256", default=None, help="expected sha256 of the archive, if you know it")

