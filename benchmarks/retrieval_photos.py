"""Retrieval on the real photos of ../shared/data: Sacre Coeur (11, incl. the night query), Piazza San Marco (5),
St Paul's (5), with the 20 KITTI frames as distractors. Every landmark photo queries the collection (itself
excluded); a result is relevant when it shows the same scene. Prints precision@1 and mAP per model and the
mean query time, and writes the JSON and picture of one query.

    .venv/bin/python benchmarks/retrieval_photos.py --work /tmp/retrieval --models aliked sift
    .venv/bin/python benchmarks/retrieval_photos.py --work /tmp/retrieval --models delf \
        --conf delf:score_threshold=None delf:arch=resnet18    # untrained DeLF: runs, quality meaningless
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from localfeat.registry import parse_value  # noqa: E402
from localfeat.retrieval import Retriever, average_precision, build_index, write_json  # noqa: E402
from localfeat.train.delf import build_class_folders  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("LOCALFEAT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--work", required=True, help="folder for the photo links, indexes, JSON and pictures")
    ap.add_argument("--models", nargs="+", default=["aliked"])
    ap.add_argument("--conf", nargs="*", default=[], metavar="MODEL:KEY=VALUE")
    ap.add_argument("--resize-max", type=int, default=640)
    ap.add_argument("--shortlist", type=int, default=20)
    args = ap.parse_args()
    data, work = Path(args.data), Path(args.work)
    os.environ.setdefault("LOCALFEAT_WEIGHTS", os.pathsep.join(str(p) for p in sorted(data.glob("weights_*"))))
    photos = build_class_folders({"sacre_coeur": data / "sfm_sacre_coeur_hloc",
                                  "piazza_san_marco": data / "phototourism_aliked" / "piazza_san_marco",
                                  "st_pauls_cathedral": data / "phototourism_aliked" / "st_pauls_cathedral",
                                  "kitti": data / "kitti_seq_alike"}, work / "photos")
    rows = []
    for model in args.models:
        conf = {"resize_max": args.resize_max}
        for item in args.conf:
            m, kv = item.split(":", 1)
            if m == model:
                k, v = kv.split("=", 1)
                conf[k] = parse_value(v)
        t0 = time.perf_counter()
        index = build_index(photos, work / f"index_{model}", model=model, conf=conf)
        t_index = time.perf_counter() - t0
        r = Retriever(index)
        scene_of = {n: n.split("/")[0] for n in r.names}
        p1, aps, times = [], [], []
        for name in r.names:
            scene = scene_of[name]
            if scene == "kitti":
                continue
            t0 = time.perf_counter()
            res = r.query(photos / name, top=None, shortlist=args.shortlist, features=r.features(name))
            times.append(time.perf_counter() - t0)
            rel = [scene_of[x.image] == scene for x in res]
            p1.append(rel[0])
            aps.append(average_precision(rel, sum(s == scene for n, s in scene_of.items() if n != name)))
            if not rel[0]:
                print(f"  {model}: {name} -> {res[0].image} ({res[0].inliers} inliers)")
            if name == "sacre_coeur/night.jpg":
                write_json(res[:5], work / f"{model}_night.json")
                r.picture(photos / name, res, work / f"{model}_night.png", features=r.features(name))
        rows.append((model, len(p1), float(np.mean(p1)), float(np.mean(aps)), float(np.mean(times)), t_index))
    print(f"{'model':<24} {'queries':>7} {'P@1':>6} {'mAP':>6} {'s/query':>8} {'index s':>8}")
    for model, n, p, m, t, ti in rows:
        print(f"{model:<24} {n:>7d} {p:>6.3f} {m:>6.3f} {t:>8.2f} {ti:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
