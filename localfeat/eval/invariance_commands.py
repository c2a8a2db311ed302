"""CLI verb `localfeat eval invariance`: invariance sweeps (rotation, scale, tilt, illumination, blur, noise)."""
from __future__ import annotations

from pathlib import Path

EXAMPLE = ("localfeat eval invariance --model sift --model aliked:variant=aliked-n16 "
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
    from .invariance import AXES, run_sweeps, write_outputs

    axes = args.axis or list(AXES)
    run = run_sweeps(args.model, photos=args.photos, axes=axes, steps=_steps(args.steps), size=args.size,
                     max_photos=args.max_photos, top_k=args.top_k)
    paths = write_outputs(run, args.output, plot=not args.no_plot)
    print(f"photos: {', '.join(run['settings']['photos'])} (max side {args.size} px)")
    for spec, per_axis in run["results"].items():
        print(f"\n{spec}")
        for axis, rows in per_axis.items():
            cells = " ".join(f"{r['value']:g}:{r['n_correct']}/{r['mma']['3']:.2f}" for r in rows)
            print(f"  {axis:12s} value:n_correct/MMA@3  {cells}")
    print(f"\nwrote {', '.join(str(Path(p)) for p in paths.values())}")
    return 0


def register(subparsers, add_command, groups) -> None:
    """Add `eval invariance` to the eval group."""
    from .invariance import AXES

    p = add_command(groups["eval"], "invariance",
                    "invariance sweeps: synthetic pairs with exact ground truth along one axis at a time",
                    EXAMPLE, cmd_eval_invariance)
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
