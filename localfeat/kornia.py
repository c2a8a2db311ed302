"""`Features` to and from kornia's local-feature tensors, without importing kornia.

kornia's `LocalFeature` modules return `(lafs, responses, descriptors)`: local affine frames
(B, N, 2, 3) = [A | (x, y)] with A = scale * R(angle), R(a) = [[cos a, sin a], [-sin a, cos a]] (angle in
degrees, `kornia.feature.laf_from_center_scale_ori`), responses (B, N) and descriptors (B, N, D).

    lafs, responses, descs = localfeat.kornia.to_kornia(features)          # B = 1
    patches = kornia.feature.extract_patches_from_pyramid(image, lafs, 32)
    features = localfeat.kornia.from_kornia(lafs, responses, descs, image_size=(W, H))

Conventions: centres are the same pixel coordinates (pixel-centre origin) in both. A LAF's scale
(`kornia.feature.get_laf_scale`, sqrt|det A|) is `scale_factor` times our `scales` (a patch diameter):
0.5 by default, the patch radius, as kornia-moons converts OpenCV ORB keypoints; kornia-moons uses 6.0 for
SIFT's measurement region. The LAF angle in degrees is minus our orientation in radians (OpenCV's keypoint
angle), as kornia-moons converts OpenCV keypoints. Missing scales or orientations give kornia's defaults
(scale 1, angle 0), and back.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .types import ContractError, Features, normalize_rows_if_needed

DEFAULT_SCALE_FACTOR = 0.5


def to_kornia(features: Union[Features, Sequence[Features]], scale_factor: float = DEFAULT_SCALE_FACTOR,
              device: Optional[Union[str, torch.device]] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lafs (B, N, 2, 3), responses (B, N), descriptors (B, N, D)) float32 of one `Features` (B = 1) or of a
    sequence of them with the same N (kornia batches are rectangular)."""
    batch = [features] if isinstance(features, Features) else list(features)
    if not batch:
        raise ValueError("to_kornia: no features given")
    counts = {len(f) for f in batch}
    if len(counts) != 1:
        raise ValueError(f"to_kornia: a kornia batch needs the same number of keypoints in every image, got "
                         f"{sorted(counts)}; convert the images one at a time")
    lafs, responses, descriptors = [], [], []
    for f in batch:
        n = len(f)
        radius = (np.ones(n, np.float64) if f.scales is None
                  else f.scales.astype(np.float64) * scale_factor)
        angle = np.zeros(n) if f.orientations is None else -f.orientations.astype(np.float64)  # radians
        cos, sin = np.cos(angle) * radius, np.sin(angle) * radius
        laf = np.empty((n, 2, 3), np.float64)
        laf[:, 0, 0], laf[:, 0, 1], laf[:, 1, 0], laf[:, 1, 1] = cos, sin, -sin, cos
        laf[:, :, 2] = f.keypoints
        lafs.append(laf)
        responses.append(f.scores)
        descriptors.append(f.descriptors.astype(np.float32))
    return (torch.from_numpy(np.stack(lafs)).float().to(device), torch.from_numpy(np.stack(responses)).to(device),
            torch.from_numpy(np.stack(descriptors)).to(device))


def from_kornia(lafs: torch.Tensor, responses: Optional[torch.Tensor], descriptors: torch.Tensor,
                image_size: Union[tuple, Sequence[tuple]], scale_factor: float = DEFAULT_SCALE_FACTOR
                ) -> Union[Features, list[Features]]:
    """`Features` of kornia tensors: lafs (B, N, 2, 3), responses (B, N) or (B, N, 1) (None: ones),
    descriptors (B, N, D); image_size (W, H), or one per image. B = 1 gives a `Features`, else a list.
    Scales are sqrt|det A| / scale_factor and orientations -atan2(A01, A00) in [0, 2 pi) (radians); a LAF that is not a
    rotation times a scale (affine shape) keeps only that scale and angle. Descriptors are L2-normalised."""
    lafs = torch.as_tensor(lafs).detach().cpu().double()
    if lafs.ndim != 4 or lafs.shape[2:] != (2, 3):
        raise ContractError(f"lafs has shape {tuple(lafs.shape)}, expected (B, N, 2, 3)")
    b, n = lafs.shape[:2]
    descriptors = torch.as_tensor(descriptors).detach().cpu().float()
    if descriptors.ndim != 3 or descriptors.shape[:2] != (b, n):
        raise ContractError(f"descriptors has shape {tuple(descriptors.shape)}, expected (B, N, D) with "
                            f"B={b}, N={n}")
    if responses is None:
        responses = torch.ones(b, n)
    responses = torch.as_tensor(responses).detach().cpu().float().reshape(b, -1)
    if responses.shape[1] != n:
        raise ContractError(f"responses has {responses.shape[1]} values per image, expected N={n}")
    sizes = [image_size] * b if len(image_size) == 2 and np.isscalar(image_size[0]) else list(image_size)
    if len(sizes) != b:
        raise ValueError(f"from_kornia: {len(sizes)} image sizes for a batch of {b}")
    out = []
    for k in range(b):
        a = lafs[k, :, :, :2].numpy()
        det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
        out.append(Features(
            keypoints=lafs[k, :, :, 2].numpy(), scores=responses[k].numpy(),
            descriptors=normalize_rows_if_needed(descriptors[k].numpy()), image_size=tuple(sizes[k]),
            scales=np.sqrt(np.abs(det)) / scale_factor,
            orientations=np.remainder(-np.arctan2(a[:, 0, 1], a[:, 0, 0]), 2 * math.pi)))
    return out[0] if b == 1 else out
