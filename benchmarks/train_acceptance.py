"""Figures of a training run: validation MMA of the random-initialised network vs the trained one.

Reads RUN_DIR (config.yaml, weights.pt, metrics.csv, validation.csv), rebuilds the network of step 0
(same config and seed: the random initialisation of the run) and the trained network, and prints
their MMA@1/3/5 (D2-Net protocol, single scale, top-k keypoints) on the run's synthetic validation
set and on any other HPatches-format folders given, plus the ratio trained / random, and the run's
length (steps, minutes) and loss at the start and end.

    .venv/bin/python benchmarks/train_acceptance.py runs/fr2d2 [--hpatches ../shared/data/hpatches_subset]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--hpatches", nargs="*", default=[], help="more HPatches-format folders to evaluate on")
    parser.add_argument("--top-k", type=int, default=None, help="keypoints per image (default: the run's)")
    args = parser.parse_args()

    from localfeat.train.adapters import get_adapter
    from localfeat.train.helpers import seed_all
    from localfeat.train.trainer import evaluate_mma, resolve_config

    conf = resolve_config(yaml.safe_load((args.run_dir / "config.yaml").read_text()))
    adapter = get_adapter(conf["model"]["name"])
    top_k = args.top_k or conf["validation"]["top_k"]
    seed_all(int(conf["seed"]))
    random_net = adapter.build(conf["model"])
    trained = adapter.build(conf["model"])
    ck = torch.load(args.run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    trained.load_state_dict(ck["model"])
    with open(args.run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    totals = np.array([float(r["total"]) for r in rows])
    seconds = sum(float(r["seconds"]) for r in rows)
    n = max(1, min(20, len(totals) // 5))
    print(f"run {args.run_dir}: {conf['model']}, {len(rows)} steps of batch {conf['batch_size']}, "
          f"{seconds / 60:.1f} min of steps; loss mean of first {n} steps {totals[:n].mean():.4f}, "
          f"of last {n} steps {totals[-n:].mean():.4f}")
    sets = [("synthetic (run)", args.run_dir / "val_hpatches")] if (args.run_dir / "val_hpatches").is_dir() else []
    sets += [(str(p), Path(p)) for p in args.hpatches]
    device = torch.device("cpu")
    print(f"{'dataset':40s} {'network':8s} {'MMA@1':>6s} {'MMA@3':>6s} {'MMA@5':>6s} {'i@3':>6s} {'v@3':>6s} "
          f"{'feat':>6s} {'match':>6s}")
    for label, root in sets:
        res = {}
        for name, net in (("random", random_net), ("trained", trained)):
            r = evaluate_mma(adapter, net, root, device, top_k, int(conf["validation"]["nms"]))
            res[name] = r
            print(f"{label[:40]:40s} {name:8s} {r['mma@1']:6.3f} {r['mma@3']:6.3f} {r['mma@5']:6.3f} "
                  f"{r['mma@3_i']:6.3f} {r['mma@3_v']:6.3f} {r['features']:6.0f} {r['matches']:6.0f}")
        print(f"{'':40s} {'ratio':8s} {'':6s} {res['trained']['mma@3'] / max(res['random']['mma@3'], 1e-9):6.2f}x")


if __name__ == "__main__":
    main()
