"""Figures of a training run: validation MMA of the random-initialised network vs the trained one.

Reads RUN_DIR (config.yaml, checkpoints/last.pt, metrics.csv), rebuilds the network of step 0 (same
config and seed: the random initialisation of the run) and the trained network, and prints their
MMA@1/3/5 (D2-Net protocol, single scale, top-k keypoints, NMS on reliability x repeatability for
R2D2) on the run's validation set - the real sequences of `validation.root` when the run has one,
else its synthetic set - and on any other HPatches-format folders given, at the run's
`validation.resize_max` or at the sizes given, plus the ratio trained / random, the run's length
(steps, minutes of steps) and loss at the start and end.

    .venv/bin/python benchmarks/train_acceptance.py runs/fr2d2 [--hpatches ../shared/data/hpatches_subset]
        [--resize-max 640 full] [--checkpoint runs/fr2d2/checkpoints/last.pt]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import yaml


def _size(text: str):
    return None if text.lower() in ("full", "none") else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--hpatches", nargs="*", default=[], help="more HPatches-format folders to evaluate on")
    parser.add_argument("--resize-max", nargs="*", type=_size, default=None,
                        help="longer sides to evaluate at ('full' = as stored; default: the run's validation.resize_max)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: RUN_DIR/checkpoints/last.pt")
    parser.add_argument("--top-k", type=int, default=None, help="keypoints per image (default: the run's)")
    args = parser.parse_args()

    from localfeat.hub import load_torch_checkpoint
    from localfeat.registry import trainable
    from localfeat.train.config import resolve_config
    from localfeat.train.helpers import seed_all
    from localfeat.train.validation import evaluate_mma

    conf = resolve_config(yaml.safe_load((args.run_dir / "config.yaml").read_text()))
    v = conf["validation"]
    adapter = trainable(conf["model"]["name"])
    top_k = args.top_k or v["top_k"]
    sizes = args.resize_max if args.resize_max else [v["resize_max"]]
    seed_all(int(conf["seed"]))
    random_net = adapter.build(conf["model"])
    trained = adapter.build(conf["model"])
    ck = load_torch_checkpoint(args.checkpoint or args.run_dir / "checkpoints" / "last.pt")
    trained.load_state_dict(ck["model"])
    with open(args.run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) < int(ck["step"])]
    totals = np.array([float(r["total"]) for r in rows])
    seconds = sum(float(r["seconds"]) for r in rows)
    n = max(1, min(20, len(totals) // 5))
    print(f"run {args.run_dir} (checkpoint of step {ck['step']}): {conf['model']}, {len(rows)} steps of batch "
          f"{conf['batch_size']}, {seconds / 60:.1f} min of steps; loss mean of first {n} steps "
          f"{totals[:n].mean():.4f}, of last {n} steps {totals[-n:].mean():.4f}")
    if v["root"]:
        sets = [(f"{v['root']} (run's validation)", Path(v["root"]))]
    elif (args.run_dir / "val_hpatches").is_dir():
        sets = [("synthetic (run's validation)", args.run_dir / "val_hpatches")]
    else:
        sets = []
    sets += [(str(p), Path(p)) for p in args.hpatches if Path(p) != Path(v["root"] or "")]
    device = torch.device("cpu")
    print(f"{'dataset':44s} {'size':>5s} {'network':8s} {'MMA@1':>6s} {'MMA@3':>6s} {'MMA@5':>6s} {'i@3':>6s} "
          f"{'v@3':>6s} {'feat':>6s} {'match':>6s}")
    for label, root in sets:
        for size in sizes:
            res = {}
            for name, net in (("random", random_net), ("trained", trained)):
                r = evaluate_mma(adapter, net, root, device, top_k, int(v["nms"]), size)
                res[name] = r
                print(f"{label[:44]:44s} {str(size or 'full'):>5s} {name:8s} {r['mma@1']:6.3f} {r['mma@3']:6.3f} "
                      f"{r['mma@5']:6.3f} {r['mma@3_i']:6.3f} {r['mma@3_v']:6.3f} {r['features']:6.0f} "
                      f"{r['matches']:6.0f}", flush=True)
            print(f"{'':44s} {'':5s} {'ratio':8s} {'':6s} "
                  f"{res['trained']['mma@3'] / max(res['random']['mma@3'], 1e-9):6.2f}x")


if __name__ == "__main__":
    main()
