"""Where lite loses matches under a change of scale: keypoint placement or descriptor, sharp or upsampled image.

Held-out photos (the PhotoTourism photos of ALIKED's demo and hloc's Sacre Coeur photos, those of >= 1000 px; none
is a training image or in hpatches_subset). Image A is the photo at a longer side of 640 (INTER_AREA); image B is the
same photo `--zoom` times larger, two ways:
- sharp: the original photo resized to 640 x zoom (INTER_AREA), as a closer camera would see it;
- upsampled: image A enlarged (INTER_LINEAR), as the invariance sweep and the training warps make it.
H maps A to B exactly (pixel-centre convention); only the part of each image seen in the other is scored
(`invariance.evaluate_pair`, 4 px border). 2048 keypoints per image, no resize, mutual NN; distances in B's pixels.

Per model and kind of B, averaged over the photos:
- MMA@1/3 and the number of correct matches (<= 3 px) of the mutual-NN matches;
- repeatability@1/3 (`metrics.repeatability`): where the keypoints are;
- descriptor: among A's keypoints with a B keypoint within 3 px of their true position, the share whose nearest
  descriptor in B is within 3 px of it: what the descriptor does with the keypoints it is given.

    python benchmarks/lite_scale_study.py
    python benchmarks/lite_scale_study.py --models lite lite:weights=runs/RUN/weights.pt --zoom 2
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))
os.environ.setdefault("LOCALFEAT_WEIGHTS", os.pathsep.join(str(p) for p in sorted(DATA.glob("weights_*"))))

from localfeat.datasets.synth import list_photos  # noqa: E402
from localfeat.eval import metrics  # noqa: E402
from localfeat.eval.invariance import covisible, evaluate_pair  # noqa: E402
from localfeat.geometry import warp_points  # noqa: E402
from localfeat.io.images import read_image, resize_max  # noqa: E402
from localfeat.config import parse_model_spec  # noqa: E402
from localfeat.registry import load_extractor  # noqa: E402

MODELS = ("lite", "xfeat", "alike:variant=alike-t,scores_th=None", "aliked:variant=aliked-n16,scores_th=None")
PHOTOS = (DATA / "phototourism_aliked", DATA / "sfm_sacre_coeur_hloc" / "mapping")


def make_pairs(zoom: float, size: int = 640) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(A, sharp B, upsampled B, H: A -> B) for every held-out photo of >= size x zoom pixels."""
    out = []
    for path in list_photos([str(p) for p in PHOTOS]):
        photo = read_image(path, "rgb")
        if max(photo.shape[:2]) < size * zoom:
            continue
        a, sharp = resize_max(photo, size)[0], resize_max(photo, round(size * zoom))[0]
        sx, sy = sharp.shape[1] / a.shape[1], sharp.shape[0] / a.shape[0]
        H = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
        upsampled = cv2.resize(a, (sharp.shape[1], sharp.shape[0]), interpolation=cv2.INTER_LINEAR)
        out.append((a, sharp, upsampled, H))
    return out


def descriptor_share(fa, fb, H: np.ndarray, threshold: float = 3.0) -> float:
    """Among A's covisible keypoints with a covisible B keypoint within `threshold` px of their true position, the
    share whose nearest B descriptor (dot product) is within `threshold` px of it."""
    fa = fa.select(covisible(fa.keypoints, H, fb.image_size, 4.0))
    fb = fb.select(covisible(fb.keypoints, np.linalg.inv(H), fa.image_size, 4.0))
    if not len(fa) or not len(fb):
        return 0.0
    dist = np.linalg.norm(warp_points(fa.keypoints.astype(np.float64), H)[:, None] - fb.keypoints[None], axis=2)
    nearest = (torch.as_tensor(fa.descriptors).float() @ torch.as_tensor(fb.descriptors).float().T).argmax(1).numpy()
    has_partner = dist.min(1) <= threshold
    right = dist[np.arange(len(fa)), nearest] <= threshold
    return float(right[has_partner].mean()) if has_partner.any() else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--zoom", type=float, default=1.5625, help="B's size over A's (default 1000 / 640)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.zoom < 1:
        p.error(f"--zoom must be >= 1 (B is the larger image), got {args.zoom}")
    torch.set_num_threads(args.threads)
    pairs = make_pairs(args.zoom)
    if not pairs:
        p.error(f"no photo of {PHOTOS} is {640 * args.zoom:.0f} px or larger: lower --zoom")
    print(f"{len(pairs)} held-out photos, A at 640 px, B {args.zoom:.3f}x larger; 2048 keypoints, mutual NN\n")
    print("| model | image B | MMA@1 | MMA@3 | correct matches | repeatability@1/3 | descriptor NN right |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.models:
        name, conf = parse_model_spec(spec)
        extractor = load_extractor(name, **{"max_keypoints": 2048, "resize_max": None, "device": "cpu", **conf})
        for kind, j in (("sharp", 1), ("upsampled", 2)):
            rows = []
            for pair in pairs:
                fa, fb, H = extractor.extract(pair[0]), extractor.extract(pair[j]), pair[3]
                m = evaluate_pair(fa, fb, H)
                rows.append((m["mma"]["1"], m["mma"]["3"], m["n_correct"],
                             *(metrics.repeatability(fa.keypoints, fb.keypoints, H, fa.image_size, fb.image_size, t)
                               for t in (1.0, 3.0)), descriptor_share(fa, fb, H)))
            r = np.mean(rows, axis=0)
            print(f"| {spec} | {kind} | {r[0]:.3f} | {r[1]:.3f} | {r[2]:.0f} | {r[3]:.3f} / {r[4]:.3f} | {r[5]:.3f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
