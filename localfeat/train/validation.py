"""Validation during training: the network being trained, single scale, on an HPatches-format folder
(MMA with the evaluation's metrics: `localfeat.eval.metrics`). `adapter` below is the model's
`localfeat.registry.Trainable` (its training hooks)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch


def detection_and_descriptors(out: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A keypoint-score map (B, 1, h, w) and the descriptors (B, D, h, w) of dense outputs, for
    validation: R2D2 reliability x repeatability; else scores / sigmoid(logits) / D2-Net soft scores."""
    if "reliability" in out and "repeatability" in out:
        return out["reliability"] * out["repeatability"], out["descriptors"]
    if "scores" in out:
        return out["scores"], out["descriptors"]
    if "logits" in out:
        return torch.sigmoid(out["logits"]), out["descriptors"]
    from ..extractors.d2net import soft_detection_scores

    return soft_detection_scores(out["features"])[:, None], out["descriptors"]


@torch.no_grad()
def extract_dense(adapter, net, image: np.ndarray, device, top_k: Optional[int] = 1000, nms: int = 3):
    """Keypoints of one uint8 RGB image with the network being trained (single scale): NMS on the
    score map, the top_k best, descriptors at those pixels. Returns `Features` in image pixels."""
    from ..ops import image_to_tensor, max_filter_nms, top_k_indices
    from ..types import Features

    h, w = image.shape[:2]
    x = image_to_tensor(image, device)
    out = adapter.dense(net, x)
    score, desc = detection_and_descriptors(out)
    stride = int(out.get("stride", 1))
    mask = max_filter_nms(score, nms)[0, 0]
    ys, xs = mask.nonzero(as_tuple=True)
    sc = score[0, 0, ys, xs]
    keep = top_k_indices(sc, top_k)
    ys, xs, sc = ys[keep], xs[keep], sc[keep]
    d = torch.nn.functional.normalize(desc[0][:, ys, xs].t().float(), dim=1)
    kp = torch.stack([xs, ys], -1).float() * stride + (stride - 1) / 2
    inside = (kp[:, 0] <= w - 1) & (kp[:, 1] <= h - 1)
    return Features(kp[inside].cpu().numpy(), sc[inside].float().cpu().numpy(), d[inside].cpu().numpy(), (w, h))


def _extract_resized(adapter, net, image: np.ndarray, device, top_k, nms, resize_max):
    """`extract_dense` on the image downscaled to `resize_max` (None = as is), keypoints in original pixels."""
    from ..io.images import map_keypoints_to_original, resize_max as resize

    small, factors = resize(image, resize_max)
    f = extract_dense(adapter, net, small, device, top_k, nms)
    if factors != (1.0, 1.0):
        f.keypoints = map_keypoints_to_original(f.keypoints, factors).astype(np.float32)
    f.image_size = (image.shape[1], image.shape[0])
    return f


def validation_set(conf: dict, run_dir: Path) -> Path:
    """The HPatches-format folder validated on: `validation.root`, or a synthetic set generated once
    (from the scikit-image photos) in RUN_DIR/val_hpatches."""
    v = conf["validation"]
    if v["root"]:
        return Path(v["root"])
    root = run_dir / "val_hpatches"
    if not (root / "synth.json").exists():
        from ..datasets.synth import generate

        generate(root, n_sequences=int(v["synth_sequences"]), seed=int(v["synth_seed"]),
                 image_max_size=int(v["synth_size"]))
    return root


def evaluate_mma(adapter, net, root: Path, device, top_k: Optional[int] = 1000, nms: int = 3,
                 resize_max: Optional[int] = None) -> dict:
    """MMA at 1, 3, 5 px (D2-Net protocol: mutual NN, all pairs 1-k of every sequence) of the network
    on an HPatches-format folder, MMA@3 of the i_ and v_ sequences apart ('mma@3_i', 'mma@3_v'; NaN
    when there are none), mean features per image and matches per pair. resize_max: images are first
    downscaled so that their longer side is at most this (keypoints mapped back to full resolution)."""
    from ..datasets.hpatches import HPatchesSequences
    from ..eval import metrics
    from ..io.images import read_image

    ds = HPatchesSequences(root, exclude=())
    was_training = net.training
    net.eval()
    acc, nfeat, nmatch, kinds = [], [], [], []
    try:
        for seq in ds.sequences:
            f1 = _extract_resized(adapter, net, read_image(ds.image_path(seq, 1), "rgb"), device, top_k, nms,
                                  resize_max)
            nfeat.append(len(f1))
            for k in range(2, 7):
                fk = _extract_resized(adapter, net, read_image(ds.image_path(seq, k), "rgb"), device, top_k, nms,
                                      resize_max)
                nfeat.append(len(fk))
                m = metrics.mutual_nn_matches(f1.descriptors, fk.descriptors) if len(f1) and len(fk) \
                    else np.zeros((0, 2), np.int64)
                d = metrics.reprojection_distances(f1.keypoints, fk.keypoints, m, ds.homography(seq, k))
                acc.append(metrics.matching_accuracy(d, (1, 3, 5)))
                kinds.append(seq[0])
                nmatch.append(len(m))
    finally:
        net.train(was_training)
    a = np.mean(acc, axis=0)
    out = {"mma@1": float(a[0]), "mma@3": float(a[1]), "mma@5": float(a[2])}
    for kind in ("i", "v"):
        sel = [x[1] for x, k in zip(acc, kinds) if k == kind]
        out[f"mma@3_{kind}"] = float(np.mean(sel)) if sel else float("nan")
    return {**out, "features": float(np.mean(nfeat)), "matches": float(np.mean(nmatch))}
