"""Verb `train`: start a run from a preset or YAML file, list presets, resume a run."""
from __future__ import annotations

from .args import add_command

EXAMPLE = ("localfeat train --config fast_r2d2_cpu -o runs/fr2d2 steps=300 data.crop_size=160   |   "
           "localfeat train --resume runs/fr2d2   |   localfeat train --list")


def cmd_train(args) -> int:
    from ..train.trainer import list_presets, parse_overrides, resume, train

    if args.list:
        for name, text in list_presets().items():
            print(f"{name:24s} {text}")
        return 0
    if args.resume:
        overrides = parse_overrides(args.overrides)
        extra = sorted(set(overrides) - {"steps"})
        if extra:
            raise ValueError(f"--resume takes only steps=N (the rest of the config is RUN_DIR/config.yaml); "
                             f"got {extra}")
        run = resume(args.resume, steps=overrides.get("steps"))
    else:
        if not args.config or not args.output:
            raise ValueError("give --config PRESET_OR_FILE and -o RUN_DIR (or --resume RUN_DIR, or --list)")
        run = train(args.config, args.output, parse_overrides(args.overrides), overwrite=args.overwrite)
    print(f"train -> {run}: config.yaml, metrics.csv, checkpoints/last.pt, weights.pt, curve.png")
    return 0


def register(sub, groups) -> None:
    p = add_command(sub, "train", "train a dense detector/descriptor (lite, R2D2, Fast-R2D2, ALIKE, DISK, "
                    "D2-Net) with the losses of R2D2 (AP, repeatability, reliability), D2-Net, DISK, ALIKE (NRE, "
                    "keypoint reprojection), distinctiveness and distillation from a frozen teacher", EXAMPLE,
                    cmd_train)
    p.add_argument("--config", help="a preset name (see --list) or a YAML file")
    p.add_argument("-o", "--output", help="RUN_DIR: config.yaml, metrics.csv, checkpoints/last.pt, weights.pt")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--list", action="store_true", help="list the presets shipped with localfeat")
    p.add_argument("--overwrite", action="store_true", help="start over in a RUN_DIR that holds a run")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides with dotted keys, e.g. steps=200 data.crop_size=128 model.mchan=2 "
                        "'losses={ap: 1, repeatability: 1}' (unknown keys are errors)")
