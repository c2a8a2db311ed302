"""`localfeat demo`: the whole pipeline on photos that ship with scikit-image (works offline).

Writes to OUT: images/ (a real stereo pair and a photo with a known homography warp), for SIFT and
for lite (localfeat's own learned model, shipped in the package) features_<model>.h5,
matches_<model>.h5 and pictures of the matches (green = correct / inlier, red = wrong); then
hpatches_synth/ (a small synthetic HPatches-format set built from the same photos) and hpatches/ (both
evaluated on it by the D2-Net protocol: results.md/json/csv and mma.png).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from .datasets.photos import bundled_photo_dir
from .geometry import fundamental_inliers
from .io.atomic import write_text_atomic
from .io.images import read_image
from .io.h5 import FeatureStore, MatchStore
from .pipeline import extract, match
from .viz import draw_matches, save_png

logger = logging.getLogger(__name__)

# The homography of the synthetic pair: rotate 20 degrees, scale 0.8, mild perspective.
DEMO_HOMOGRAPHY = np.array([[0.75, -0.27, 120.0], [0.27, 0.75, 20.0], [1e-4, 5e-5, 1.0]])


def prepare_demo_images(out_dir: Path) -> Path:
    """Write the demo images; returns the image folder. Files are only written when absent."""
    src = bundled_photo_dir()
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in ("motorcycle_left.png", "motorcycle_right.png", "astronaut.png"):
        if not (images / name).exists():
            save_png(images / name, read_image(src / name))
    warped = images / "astronaut_warped.png"
    if not warped.exists():
        a = read_image(images / "astronaut.png")
        save_png(warped, cv2.warpPerspective(a, DEMO_HOMOGRAPHY, (a.shape[1], a.shape[0]),
                                             flags=cv2.INTER_LINEAR))
    return images


# (label, extractor, its config, matcher config): SIFT with Lowe's ratio test, and lite, localfeat's
# own learned model (shipped in the package: no weights lookup or download), with mutual NN.
DEMO_MODELS = (("sift", "sift", {"max_keypoints": 4096}, {"ratio": 0.9}),
               ("lite", "lite", {"max_keypoints": 2048}, {}))


def run_demo(out_dir: Path) -> dict:
    """Extract SIFT and lite, match exhaustively, draw the matches; returns (and writes) a summary dict.
    Files: features_<model>.h5, matches_<model>.h5, matches_<model>_<a>__<b>.png."""
    out_dir = Path(out_dir)
    images = prepare_demo_images(out_dir)
    pairs = [("motorcycle_left.png", "motorcycle_right.png"), ("astronaut.png", "astronaut_warped.png")]
    summary = {}
    for label, model, conf, match_conf in DEMO_MODELS:
        features, matches = out_dir / f"features_{label}.h5", out_dir / f"matches_{label}.h5"
        print(f"[{label}] extract {model} from {images}")
        print("      " + extract(images, features, model=model, conf=conf).summary())
        print(f"[{label}] match (mutual nearest neighbours{', ratio %s' % match_conf['ratio'] if match_conf else ''})")
        print("      " + match(features, matches, pairs, conf=match_conf).summary())
        fstore, mstore = FeatureStore(features, mode="r"), MatchStore(matches, mode="r")
        for a, b in pairs:
            f0, f1 = fstore.get(a), fstore.get(b)
            m = mstore.get(a, b, num_keypoints=(len(f0), len(f1)))
            p0, p1 = f0.keypoints[m.indices[:, 0]], f1.keypoints[m.indices[:, 1]]
            if b == "astronaut_warped.png":  # ground truth known: correct = reprojection error <= 3 px
                proj = cv2.perspectiveTransform(p0[None].astype(np.float64), DEMO_HOMOGRAPHY)[0]
                good = np.linalg.norm(proj - p1, axis=1) <= 3.0
                kind = "correct (<= 3 px of the true homography)"
            else:  # real stereo pair: inliers of a RANSAC fundamental matrix
                good = fundamental_inliers(p0, p1, threshold=1.0)
                kind = "RANSAC fundamental-matrix inliers (1 px)"
            picture = draw_matches(read_image(images / a), read_image(images / b), f0.keypoints, f1.keypoints,
                                   m.indices, inliers=good, max_lines=600)
            path = save_png(out_dir / f"matches_{label}_{Path(a).stem}__{Path(b).stem}.png", picture)
            summary[f"{label} {a} {b}"] = {"keypoints": [len(f0), len(f1)], "matches": len(m),
                                           "good": int(good.sum()), "good_means": kind, "picture": path.name}
            print(f"      {a} - {b}: {len(f0)}/{len(f1)} keypoints, {len(m)} matches, "
                  f"{int(good.sum())} {kind} -> {path}")
    summary["hpatches"] = run_hpatches_demo(out_dir)
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def run_hpatches_demo(out_dir: Path, n_sequences: int = 4, image_max_size: int = 400,
                      specs=("sift:max_keypoints=2048", "lite:max_keypoints=2048")) -> dict:
    """Build a small synthetic HPatches-format set from the bundled photos, evaluate each extractor spec
    on it (D2-Net protocol), write the MMA figure and the tables; returns the headline numbers (those of
    the first spec at top level, every spec's under 'methods')."""
    from .datasets.synth import generate
    from .eval.hpatches import ExtractorSource, evaluate_hpatches

    data_dir, eval_dir = out_dir / "hpatches_synth", out_dir / "hpatches"
    print(f"[hpatches] HPatches-format evaluation: {n_sequences} synthetic sequences -> {data_dir}")
    generate(data_dir, n_sequences=n_sequences, seed=0, image_max_size=image_max_size)
    results = evaluate_hpatches(data_dir, [ExtractorSource(s) for s in specs], eval_dir)
    methods = {}
    for spec in specs:
        m = results["methods"][spec]
        mma, hom = m["mma_overall"], m["homography_accuracy"]
        print(f"      {spec}: MMA@1/3/5 = {mma[0]:.3f} / {mma[2]:.3f} / {mma[4]:.3f}, homography accuracy@1/3/5 = "
              f"{hom['1']:.3f} / {hom['3']:.3f} / {hom['5']:.3f}, {m['n_features']:.0f} features, "
              f"{m['n_matches']:.0f} matches per pair")
        methods[spec] = {"mma_overall@1,3,5": [mma[0], mma[2], mma[4]], "homography_accuracy": hom}
    print(f"      -> {eval_dir / 'mma.png'}, {eval_dir / 'results.md'}")
    return {"sequences": n_sequences, **methods[specs[0]], "methods": methods,
            "figure": "hpatches/mma.png", "table": "hpatches/results.md"}
