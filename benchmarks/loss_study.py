"""The R2D2 loss study at a CPU budget: the official Fast-R2D2 (`faster2d2_WASF_N16`) fine-tuned with AP +
reliability + repeatability under each AP similarity, and with HardNet's triplet as the reliability's quality,
same data, steps and seeds, evaluated by the D2-Net HPatches protocol (R2D2's own multi-scale extraction, top
5000) at MMA@1/3/6/10; row 0 is the untouched official network.

    LOCALFEAT_WEIGHTS=../shared/data/weights_r2d2 .venv/bin/python benchmarks/loss_study.py -o runs/loss_study
        [--steps 80] [--seeds 0 1] [--rows cosine dice ...] [--hpatches ../shared/data/hpatches_subset]

Each run is `localfeat train --config OUT/configs/<row>_s<seed>.yaml -o OUT/<row>_s<seed>` in its own process
(the config files are written first: each row's run directory is reproducible from its config). A finished run
is not trained again, an interrupted one is resumed, a failed one is reported and skipped; each run's figures
are cached in OUT/<run>/study.json. The table (markdown, next to the published figures of the study) is printed
and written to OUT/table.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

THRESHOLDS = (1, 3, 6, 10)
# Published (full HPatches, Fast-R2D2 trained with AP under each similarity), MMA@1/3/6/10.
PUBLISHED = {"cosine": (0.278, 0.700, 0.837, 0.865), "dice": (0.289, 0.715, 0.846, 0.872),
             "jaccard": (0.281, 0.706, 0.841, 0.868), "czekanowski": (0.285, 0.709, 0.840, 0.866),
             "squared_chord": (0.269, 0.664, 0.787, 0.812)}
ROWS = ("cosine", "dice", "jaccard", "czekanowski", "squared_chord", "hardnet")
MODEL = {"name": "r2d2", "arch": "Fast_Quad_L2Net_ConfCFS", "dim": 128, "mchan": 4, "weights": "official",
         "variant": "faster2d2_WASF_N16"}


def run_config(row: str, seed: int, steps: int, images: list[str], threads: int) -> dict:
    """The training config of one study run: R2D2's fine-tuning recipe (Adam 1e-4, weight decay 5e-4, 192 px
    crops, reliability kappa 0.5 + repeatability N 16) on the real-photo recipe, with `row`'s similarity (or
    HardNet's triplet as the reliability's quality)."""
    rel = {"weight": 1.0, "kappa": 0.5}
    rel.update({"quality": "hardnet"} if row == "hardnet" else {"similarity": row})
    return {"model": dict(MODEL), "seed": seed, "steps": steps, "threads": threads, "batch_size": 4,
            "data": {"images": images, "crop_size": 192, "base_size": 480, "scale_range": [0.6, 1.2],
                     "num_workers": 1},
            "losses": {"reliability": rel, "repeatability": {"weight": 1.0, "N": 16}},
            "optimizer": {"name": "adam", "lr": 0.0001, "weight_decay": 0.0005},
            "scheduler": {"name": "constant"}, "checkpoint_every": 25, "log_every": 25,
            "validation": {"every": 0}}


def finished(run_dir: Path, steps: int) -> bool:
    """Whether RUN_DIR holds a run trained to `steps`."""
    last = run_dir / "checkpoints" / "last.pt"
    if not ((run_dir / "weights.pt").is_file() and last.is_file()):
        return False
    return int(torch.load(last, map_location="cpu", weights_only=False)["step"]) >= steps


def train_run(config_path: Path, run_dir: Path, steps: int) -> None:
    """Train (or resume, or skip when finished) one run in its own process; raises on failure."""
    if finished(run_dir, steps):
        return
    last = run_dir / "checkpoints" / "last.pt"
    cmd = [sys.executable, "-m", "localfeat.cli", "train"]
    cmd += ["--resume", str(run_dir)] if last.is_file() else ["--config", str(config_path), "-o", str(run_dir)]
    with open(run_dir.parent / f"{run_dir.name}.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def evaluate(weights, root: Path, out_dir: Path) -> dict:
    """MMA@1/3/6/10 (D2-Net protocol: R2D2's own multi-scale extraction, top 5000, full images, mutual NN) of
    Fast-R2D2 with `weights` (None = the official file); the evaluation's files go to out_dir."""
    from localfeat.eval.hpatches import EvalSettings, ExtractorSource, evaluate_hpatches

    conf = {"variant": MODEL["variant"], "max_keypoints": 5000}
    if weights is not None:
        conf["weights"] = str(weights)
    res = evaluate_hpatches(root, [ExtractorSource("r2d2", conf=conf)], out_dir, EvalSettings(), plot=False)
    method = res["methods"]["r2d2"]
    curve = method["mma_overall"]                                   # t = 1..15 px
    return {k: float(curve[k - 1]) for k in THRESHOLDS} | {"pairs": len(method["pairs"])}


def evaluate_run(run_dir: Path, root: Path) -> dict:
    """Figures of a finished run, cached in RUN_DIR/study.json (keyed by the weights' content and the dataset)."""
    from localfeat.io.atomic import write_text_atomic

    weights = run_dir / "weights.pt"
    key = {"root": str(root), "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    cache = run_dir / "study.json"
    if cache.is_file():
        found = json.loads(cache.read_text())
        if found.get("settings") == key:
            return {int(k) if k.isdigit() else k: v for k, v in found["result"].items()}
    res = evaluate(weights, root, run_dir / "hpatches")
    write_text_atomic(cache, json.dumps({"settings": key, "result": res}))
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/loss_study"))
    parser.add_argument("--steps", type=int, default=80, help="training steps of every run (batch 4)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--images", nargs="+", default=["data/train_photos"], help="training photo folders")
    parser.add_argument("--hpatches", type=Path, default=Path("../shared/data/hpatches_subset"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: the table of the runs already finished (others are listed as missing)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from localfeat.io.atomic import write_text_atomic

    out = args.output
    (out / "configs").mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:          # seed-major: a study cut short still has every row of the first seed
        for row in args.rows:
            name = f"{row}_s{seed}"
            path = out / "configs" / f"{name}.yaml"
            conf = run_config(row, seed, args.steps, args.images, args.threads)
            write_text_atomic(path, yaml.safe_dump(conf, sort_keys=False))
            runs.append((row, seed, path, out / name))

    print("row 0: the official faster2d2_WASF_N16, untouched", flush=True)
    official = evaluate(None, args.hpatches, out / "official_hpatches")
    results: dict[str, list[dict]] = {}
    failed, missing = [], []
    for i, (row, seed, path, run_dir) in enumerate(runs, 1):
        t0 = time.time()
        if args.report_only and not finished(run_dir, args.steps):
            missing.append(run_dir.name)
            continue
        try:
            train_run(path, run_dir, args.steps)
            res = evaluate_run(run_dir, args.hpatches)
        except (subprocess.CalledProcessError, OSError, RuntimeError, ValueError) as exc:
            print(f"[{i}/{len(runs)}] {run_dir.name}: FAILED ({exc}); see {run_dir}.log", flush=True)
            failed.append(run_dir.name)
            continue
        results.setdefault(row, []).append(res)
        print(f"[{i}/{len(runs)}] {run_dir.name}: MMA@1/3/6/10 "
              + "/".join(f"{res[k]:.3f}" for k in THRESHOLDS) + f" ({time.time() - t0:.0f} s)", flush=True)

    lines = [f"Fast-R2D2 (official faster2d2_WASF_N16) fine-tuned {args.steps} steps of batch 4 per run, seeds "
             f"{' '.join(map(str, args.seeds))}; {args.hpatches.name} ({official['pairs']} pairs), R2D2's multi-scale "
             "extraction (top 5000), D2-Net protocol. Published: full HPatches, trained from scratch.", "",
             "| row | MMA@1 | MMA@3 | MMA@6 | MMA@10 | per seed MMA@3 | published MMA@1/3/6/10 |",
             "|---|---|---|---|---|---|---|",
             "| 0: official, untouched | " + " | ".join(f"{official[k]:.3f}" for k in THRESHOLDS) + " | | |"]
    for row in args.rows:
        if row not in results:
            continue
        mean = {k: float(np.mean([r[k] for r in results[row]])) for k in THRESHOLDS}
        per_seed = " / ".join(f"{r[3]:.3f}" for r in results[row])
        pub = "/".join(f"{v:.3f}" for v in PUBLISHED[row]) if row in PUBLISHED else "(table not quoted)"
        label = "hardnet (triplet as the reliability's quality)" if row == "hardnet" else row
        lines.append(f"| {label} | " + " | ".join(f"{mean[k]:.3f}" for k in THRESHOLDS) + f" | {per_seed} | {pub} |")
    if failed:
        lines += ["", f"failed runs: {', '.join(failed)}"]
    if missing:
        lines += ["", f"not run yet: {', '.join(missing)}"]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text_atomic(out / "table.md", text)


if __name__ == "__main__":
    main()
