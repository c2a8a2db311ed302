"""Which half limits lite: its keypoints and descriptors crossed with ALIKE-t's on the real sequences.

hpatches_subset's real sequences, images resized to a longer side of 640 (cv2 INTER_AREA, as the benchmark),
2048 keypoints per model, mutual NN, D2-Net protocol (MMA in original-image pixels). A model's descriptors at
the other model's keypoints: lite through `LiteNet.describe`, ALIKE-t sampled bilinearly from its dense map.
The lite/lite row equals bench_lite.py's figures; ALIKE-t runs in top-k mode here (its 2048 best peaks, no
score threshold), so its own row (MMA@3 0.686) differs a little from the benchmark's (0.694, default threshold).

    python benchmarks/lite_halves.py [--weights runs/lite_ft/weights.pt]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))
os.environ.setdefault("LOCALFEAT_WEIGHTS", os.pathsep.join(str(p) for p in sorted(DATA.glob("weights_*"))))

from localfeat.datasets.hpatches import HPatchesSequences  # noqa: E402
from localfeat.eval.hpatches import EvalSettings, evaluate_pair  # noqa: E402
from localfeat.extractors.lite import pad_to_multiple  # noqa: E402
from localfeat.io.images import read_image, resize_max  # noqa: E402
from localfeat.ops import image_to_tensor, l2_normalize, sample_at_pixels  # noqa: E402
from localfeat.registry import load_extractor  # noqa: E402
from localfeat.types import Features  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="lite weights file (default: the packaged weights)")
    p.add_argument("--root", default=str(DATA / "hpatches_subset"))
    args = p.parse_args()
    torch.set_num_threads(2)
    ds = HPatchesSequences(args.root, exclude=())
    lite = load_extractor("lite", max_keypoints=2048, device="cpu",
                          **({"weights": args.weights} if args.weights else {}))
    alike = load_extractor("alike", variant="alike-t", max_keypoints=2048, scores_th=None, device="cpu")

    def lite_desc(im, xy):
        _, maps = lite.net(pad_to_multiple(image_to_tensor(im, "cpu")).contiguous(memory_format=torch.channels_last))
        return lite.net.describe(maps, torch.from_numpy(xy)[None])[0].numpy()

    def alike_desc(im, xy):
        _, dense = alike.dense(image_to_tensor(im, "cpu"))
        return l2_normalize(sample_at_pixels(dense, torch.from_numpy(xy)[None], 1, "border"), dim=-1)[0].numpy()

    feats = {}
    with torch.inference_mode():
        for seq in sorted({q.sequence for q in ds.pairs()}):
            for k in range(1, 7):
                full = read_image(ds.image_path(seq, k), "gray")
                size = (full.shape[1], full.shape[0])
                gray, factors = resize_max(full, 640)
                rgb, _ = resize_max(read_image(ds.image_path(seq, k), "rgb"), 640)
                scale = np.array(factors)
                own = {"lite": lite.extract(gray), "ALIKE-t": alike.extract(rgb)}
                for kname, f in own.items():
                    xy = f.keypoints.astype(np.float32)
                    for dname, describe, im in (("lite", lite_desc, gray), ("ALIKE-t", alike_desc, rgb)):
                        desc = f.descriptors if dname == kname else describe(im, xy)
                        feats[(seq, k, kname, dname)] = Features((xy + 0.5) * scale - 0.5, f.scores, desc, size)
    print("| keypoints | descriptors | MMA@1 | MMA@3 | MMA@5 | repeatability@3 |\n|---|---|---|---|---|---|")
    for kname in ("lite", "ALIKE-t"):
        for dname in ("lite", "ALIKE-t"):
            res = [evaluate_pair(feats[(q.sequence, 1, kname, dname)], feats[(q.sequence, q.k, kname, dname)],
                                 ds.homography(q.sequence, q.k), EvalSettings()) for q in ds.pairs()]
            acc = np.mean([r["accuracy"] for r in res], 0)
            rep = np.mean([r["repeatability"] for r in res])
            print(f"| {kname} | {dname} | {acc[0]:.3f} | {acc[2]:.3f} | {acc[4]:.3f} | {rep:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
