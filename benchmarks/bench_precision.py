"""bf16 autocast and channels-last against fp32 for the CNN extractors, all measured in the same run.

For each model (R2D2, ALIKED-n16, DISK, XFeat by default) and each run option of the Extractor base
(`precision`, `channels_last`): seconds per image with `--threads` torch threads (the network and the
keypoint selection, `Extractor.extract_prepared`, on images already decoded and resized; the variants
of a model interleaved image by image, order rotated, best of `--rounds` sums), its ratio to fp32, the
share of the fp32 keypoints with a keypoint of the variant within 0.5 px, and MMA@3 on HPatches
(../shared/data/hpatches_subset, mutual NN, `localfeat.eval.hpatches.evaluate_hpatches`) with its
difference to fp32. R2D2's bf16 is its own path (BatchNorm folded, bf16 trunk, fp32 heads); the other
models' is torch.autocast(bfloat16) around the whole extraction. `--compile MODEL` adds torch.compile of
that model's network (fp32): the first-call cost and the steady ratio to eager. `--pipeline MODEL` adds
`localfeat.extract` of the images into a feature store with decode + resize overlapped with the network
(prefetch_images=1) against all in one thread (0), and checks that the two stores hold the same arrays.

    python benchmarks/bench_precision.py
    python benchmarks/bench_precision.py --models xfeat --rounds 1 --compile xfeat
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))
os.environ.setdefault("LOCALFEAT_WEIGHTS", os.pathsep.join(str(p) for p in sorted(DATA.glob("weights_*"))))

from localfeat.datasets.hpatches import HPatchesSequences  # noqa: E402
from localfeat.eval.hpatches import EvalSettings, evaluate_hpatches  # noqa: E402
from localfeat.eval.sources import CallableSource  # noqa: E402
from localfeat.config import parse_model_spec  # noqa: E402
from localfeat.hardware import cpu_info  # noqa: E402
from localfeat.registry import load_extractor  # noqa: E402

MODELS = ("r2d2", "aliked:variant=aliked-n16", "disk", "xfeat")
VARIANTS = {"fp32": {}, "bf16": {"precision": "bf16"}, "fp32 channels-last": {"channels_last": True},
            "bf16 channels-last": {"precision": "bf16", "channels_last": True}}


def agreement(ref: np.ndarray, other: np.ndarray, radius: float = 0.5) -> float:
    """Share of the keypoints `ref` (N, 2) with a keypoint of `other` (M, 2) within `radius` px."""
    from scipy.spatial import cKDTree

    if len(ref) == 0:
        return float("nan")
    if len(other) == 0:
        return 0.0
    return float(np.mean(cKDTree(other).query(ref, k=1)[0] <= radius))


def measure_model(spec: str, variants: list[str], names: list[str], root: Path, args) -> dict:
    """{variant: {'seconds', 'features' {name: Features}}} for one model."""
    name, conf = parse_model_spec(spec)
    base = {**conf, "resize_max": args.resize_max, "max_keypoints": args.keypoints, "device": "cpu"}
    models = {v: load_extractor(name, **base, **VARIANTS[v]) for v in variants}
    prepared = {n: models[variants[0]].prepare(root / n) for n in names}  # the same arrays for every variant
    for ex in models.values():  # warm-up: first-call allocations and bf16 kernel selection
        ex.extract_prepared(prepared[names[0]])
    best = {v: float("inf") for v in variants}
    feats = {v: {} for v in variants}
    for r in range(args.rounds):
        spent = {v: 0.0 for v in variants}
        for i, n in enumerate(names):
            order = variants[(i + r) % len(variants):] + variants[:(i + r) % len(variants)]
            for v in order:
                t = time.perf_counter()
                f = models[v].extract_prepared(prepared[n])
                spent[v] += time.perf_counter() - t
                feats[v].setdefault(n, f)
        for v in variants:
            best[v] = min(best[v], spent[v] / len(names))
    return {v: {"seconds": best[v], "features": feats[v]} for v in variants}


def mma3(label: str, features: dict, root: Path, out: Path, keypoints: int) -> float:
    source = CallableSource(label, features.__getitem__, {"label": label, "time": time.time_ns()})
    res = evaluate_hpatches(root, [source], out / label.replace(" ", "_").replace(":", "_"),
                            EvalSettings(top_k=keypoints), exclude=(), plot=False)
    return float(res["methods"][label]["mma_overall"][2])


def measure_compile(spec: str, names: list[str], root: Path, args) -> str:
    """torch.compile of the model's network: first pass over the images (compilations) and steady s/image
    against eager, interleaved; plus the largest keypoint difference."""
    name, conf = parse_model_spec(spec)
    base = {**conf, "resize_max": args.resize_max, "max_keypoints": args.keypoints, "device": "cpu"}
    eager, compiled = load_extractor(name, **base), load_extractor(name, **base)
    compiled.net = torch.compile(compiled.net)
    prepared = {n: eager.prepare(root / n) for n in names}
    shapes = len({p.image.shape for p in prepared.values()})
    eager.extract_prepared(prepared[names[0]])
    t = time.perf_counter()
    for n in names:  # every shape once: compilations (dynamic shapes after the second one)
        compiled.extract_prepared(prepared[n])
    first = time.perf_counter() - t
    spent = {"eager": float("inf"), "compiled": float("inf")}
    same = []
    for r in range(args.rounds):
        total = {"eager": 0.0, "compiled": 0.0}
        for i, n in enumerate(names):
            out = {}
            for label in (("eager", "compiled") if (i + r) % 2 == 0 else ("compiled", "eager")):
                ex = eager if label == "eager" else compiled
                t = time.perf_counter()
                out[label] = ex.extract_prepared(prepared[n])
                total[label] += time.perf_counter() - t
            same.append(agreement(out["eager"].keypoints, out["compiled"].keypoints))
        for k in spent:
            spent[k] = min(spent[k], total[k] / len(names))
    return (f"torch.compile({name} network, fp32): first pass over the {len(names)} images ({shapes} shapes) "
            f"{first:.1f} s against {spent['eager'] * len(names):.1f} s eager; then {spent['compiled']:.3f} vs "
            f"{spent['eager']:.3f} s/image = ratio {spent['compiled'] / spent['eager']:.2f}; "
            f"keypoints within 0.5 px of eager: {100 * np.mean(same):.1f}%")


def measure_pipeline(spec: str, names: list[str], root: Path, out: Path, args) -> str:
    """Wall time of `localfeat.pipeline.extract` over the images with prefetch_images 1 vs 0, interleaved."""
    import h5py

    from localfeat.pipeline import extract

    name, conf = parse_model_spec(spec)
    ex = load_extractor(name, **{**conf, "resize_max": args.resize_max, "max_keypoints": args.keypoints,
                                 "device": "cpu"})
    items = [(n, root / n) for n in names]
    ex.extract(root / names[0])
    best = {0: float("inf"), 1: float("inf")}
    for r in range(max(2, args.rounds)):
        for depth in ((0, 1) if r % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            extract(items, out / f"pipeline_{depth}.h5", extractor=ex, overwrite=True, prefetch_images=depth)
            best[depth] = min(best[depth], time.perf_counter() - t)

    def arrays(path):
        with h5py.File(path, "r") as f:
            found = {}
            f.visititems(lambda k, v: found.update({k: v[()]}) if isinstance(v, h5py.Dataset) else None)
            return found

    a, b = arrays(out / "pipeline_0.h5"), arrays(out / "pipeline_1.h5")
    same = sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    return (f"pipeline.extract({name}, {len(names)} images from disk): decode + resize overlapped "
            f"(prefetch_images=1) {best[1]:.2f} s vs in one thread {best[0]:.2f} s = ratio {best[1] / best[0]:.2f} "
            f"(best of {max(2, args.rounds)}); identical stores: {same}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="model specs (NAME or NAME:key=value,...)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--resize-max", type=int, default=640)
    p.add_argument("--keypoints", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="timing rounds over all images (best of N)")
    p.add_argument("--root", default=str(DATA / "hpatches_subset"), help="HPatches-format folder")
    p.add_argument("--images", type=int, default=None, help="time and compare only the first N images "
                   "(MMA needs all; a smoke run)")
    p.add_argument("--compile", default=None, metavar="MODEL", help="also measure torch.compile on this model")
    p.add_argument("--pipeline", default=None, metavar="MODEL",
                   help="also time the batch pipeline with and without the decode/resize thread")
    p.add_argument("--output", default=None, help="keep the evaluation folders here (default: a temporary one)")
    args = p.parse_args()
    if "fp32" not in args.variants:
        p.error("--variants must include fp32 (the reference of every ratio)")
    variants = ["fp32"] + [v for v in args.variants if v != "fp32"]
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    out = Path(args.output or tempfile.mkdtemp(prefix="localfeat_bench_precision_"))
    names = HPatchesSequences(root, exclude=()).image_names()
    full = args.images is None
    names = names[:args.images] if args.images else names
    info, load0, start = cpu_info(), os.getloadavg()[0], time.time()

    rows = []
    for spec in args.models:
        try:
            res = measure_model(spec, variants, names, root, args)
        except Exception as exc:  # one model's failure must not hide the others' figures
            rows.append((spec, "all", f"failed: {type(exc).__name__}: {str(exc)[:160]}"))
            continue
        ref = res["fp32"]
        mma_ref = mma3(f"{spec} fp32", ref["features"], root, out, args.keypoints) if full else float("nan")
        for v in variants:
            r = res[v]
            agree = np.mean([agreement(ref["features"][n].keypoints, r["features"][n].keypoints) for n in names])
            count = np.mean([len(r["features"][n]) for n in names])
            mma = mma_ref if v == "fp32" else (mma3(f"{spec} {v}", r["features"], root, out, args.keypoints)
                                               if full else float("nan"))
            rows.append((spec, v, f"{r['seconds']:.3f} | {r['seconds'] / ref['seconds']:.2f} | {count:.0f} | "
                                  f"{100 * agree:.1f}% | {mma:.3f} | {mma - mma_ref:+.3f}"))
            print(f"measured: | {spec} | {v} | {rows[-1][2]} |", flush=True)  # kept if the run is cut short
    pipeline_line = measure_pipeline(args.pipeline, names, root, out, args) if args.pipeline else None
    compile_line = measure_compile(args.compile, names, root, args) if args.compile else None

    print(f"\nCPU: {info.summary()}")
    print(f"bf16 arithmetic in hardware: {'yes' if info.has_bf16 else 'no'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at "
          f"the end; {time.time() - start:.0f} s; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{len(names)} images of {root} at a longer side of {args.resize_max}, {args.keypoints} keypoints; "
          f"s/image = extract_prepared (network + keypoints), best of {args.rounds} interleaved round(s); "
          "ratio = variant / fp32 of the same model; agreement = fp32 keypoints with a variant keypoint within "
          "0.5 px; MMA@3 mutual NN over the 10 pairs\n")
    print("| model | variant | s/image | ratio vs fp32 | keypoints | within 0.5 px of fp32 | MMA@3 | MMA@3 - fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for spec, v, text in rows:
        if text.startswith("failed"):
            print(f"| {spec} | {v} | {text} | | | | | |")
        else:
            print(f"| {spec} | {v} | {text} |")
    for line in (pipeline_line, compile_line):
        if line:
            print(f"\n{line}")
    print(f"\nevaluations kept in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
