"""R2D2 / Fast-R2D2: parity, speed, memory and throughput against the original.

Sections (run one or several; each prints a table):
  parity      all 14 reference images: keypoints found within 0.5 px (same scale), descriptor
              cosine, score difference; fp32 time against the original's recorded time (timings.json)
              and against an "original-style" pipeline re-run in the same process (--baseline).
  bf16        fp32 vs bf16: speed ratio and fraction of the fp32 keypoints kept (within 0.5 px, same scale).
  tiled       (1) tiled == untiled on the v_churchill images (multi-scale, tile 256);
              (2) peak RSS of a 4000x3000 image at full resolution, tiled vs untiled (child processes).
  throughput  `localfeat.pipeline.extract` on a folder of N images vs N x (network time per image).

Example:
  python benchmarks/bench_r2d2.py parity bf16 --images v_dogman_1 v_churchill_1
  python benchmarks/bench_r2d2.py tiled throughput --precision bf16

The reference data is read from ../shared/data (or LOCALFEAT_SHARED_DATA); the weights from
LOCALFEAT_WEIGHTS (set here to the shared weights_r2d2 folder when unset).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))
REF = SHARED / "reference" / "r2d2"
os.environ.setdefault("LOCALFEAT_WEIGHTS", str(SHARED / "weights_r2d2"))

import torch  # noqa: E402

from localfeat.registry import load_extractor  # noqa: E402

ALL_REFS = [f"v_dogman_{k}.r2d2_WASF_N16" for k in range(1, 7)] + \
           [f"v_churchill_{k}.r2d2_WASF_N16" for k in range(1, 7)] + \
           [f"v_dogman_{k}.faster2d2_WASF_N16" for k in (1, 2)]


def image_path(stem: str) -> Path:
    seq, k = stem.rsplit("_", 1)
    return SHARED / "hpatches_subset" / seq / f"{k}.ppm"


def parity(features, ref) -> dict:
    """For each reference keypoint, our nearest of the same scale: found (<= 0.5 px), cosine, score diff."""
    rk, rd, rs = ref["keypoints"], ref["descriptors"], ref["scores"]
    found = np.zeros(len(rk), bool)
    cos = np.full(len(rk), -1.0)
    dscore = np.full(len(rk), np.inf)
    for scale in np.unique(rk[:, 2]):
        a = np.flatnonzero(np.abs(rk[:, 2] - scale) < 1e-3)
        b = np.flatnonzero(np.abs(features.scales - scale) < 1e-3)
        if len(b):
            dist = np.linalg.norm(rk[a, None, :2] - features.keypoints[None, b], axis=-1)
            j = dist.argmin(1)
            found[a] = dist[np.arange(len(a)), j] <= 0.5
            cos[a] = (rd[a] * features.descriptors[b[j]]).sum(1)
            dscore[a] = np.abs(rs[a] - features.scores[b[j]])
    return {"found": found.mean(), "cos_min": cos[found].min(), "cos_ok": (cos[found] >= 0.999).mean(),
            "score_max_diff": dscore[found].max()}


def kept_fraction(a, b) -> float:
    """Fraction of the keypoints of `a` with a keypoint of `b` within 0.5 px at the same scale."""
    hits = np.zeros(len(a), bool)
    for scale in np.unique(a.scales):
        i, j = np.flatnonzero(a.scales == scale), np.flatnonzero(b.scales == scale)
        if len(j):
            d = np.linalg.norm(a.keypoints[i, None] - b.keypoints[None, j], axis=-1)
            hits[i] = d.min(1) <= 0.5
    return hits.mean()


def original_style_extract(extractor, image: np.ndarray) -> float:
    """Re-run of the ORIGINAL pipeline's per-level work in this process, for a same-run time baseline:
    the network's dense outputs as the original forms them (descriptor map normalised over the whole
    map, x**2 computed for each head), NMS with nonzero, gathering, numpy argsort top-k. Returns seconds."""
    import torch.nn.functional as F

    from localfeat.ops import IMAGENET_MEAN, IMAGENET_STD, image_pyramid, image_to_tensor

    net, c = extractor.net, extractor.conf
    t0 = time.perf_counter()
    with torch.no_grad():
        x = image_to_tensor(image, None, IMAGENET_MEAN, IMAGENET_STD)
        h, w = image.shape[:2]
        out = []
        for s, level in image_pyramid(x, c["scale_f"], c["min_scale"], c["max_scale"], c["min_size"], c["max_size"]):
            y = level
            for op in net.ops:
                y = op(y)
            if net.fast:
                y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            rel = F.softmax(net.clf(y ** 2), dim=1)[:, 1:2]
            u = F.softplus(net.sal(y ** 2))
            rep = u / (1 + u)
            desc = F.normalize(y, p=2, dim=1)
            maxima = rep == F.max_pool2d(rep, 3, 1, 1)
            maxima *= rep >= c["repeatability_thr"]
            maxima *= rel >= c["reliability_thr"]
            yy, xx = maxima.nonzero().t()[2:4]
            nh, nw = level.shape[-2:]
            out.append((xx.float() * w / nw, yy.float() * h / nh, rel[0, 0, yy, xx] * rep[0, 0, yy, xx],
                        desc[0, :, yy, xx].t()))
        scores = torch.cat([o[2] for o in out]).numpy()
        scores.argsort()[-c["top_k"]:]
    return time.perf_counter() - t0


def section_parity(args) -> None:
    timings = json.loads((REF / "timings.json").read_text())
    recorded = {(item["model"].split(".pt")[0], item["image"]): item["seconds"]
                for item in timings["runs"]["run2_timing_rerun"]["per_image"]}
    stems = [s for s in ALL_REFS if (not args.images or s.split(".")[0] in args.images)
             and s.split(".")[1] in args.models]
    print("\n## parity (fp32) against reference/r2d2")
    print("| file | found <=0.5px | min cos | cos>=0.999 | max |dscore| | ours (s) | original recorded (s) "
          "| ratio | original-style same run (s) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    extractors = {}
    worst = []
    for stem in stems:
        name, model = stem.split(".")
        ex = extractors.setdefault(model, load_extractor("r2d2", variant=model))
        path = image_path(name)
        from localfeat.io.images import read_image
        image = read_image(path)
        t0 = time.perf_counter()
        feats = ex.extract(image)
        ours = time.perf_counter() - t0
        stats = parity(feats, np.load(REF / f"{stem}.npz"))
        worst.append(stats)
        seq, k = name.rsplit("_", 1)
        rec = recorded.get((model, f"{seq}/{k}.ppm"))
        base = original_style_extract(ex, image) if args.baseline else float("nan")
        print(f"| {stem} | {stats['found']:.4f} | {stats['cos_min']:.7f} | {stats['cos_ok']:.4f} | "
              f"{stats['score_max_diff']:.2e} | {ours:.1f} | {rec if rec else float('nan'):.1f} | "
              f"{(rec / ours) if rec else float('nan'):.2f}x | {base:.1f} | {base / ours:.2f}x |", flush=True)
    print(f"worst: found {min(s['found'] for s in worst):.4f}, min cos {min(s['cos_min'] for s in worst):.7f}, "
          f"max score diff {max(s['score_max_diff'] for s in worst):.2e}  (load average now {os.getloadavg()[0]:.1f})")


def section_bf16(args) -> None:
    names = args.images or ["v_dogman_1", "v_churchill_1"]
    print("\n## bf16 vs fp32 (same process, alternating)")
    print("| image | model | fp32 (s) | bf16 (s) | speed-up | fp32 keypoints kept by bf16 |")
    print("|---|---|---|---|---|---|")
    from localfeat.io.images import read_image
    for model in args.models:
        fp32 = load_extractor("r2d2", variant=model)
        bf16 = load_extractor("r2d2", variant=model, precision="bf16")
        for name in names:
            image = read_image(image_path(name))
            bf16.extract(image[:64, :64])  # warm-up of the bf16 kernels
            t0 = time.perf_counter()
            a = fp32.extract(image)
            t1 = time.perf_counter()
            b = bf16.extract(image)
            t2 = time.perf_counter()
            print(f"| {name} | {model} | {t1 - t0:.1f} | {t2 - t1:.1f} | {(t1 - t0) / (t2 - t1):.2f}x | "
                  f"{kept_fraction(a, b):.4f} |", flush=True)


def _child_memory(width: int, height: int, tile, precision: str, min_scale: float) -> None:
    """Child process: extract from a width x height image; print seconds, keypoints and peak RSS (GB)."""
    import cv2

    from localfeat.io.images import read_image
    base = read_image(image_path("v_churchill_1"))
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
    ex = load_extractor("r2d2", tile_size=tile, precision=precision, max_size=None, min_scale=min_scale)
    t0 = time.perf_counter()
    feats = ex.extract(image)
    sec = time.perf_counter() - t0
    print(json.dumps({"seconds": sec, "n": len(feats),
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def section_tiled(args) -> None:
    from localfeat.io.images import read_image
    print("\n## tiled == untiled (multi-scale, default config, tile_size=256 vs None)")
    print("| image | keypoints | identical sets | max |dxy| | max |dscore| | max |ddesc| |")
    print("|---|---|---|---|---|---|")
    whole = load_extractor("r2d2", tile_size=None, precision=args.precision)
    tiled = load_extractor("r2d2", tile_size=256, precision=args.precision)
    for name in args.tiled_images:
        image = read_image(image_path(name))
        a, b = whole.extract(image), tiled.extract(image)
        oa = np.lexsort((a.scales, a.keypoints[:, 1], a.keypoints[:, 0]))
        ob = np.lexsort((b.scales, b.keypoints[:, 1], b.keypoints[:, 0]))
        same = len(a) == len(b) and np.array_equal(a.keypoints[oa], b.keypoints[ob])
        dxy = np.abs(a.keypoints[oa] - b.keypoints[ob]).max() if len(a) == len(b) else float("nan")
        ds = np.abs(a.scores[oa] - b.scores[ob]).max() if len(a) == len(b) else float("nan")
        dd = np.abs(a.descriptors[oa] - b.descriptors[ob]).max() if len(a) == len(b) else float("nan")
        print(f"| {name} | {len(a)} | {same} | {dxy:.1e} | {ds:.1e} | {dd:.1e} |", flush=True)
    if args.no_memory:
        return
    print(f"\n## peak RSS at full resolution (max_size=None, min_scale={args.min_scale}, {args.precision}), "
          "one child process each")
    print("| image | tile_size | seconds | keypoints | peak RSS (GB) |")
    print("|---|---|---|---|---|")
    for (w, h), tile in [((4000, 3000), 1024), ((4000, 3000), 512), ((1600, 1200), None), ((1600, 1200), 1024)]:
        cmd = [sys.executable, __file__, "--child-memory", str(w), str(h), str(tile), args.precision,
               str(args.min_scale)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(f"| {w}x{h} | {tile} | failed: {res.stderr.strip().splitlines()[-1:]} | | |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"| {w}x{h} | {tile} | {r['seconds']:.1f} | {r['n']} | {r['peak_rss_gb']:.2f} |", flush=True)


def section_throughput(args) -> None:
    from localfeat.io.images import read_image
    from localfeat.pipeline import extract
    names = [f"v_dogman_{k}" for k in range(1, args.n + 1)]
    conf = {"variant": args.models[0], "precision": args.precision}
    ex = load_extractor("r2d2", **conf)
    ex.extract(read_image(image_path(names[0]))[:64, :64])  # warm-up
    net_times = []
    for name in names:  # network time: decoded image already in memory, no writing
        image = read_image(image_path(name))
        t0 = time.perf_counter()
        ex.extract(image)
        net_times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "images.txt"
        listing.write_text("\n".join(str(image_path(n)) for n in names))
        t0 = time.perf_counter()
        report = extract(listing, Path(tmp) / "features.h5", extractor=ex)
        total = time.perf_counter() - t0
    print(f"\n## throughput: pipeline.extract over {len(names)} images ({conf})")
    print("| N | sum of network times (s) | pipeline total (s) | ratio |")
    print("|---|---|---|---|")
    print(f"| {len(report.done)} | {sum(net_times):.1f} | {total:.1f} | {total / sum(net_times):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help="parity, bf16, tiled, throughput (default: all)")
    parser.add_argument("--images", nargs="*", default=None, help="e.g. v_dogman_1 v_churchill_3 (default: all)")
    parser.add_argument("--models", nargs="*", default=["r2d2_WASF_N16", "faster2d2_WASF_N16"])
    parser.add_argument("--baseline", action="store_true", help="parity: also time the original-style pipeline")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="tiled/throughput")
    parser.add_argument("--tiled-images", nargs="*", default=["v_churchill_1"])
    parser.add_argument("--min-scale", type=float, default=1.0, help="tiled memory runs: 1.0 = full level only")
    parser.add_argument("--no-memory", action="store_true", help="tiled: skip the peak-RSS child runs")
    parser.add_argument("--n", type=int, default=4, help="throughput: number of images")
    parser.add_argument("--child-memory", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        w, h, tile, precision, min_scale = args.child_memory
        _child_memory(int(w), int(h), None if tile == "None" else int(tile), precision, float(min_scale))
        return
    sections = args.sections or ["parity", "bf16", "tiled", "throughput"]
    unknown = set(sections) - {"parity", "bf16", "tiled", "throughput"}
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from parity, bf16, tiled, throughput")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    for section in sections:
        globals()[f"section_{section}"](args)


if __name__ == "__main__":
    main()
