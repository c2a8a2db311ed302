"""Experiment (not shipped): learned whitening of lite's descriptors, fit on synthetic pairs of training photos.

The whitening of Radenovic et al. (descriptors centred, then multiplied by (C_s + lam mean(eig) I)^(-alpha/2),
C_s the covariance of the differences of matching descriptors), fit on 80 synthetic sequences
(`localfeat.datasets.synth`) of 40 training photos, applied after lite's descriptors and L2-normalised again;
scored on the sequences given (HPatches format; a root whose path holds 'hpatches' is read at a longer side
of 640, as bench_lite.py does). Result on 2026-12-01 (docs/lite.md): +0.019 mean MMA@1..5 on the held-out
Sacre Coeur synthetic sequences, -0.011 MMA@3 on the real HPatches sequences: it does not transfer.

    python benchmarks/lite_whitening.py /tmp/localfeat_tune_lite_XXXX/sequences ../shared/data/hpatches_subset

(the first root: `tune_lite_detection.py --output DIR` keeps its sequences in DIR/sequences).
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import localfeat
from localfeat.datasets.synth import generate, list_photos
from localfeat.eval.hpatches import EvalSettings, ExtractorSource, evaluate_hpatches
from localfeat.extractors import lite
from localfeat.io.images import read_image

# (alpha, shrinkage, centred) of each variant; None = lite as shipped
VARIANTS = {"none": None, "a1_l0.1_c": (1.0, 0.1, True), "a1_l0.1": (1.0, 0.1, False),
            "a0.5_l0.1_c": (0.5, 0.1, True), "a1_l1_c": (1.0, 1.0, True), "center": (0.0, 0.0, True)}


def matching_pairs(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """lite's descriptors (N, 64) at its 1024 best keypoints of each sequence's image 1 and, through the
    ground-truth homographies, at the same points of images 2-6 (points 3 px inside the image)."""
    ex = localfeat.load_extractor("lite", max_keypoints=1024, resize_max=None)
    xs, ys = [], []
    for seq in sorted(p for p in root.iterdir() if p.is_dir()):
        f1 = ex.extract(read_image(seq / "1.ppm", "gray"))
        for k in range(2, 7):
            H = np.loadtxt(seq / f"H_1_{k}")
            image = read_image(seq / f"{k}.ppm", "gray")
            p = np.c_[f1.keypoints, np.ones(len(f1.keypoints))] @ H.T
            p = p[:, :2] / p[:, 2:]
            h, w = image.shape[:2]
            ok = (p[:, 0] > 2) & (p[:, 1] > 2) & (p[:, 0] < w - 3) & (p[:, 1] < h - 3)
            x = torch.from_numpy(image).float()[None, None] / 255.0
            with torch.inference_mode():
                _, maps = ex.net(lite.pad_to_multiple(x).contiguous(memory_format=torch.channels_last))
                yk = ex.net.describe(maps, torch.from_numpy(p[ok]).float()[None])[0].numpy()
            xs.append(f1.descriptors[ok])
            ys.append(yk)
    return np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)


def whitening(x: np.ndarray, y: np.ndarray, alpha: float, shrinkage: float, centred: bool):
    """(W (D, D), mean (D,)) float32 tensors: (C_s + shrinkage mean(eig) I)^(-alpha/2), C_s the second
    moment of the differences x - y of matching descriptors; mean of x and y (zero if not centred)."""
    diff = x - y
    evals, evecs = np.linalg.eigh(diff.T @ diff / len(diff))
    w = evecs @ np.diag((evals + shrinkage * evals.mean()) ** (-alpha / 2)) @ evecs.T
    mean = np.concatenate([x, y]).mean(0) if centred else np.zeros(x.shape[1])
    return torch.from_numpy(w).float(), torch.from_numpy(mean).float()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="+", help="HPatches-format sequences to score on")
    p.add_argument("--photos", default="data/train_photos", help="training photos for the fit")
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(tempfile.mkdtemp(prefix="localfeat_lite_whitening_"))
    photos = sorted(list_photos(args.photos))
    chosen = out / "photos"
    chosen.mkdir()
    for i in np.random.default_rng(0).choice(len(photos), 40, replace=False):
        (chosen / photos[i].name).symlink_to(photos[i].resolve())
    generate(out / "fit_sequences", n_sequences=80, seed=5, photos=str(chosen), image_max_size=640)
    x, y = matching_pairs(out / "fit_sequences")
    print(f"fit on {len(x)} matching pairs")
    shipped = lite.LiteNet.describe
    try:
        for root in map(Path, args.roots):
            for label, variant in VARIANTS.items():
                lite.LiteNet.describe = shipped
                if variant is not None:
                    w, mean = whitening(x, y, *variant)

                    def describe(self, maps, xy, w=w, mean=mean):
                        return torch.nn.functional.normalize((shipped(self, maps, xy) - mean) @ w.T, dim=-1)
                    lite.LiteNet.describe = describe
                size = 640 if "hpatches" in str(root) else None
                source = ExtractorSource("lite", max_size=size, conf={"max_keypoints": 2048})
                res = evaluate_hpatches(root, [source], out / f"eval_{root.name}_{label}", EvalSettings(top_k=2048),
                                        exclude=(), plot=False)
                mma = res["methods"]["lite"]["mma_overall"][:5]
                print(root.name, label, "MMA@1..5", " ".join(f"{v:.3f}" for v in mma), f"mean {np.mean(mma):.4f}",
                      flush=True)
    finally:
        lite.LiteNet.describe = shipped
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
