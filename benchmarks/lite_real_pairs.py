"""Held-out REAL image pairs for choosing between lite weights or comparing models: epipolar precision, pose AUC.

The synthetic held-out sequences (tune_lite_detection.py) warp one photo by a homography: no new lighting, no
parallax, no other camera. This benchmark scores real pairs instead: the photos of three landmark scenes that
are neither in lite's training set nor in hpatches_subset (hloc's ten Sacre Coeur photos and the two
five-photo PhotoTourism scenes of ALIKED's demo), posed by a SIFT reconstruction (`localfeat.sfm.reconstruct`,
4,096 keypoints at a longer side of 1,600, seed 0, one COLMAP thread; built once and kept in OUTPUT) and
undistorted by `build_scene`. Every covisible pair of a scene (`build_scene`'s rule: 20 shared 3D points,
overlap 0.1) is matched at a longer side of 640 (cv2 INTER_AREA, as bench_lite.py), 2,048 keypoints, mutual NN.

- precision@1..5: the share of matches whose epipolar error (`geometry.epipolar_distances`, the larger of
  the two images' point-to-line distances, at 640) is within 1..5 px, averaged over the pairs; the table's
  last column is its mean over the five thresholds (the choice). A wrong match that falls on its epipolar
  line counts as right, so this bounds the true precision from above; the ranking of two descriptors is what
  it is for.
- pose AUC@5/10/20 degrees (`eval.pose`: OpenCV RANSAC on the essential matrix, 1 px, seed 0).

    python benchmarks/lite_real_pairs.py --weights runs/A/weights.pt runs/B/weights.pt --output /tmp/real_pairs
    python benchmarks/lite_real_pairs.py --models lite xfeat alike:variant=alike-t,scores_th=None
    python benchmarks/lite_real_pairs.py              # the packaged weights
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))
os.environ.setdefault("LOCALFEAT_WEIGHTS", os.pathsep.join(str(p) for p in sorted(DATA.glob("weights_*"))))

from localfeat.datasets.colmap_scenes import ColmapScenes, build_scene  # noqa: E402
from localfeat.eval.metrics import mutual_nn_matches  # noqa: E402
from localfeat.eval.pose import estimate_relative_pose, pose_auc, relative_pose_error  # noqa: E402
from localfeat.geometry import epipolar_distances, relative_pose  # noqa: E402
from localfeat.io.images import resize_max  # noqa: E402
from localfeat.config import parse_model_spec  # noqa: E402
from localfeat.registry import load_extractor  # noqa: E402
from localfeat.sfm import reconstruct  # noqa: E402

SCENES = {"sacre_coeur": DATA / "sfm_sacre_coeur_hloc" / "mapping",
          "piazza_san_marco": DATA / "phototourism_aliked" / "piazza_san_marco",
          "st_pauls_cathedral": DATA / "phototourism_aliked" / "st_pauls_cathedral"}
LONGER_SIDE = 640


def build_dataset(out: Path) -> Path:
    """Reconstruct each scene with SIFT once and add it to OUT/dataset (kept between runs)."""
    root = out / "dataset"
    done = {s["name"] for s in json.loads((root / "index.json").read_text())["scenes"]} \
        if (root / "index.json").is_file() else set()
    for name, photos in SCENES.items():
        if name in done:
            continue
        sfm = out / "sfm" / name
        summary = reconstruct(photos, sfm, model="sift", conf={"max_keypoints": 4096, "resize_max": 1600},
                              seed=0, num_threads=1)
        print(f"{name}: {summary['num_registered']} of {summary['num_images']} photos registered, "
              f"{summary['num_points3d']} points, reprojection error {summary['mean_reprojection_error']:.2f} px")
        build_scene(sfm / "sparse", photos, root, scene=name)
    return root


def resized(image: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image at a longer side of 640 and its K (pixel centres at integers: u' = (u + 0.5) s - 0.5)."""
    small, (fx, fy) = resize_max(image, LONGER_SIDE)
    sx, sy = 1 / fx, 1 / fy
    S = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    return small, S @ K


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=[], help="extractor specs, e.g. lite xfeat alike:variant=alike-t")
    p.add_argument("--weights", nargs="+", default=[], help="lite weights files, each a model")
    p.add_argument("--keypoints", type=int, default=2048)
    p.add_argument("--output", default=None, help="keep the reconstructions here (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(args.output or tempfile.mkdtemp(prefix="localfeat_real_pairs_"))
    data = ColmapScenes(build_dataset(out), load_depth=False)
    views = {}
    for scene, i, j, _, _ in data.pairs:
        for k in (i, j):
            if (scene, k) not in views:
                v = data.view(scene, k, load_depth=False)
                views[(scene, k)] = (*resized(v["image"], v["K"]), v["T"])
    print(f"\n{len(data.pairs)} real pairs ({', '.join(f'{s}: {sum(p[0] == s for p in data.pairs)}' for s in SCENES)}),"
          f" {len(views)} images at a longer side of {LONGER_SIDE}, {args.keypoints} keypoints, mutual NN\n")
    print("| model | matches | precision@1/2/3/4/5 px | pose AUC@5/10/20 | mean precision@1..5 |")
    print("|---|---|---|---|---|")
    for spec in args.models + [f"lite:weights={w}" for w in args.weights] or ["lite"]:
        name, conf = parse_model_spec(spec)
        ex = load_extractor(name, **{**conf, "max_keypoints": args.keypoints, "device": "cpu"})
        feats = {key: ex.extract(im) for key, (im, _, _) in views.items()}  # RGB, converted to ex.input_mode
        precision, errors, counts = [], [], []
        for scene, i, j, _, _ in data.pairs:
            (_, K0, T0), (_, K1, T1) = views[(scene, i)], views[(scene, j)]
            f0, f1 = feats[(scene, i)], feats[(scene, j)]
            m = mutual_nn_matches(f0.descriptors, f1.descriptors)
            kp0, kp1 = f0.keypoints[m[:, 0]], f1.keypoints[m[:, 1]]
            T_0to1 = relative_pose(T0, T1)
            d = epipolar_distances(kp0, kp1, K0, K1, T_0to1)
            precision.append([(d <= t).mean() if len(d) else 0.0 for t in range(1, 6)])
            counts.append(len(m))
            est = estimate_relative_pose(kp0, kp1, K0, K1, ransac_thresh=1.0, seed=0)
            errors.append(max(relative_pose_error(T_0to1, est[0], est[1])) if est else np.inf)
        prec, auc = np.mean(precision, 0), pose_auc(errors) * 100
        print(f"| {spec} | {np.mean(counts):.0f} | {' / '.join(f'{v:.3f}' for v in prec)} | "
              f"{' / '.join(f'{v:.1f}' for v in auc)} | {prec.mean():.4f} |", flush=True)
    print(f"\nreconstructions and dataset in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
