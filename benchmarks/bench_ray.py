"""The Ray engine against the local engine, measured in one run on this machine.

For N images (the Sacre Coeur photos, repeated under distinct names to reach N) and their exhaustive pairs:
- local engine: `localfeat.extract` / `localfeat.match` in this process (1 torch thread);
- Ray with 1 and with 2 workers (1 CPU each) on a Ray started here (one node, `--cpus` CPUs), timed from
  the call to the closed output file: actor start and model load, shards, merge;
- merge only: the same shards (kept) merged again into a new file, no worker (the driver's serial cost).
Every Ray output is checked equal to the local engine's (same entries, same bytes).

Prints a Markdown table of wall times, the overhead per image / per pair in ms against the local engine,
and a PROJECTION (not a measurement) of hours for 100k images and 2M pairs on N workers (e.g. N GPUs) from
the per-item times measured here.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ray.py --images 40
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))


def _same(a: Path, b: Path) -> bool:
    from localfeat.io.h5 import file_entries  # every group and dataset, bytes included

    return file_entries(a) == file_entries(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40, help="number of images (photos repeated)")
    parser.add_argument("--max-keypoints", type=int, default=1024)
    parser.add_argument("--resize-max", type=int, default=640)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray started here")
    parser.add_argument("--shard-images", type=int, default=8)
    parser.add_argument("--shard-pairs", type=int, default=128)
    args = parser.parse_args()
    os.environ["LOCALFEAT_OFFLINE"] = "1"   # SIFT needs no weights; nothing is downloaded
    import torch

    import localfeat
    from localfeat.engines.ray import start_local_cluster
    from localfeat.io.h5 import FeatureStore
    from localfeat.pairs import exhaustive_pairs

    torch.set_num_threads(1)
    src = DATA / "sfm_sacre_coeur_hloc" / "mapping"
    photos = sorted(src.glob("*.jpg"))
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    folder = work / "images"
    folder.mkdir()
    for i in range(args.images):
        os.symlink(photos[i % len(photos)], folder / f"{i:05d}.jpg")
    conf = {"max_keypoints": args.max_keypoints, "resize_max": args.resize_max}
    rows, timings = [], {}

    def timed(label, func):
        start = time.perf_counter()
        report = func()
        timings[label] = time.perf_counter() - start
        return report

    timed("extract local", lambda: localfeat.extract(folder, work / "f_local.h5", model="sift", conf=conf))
    names = FeatureStore(work / "f_local.h5", mode="r").names()
    pairs = exhaustive_pairs(names)
    timed("match local", lambda: localfeat.match(work / "f_local.h5", work / "m_local.h5", pairs))

    start = time.perf_counter()
    cluster = start_local_cluster([args.cpus], object_store_memory=200 << 20)
    timings["ray start (once per command)"] = time.perf_counter() - start
    import ray

    from localfeat.engines.ray import ShardWorker

    try:
        # The fixed cost of a run: one worker process started and its model loaded (then asked where it is).
        extractor = localfeat.load_extractor("sift", **conf)
        spec = {"model": "sift", "conf": dict(extractor.conf), "conf_hash": extractor.conf_hash, "layout": None}
        start = time.perf_counter()
        actor = ray.remote(ShardWorker).options(num_cpus=1).remote("extract", spec, 1)
        ray.get(actor.where.remote())
        timings["worker start (once per run)"] = time.perf_counter() - start
        ray.kill(actor)
        for workers in (1, 2):
            common = {"workers": workers, "num_cpus": 1, "keep_shards": True}
            shard_dir = work / f"shards_{workers}"
            rep = timed(f"extract ray {workers}w", lambda: localfeat.extract(
                folder, work / f"f_ray{workers}.h5", model="sift", conf=conf, engine="ray",
                engine_options={**common, "shard_images": args.shard_images, "shard_dir": str(shard_dir)}))
            assert rep.workers == workers and _same(work / "f_local.h5", work / f"f_ray{workers}.h5")
            rep = timed(f"match ray {workers}w", lambda: localfeat.match(
                work / f"f_ray{workers}.h5", work / f"m_ray{workers}.h5", pairs, engine="ray",
                engine_options={**common, "shard_pairs": args.shard_pairs, "shard_dir": str(shard_dir) + "_m"}))
            assert _same(work / "m_local.h5", work / f"m_ray{workers}.h5")
        # Merge only: the kept shards of the 1-worker run into new files (no shard is computed).
        rep = timed("extract merge only", lambda: localfeat.extract(
            folder, work / "f_merge.h5", model="sift", conf=conf, engine="ray",
            engine_options={"shard_images": args.shard_images, "shard_dir": str(work / "shards_1")}))
        assert rep.reused_shards == rep.shards and _same(work / "f_local.h5", work / "f_merge.h5")
        rep = timed("match merge only", lambda: localfeat.match(
            work / "f_ray1.h5", work / "m_merge.h5", pairs, engine="ray",
            engine_options={"shard_pairs": args.shard_pairs, "shard_dir": str(work / "shards_1") + "_m"}))
        assert rep.reused_shards == rep.shards and _same(work / "m_local.h5", work / "m_merge.h5")
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    n, p = args.images, len(pairs)
    print(f"\n## Ray engine vs local engine ({n} images, {p} exhaustive pairs; SIFT max_keypoints="
          f"{args.max_keypoints}, resize_max={args.resize_max}; nearest_neighbor; {os.cpu_count()} CPUs, "
          f"Ray node of {args.cpus} CPUs, shards of {args.shard_images} images / {args.shard_pairs} pairs)\n")
    start_w = timings["worker start (once per run)"]
    print("| run | wall s | per item ms | overhead vs local, ms per item (all-in / without the worker start) "
          "| speed vs local |")
    print("|---|---:|---:|---:|---:|")
    for kind, count in (("extract", n), ("match", p)):
        local = timings[f"{kind} local"]
        for label in (f"{kind} local", f"{kind} ray 1w", f"{kind} ray 2w", f"{kind} merge only"):
            t = timings[label]
            over = "" if label.endswith("local") else \
                f"{1000 * (t - local) / count:+.2f} / {1000 * (t - start_w - local) / count:+.2f}"
            if label.endswith("merge only"):
                over = "(the driver's merge alone)"
            print(f"| {label} | {t:.2f} | {1000 * t / count:.2f} | {over} | {local / t:.2f}x |")
    print(f"| ray start (once per command) | {timings['ray start (once per command)']:.2f} | | | |")
    print(f"| worker start: process + model load (once per run) | {start_w:.2f} | | | |")

    t_img, t_pair = timings["extract local"] / n, timings["match local"] / p
    # Per-item overhead without the one-off worker start (which 100k images amortise).
    o_img = max(0.0, (timings["extract ray 1w"] - start_w - timings["extract local"]) / n)
    o_pair = max(0.0, (timings["match ray 1w"] - start_w - timings["match local"]) / p)
    m_img, m_pair = timings["extract merge only"] / n, timings["match merge only"] / p
    print("\nPROJECTION (not measured): hours for 100,000 images + 2,000,000 pairs on N workers, each as fast as "
          "one worker here (per image "
          f"{1000 * (t_img + o_img):.1f} ms, per pair {1000 * (t_pair + o_pair):.2f} ms incl. Ray overhead), "
          f"with the driver's serial merge ({1000 * m_img:.2f} ms/image, {1000 * m_pair:.3f} ms/pair) as the "
          "floor:\n")
    print("| N workers | extract h | match h | driver merge h (floor) | total h |")
    print("|---:|---:|---:|---:|---:|")
    for workers in (1, 8, 32, 128):
        ext = max(100_000 * (t_img + o_img) / workers, 100_000 * m_img) / 3600
        mat = max(2_000_000 * (t_pair + o_pair) / workers, 2_000_000 * m_pair) / 3600
        floor = (100_000 * m_img + 2_000_000 * m_pair) / 3600
        print(f"| {workers} | {ext:.2f} | {mat:.2f} | {floor:.2f} | {ext + mat:.2f} |")


if __name__ == "__main__":
    main()
