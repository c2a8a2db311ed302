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
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import localfeat
from localfeat.datasets.synth import generate, list_photos
from localfeat.eval.hpatches import EvalSettings, ExtractorSource, evaluate_hpatches
from localfeat.extractors import lite
from localfeat.io.images import read_image
torch.set_num_threads(2)

out = Path(tempfile.mkdtemp(prefix="localfeat_lite_whitening_"))
photos = sorted(list_photos("data/train_photos"))
rng = np.random.default_rng(0)
sel = [photos[i] for i in rng.choice(len(photos), 40, replace=False)]
sub = out / "photos"; sub.mkdir(exist_ok=True)
for p in sel:
    if not (sub / p.name).exists(): (sub / p.name).symlink_to(p.resolve())
root = out / "fit_sequences"
if not root.is_dir():
    generate(root, n_sequences=80, seed=5, photos=str(sub), image_max_size=640)
ex = localfeat.load_extractor("lite", max_keypoints=1024, resize_max=None)
X, Y = [], []
for seq in sorted(root.iterdir()):
    if not seq.is_dir(): continue
    im1 = read_image(seq / "1.ppm", "gray")
    f1 = ex.extract(im1)
    for k in range(2, 7):
        H = np.loadtxt(seq / f"H_1_{k}")
        imk = read_image(seq / f"{k}.ppm", "gray")
        p = np.c_[f1.keypoints, np.ones(len(f1.keypoints))] @ H.T
        p = p[:, :2] / p[:, 2:]
        h, w = imk.shape[:2]
        ok = (p[:, 0] > 2) & (p[:, 1] > 2) & (p[:, 0] < w - 3) & (p[:, 1] < h - 3)
        x = torch.from_numpy(imk).float()[None, None] / 255.0
        with torch.inference_mode():
            _, maps = ex.net(lite.pad_to_multiple(x).contiguous(memory_format=torch.channels_last))
            dk = ex.net.describe(maps, torch.from_numpy(p[ok]).float()[None])[0].numpy()
        X.append(f1.descriptors[ok]); Y.append(dk)
X, Y = np.concatenate(X).astype(np.float64), np.concatenate(Y).astype(np.float64)
print("pairs", len(X))
mu = np.concatenate([X, Y]).mean(0)
D = X - Y
Cs = D.T @ D / len(D)
evals, evecs = np.linalg.eigh(Cs)
def make(alpha, lam, center):
    e = evals + lam * evals.mean()
    W = evecs @ np.diag(e ** (-alpha / 2)) @ evecs.T
    m = mu if center else np.zeros_like(mu)
    return torch.from_numpy(W).float(), torch.from_numpy(m).float()
orig = lite.LiteNet.describe
variants = {"none": None, "a1_l0.1_c": (1.0, 0.1, True), "a1_l0.1": (1.0, 0.1, False), "a0.5_l0.1_c": (0.5, 0.1, True), "a1_l1_c": (1.0, 1.0, True), "center": (0.0, 0.0, True)}
for root_eval in map(Path, sys.argv[1:]):
    for label, v in variants.items():
        if v is None:
            lite.LiteNet.describe = orig
        else:
            W, m = make(*v)
            def describe(self, maps, xy, W=W, m=m):
                d = orig(self, maps, xy)
                return torch.nn.functional.normalize((d - m) @ W.T, dim=-1)
            lite.LiteNet.describe = describe
        src = ExtractorSource("lite", max_size=640, conf={"max_keypoints": 2048}) if "hpatches" in str(root_eval) else ExtractorSource("lite", conf={"max_keypoints": 2048})
        res = evaluate_hpatches(root_eval, [src], out / f"eval_{root_eval.name}_{label}", EvalSettings(top_k=2048), exclude=(), plot=False)
        mma = res["methods"]["lite"]["mma_overall"]
        print(root_eval.name, label, "MMA@1..5", " ".join(f"{x:.3f}" for x in mma[:5]), "mean", f"{np.mean(mma[:5]):.4f}", flush=True)
