"""Training pairs with exact dense correspondence.

Two sources, both deterministic given a seed (sample k of epoch e is a pure function of (seed, e, k),
so it does not matter which loader worker builds it, and a resumed run sees the same samples):

- `HomographyPairs`: any folder of images (default: the photos bundled with scikit-image). Image 0
  is a random crop of a randomly rescaled photo; image 1 is the photo seen through a random
  homography (rotation, scale, shear, perspective about the crop centre), plus photometric changes
  (gamma, contrast, colour, blur, noise, JPEG: `localfeat.datasets.synth.photometric`), as R2D2's
  web-image pairs.
- `PosedPairs`: posed scenes with depth (images, intrinsics K, world-to-camera poses, depth maps),
  correspondence by depth reprojection with an occlusion check.

A sample is a dict of tensors:
  image0, image1: float32 (3, S, S) RGB in [0, 1] (S = crop size);
  flow:  float32 (S, S, 2), for each pixel (x, y) of image 0 the (x, y) of the same point in image 1,
         in pixels, pixel-centre origin (NaN where undefined);
  valid: bool (S, S), True where `flow` is defined and lands inside image 1 (and, for posed pairs,
         passes the occlusion check).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch

from ..geometry import homography_about_centre, project, relative_pose, unproject

logger = logging.getLogger(__name__)


class PairsError(ValueError):
    """A training-pair source that cannot be built (no images, bad sizes, bad scene data)."""


@dataclass(frozen=True)
class HomographyConf:
    """Amplitudes of the random homographies and photometric changes.

    crop_size: S, side of the square crops in pixels (R2D2 trains on 192).
    scale_range: the photo is first rescaled by a factor drawn log-uniformly in this range, relative
                 to a rescale that makes its shorter side `base_size` pixels.
    rotation_deg: max |rotation|; zoom: max |log zoom| of image 1 relative to image 0;
    perspective: max |h31|, |h32| times S; shear: max |shear|;
    photometric: max strength s in [0, 1] of `synth.photometric` applied to image 1 (0 = none).
    """

    crop_size: int = 192
    base_size: int = 384
    scale_range: tuple = (0.6, 1.2)
    rotation_deg: float = 30.0
    zoom: float = 0.4
    perspective: float = 0.3
    shear: float = 0.1
    photometric: float = 0.7


def _on_one_opencv_thread(sample):
    """Run `sample` with OpenCV on one thread. With several threads OpenCV cuts an image into stripes,
    whose edges some kernels may round differently (Intel IPP's are used on x86); on one thread a sample
    is the same bits in a loader worker (which has one thread) and in the main process."""
    @functools.wraps(sample)
    def wrapper(*args, **kwargs):
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            return sample(*args, **kwargs)
        finally:
            cv2.setNumThreads(threads)
    return wrapper


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def warp_flow(T: np.ndarray, size: int, out_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Map every pixel centre (x, y) of an S x S image through the homography T (3, 3).

    Returns flow float32 (S, S, 2) and valid bool (S, S): inside [0, out_size - 1]^2 (out_size
    defaults to S) with a positive homogeneous coordinate.
    """
    out_size = size if out_size is None else out_size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    p = np.stack([xs, ys, np.ones_like(xs)], -1) @ T.T
    z = p[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = p[..., :2] / z[..., None]
    valid = (z > 0) & np.all(np.isfinite(q), -1) & np.all((q >= 0) & (q <= out_size - 1), -1)
    q[~valid] = np.nan
    return q.astype(np.float32), valid


class HomographyPairs(torch.utils.data.Dataset):
    """Pairs from a folder of photos through random homographies (see module docstring).

    photos: folder of images (recursive) or None for scikit-image's bundled photos.
    photos: a folder of images (recursive), a glob, a list file, or a list of those; None for
            scikit-image's bundled photos.
    length: samples per epoch (index k of a DataLoader; epoch e = k // length).
    seed:   everything random derives from (seed, epoch, index).
    repeat: every epoch repeats epoch 0's samples (a fixed pool of `length` pairs, e.g. so that a
            distillation teacher's cached targets are reused); default False: new samples each epoch.
    """

    def __init__(self, photos=None, conf: HomographyConf = HomographyConf(),
                 seed: int = 0, length: int = 10000, repeat: bool = False):
        from ..datasets.synth import list_photos

        try:
            self.paths = list_photos(photos)
        except FileNotFoundError as exc:
            raise PairsError(f"data.images: {exc}; gather licence-clean real photos with `python -m "
                             "localfeat.datasets.training_photos -o DIR` and pass DIR (relative paths are "
                             "read from the working directory), or data.images=null for the scikit-image "
                             "photos") from exc
        if not self.paths:
            raise PairsError(f"no images found in {photos or 'the scikit-image photos'}: give a folder of images")
        self.conf, self.seed, self.length, self.repeat = conf, int(seed), int(length), bool(repeat)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _photo(self, i: int) -> np.ndarray:
        from ..io.images import read_image

        if i not in self._cache:
            img = read_image(self.paths[i], "rgb")
            f = self.conf.base_size / min(img.shape[:2])
            if f < 1:
                img = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)),
                                 interpolation=cv2.INTER_AREA)
            self._cache[i] = img
        return self._cache[i]

    @_on_one_opencv_thread
    def sample(self, index: int, epoch: int = 0) -> dict:
        """Sample `index` of `epoch` (a pure function of seed, epoch, index)."""
        c = self.conf
        rng = np.random.default_rng([self.seed, epoch, index])
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.paths))
        photo = self._photo(int(order[index % len(self.paths)]))
        ph, pw = photo.shape[:2]
        s = c.crop_size
        # Source -> image 0: rescale, then a random crop (the crop must fit in the rescaled photo).
        lo, hi = np.log(c.scale_range[0]), np.log(c.scale_range[1])
        base = c.base_size / min(ph, pw)
        scale = max(base * float(np.exp(rng.uniform(lo, hi))), (s + 2) / min(ph, pw))
        ox = rng.uniform(0, pw * scale - s)
        oy = rng.uniform(0, ph * scale - s)
        # Pixel centres: source u -> scale * (u + 0.5) - 0.5 - offset.
        T0 = np.array([[scale, 0, 0.5 * scale - 0.5 - ox], [0, scale, 0.5 * scale - 0.5 - oy], [0, 0, 1]])
        # Image 0 -> image 1: a homography about the crop centre.
        H = homography_about_centre(
            (s, s), angle_deg=rng.uniform(-1, 1) * c.rotation_deg,
            scale=float(np.exp(rng.uniform(-1, 1) * c.zoom)),
            perspective=tuple(rng.uniform(-1, 1, 2) * c.perspective / s), shear=rng.uniform(-1, 1) * c.shear)
        T1 = H @ T0
        img0 = cv2.warpPerspective(photo, T0, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        img1 = cv2.warpPerspective(photo, T1, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        if c.photometric > 0:
            from ..datasets.synth import SynthConfig, photometric

            img1 = photometric(img1, rng, float(rng.uniform(0, c.photometric)), SynthConfig())
        flow, valid = warp_flow(H, s)
        # Image-0 pixels that come from outside the photo have no content: not valid.
        src = warp_flow(np.linalg.inv(T0), s, out_size=10 ** 9)[0]
        inside = np.all(np.isfinite(src), -1) & (src[..., 0] <= pw - 1) & (src[..., 1] <= ph - 1)
        valid &= inside
        flow[~valid] = np.nan
        return {"image0": _to_tensor(img0), "image1": _to_tensor(img1), "flow": torch.from_numpy(flow),
                "valid": torch.from_numpy(valid), "index": torch.tensor(index)}

    def __getitem__(self, k: int) -> dict:
        return self.sample(k % self.length, epoch=0 if self.repeat else k // self.length)


# ---------------------------------------------------------------------------------------------
# Posed scenes with depth
# ---------------------------------------------------------------------------------------------
@dataclass
class PosedView:
    """One posed image: `image` uint8 (H, W, 3) RGB, `K` (3, 3) intrinsics (pixel-centre origin),
    `T_cw` (4, 4) world-to-camera pose, `depth` float (H, W) z-depth in the pose's units (0/NaN = unknown)."""

    image: np.ndarray
    K: np.ndarray
    T_cw: np.ndarray
    depth: np.ndarray


def reproject(depth0: np.ndarray, K0: np.ndarray, T0: np.ndarray, K1: np.ndarray, T1: np.ndarray,
              depth1: Optional[np.ndarray] = None, size1: Optional[tuple] = None,
              occlusion_tolerance: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Correspondence of every pixel of view 0 in view 1 by depth reprojection.

    depth0 (H0, W0) z-depth of view 0; K0, K1 (3, 3) intrinsics (pixel-centre origin); T0, T1 (4, 4)
    world-to-camera poses; depth1 (H1, W1) optional, for the occlusion check: a point is kept when its
    depth in view 1 is within `occlusion_tolerance` (relative) of depth1 sampled (bilinearly, nearest
    where depth1 is unknown around it) at the projection. size1 (W1, H1) when depth1 is None.

    Returns flow float32 (H0, W0, 2) (NaN where invalid) and valid bool (H0, W0).
    """
    h0, w0 = depth0.shape
    ys, xs = np.mgrid[0:h0, 0:w0].astype(np.float64)
    z = np.asarray(depth0, np.float64)
    known = np.isfinite(z) & (z > 0)
    # Through view 0's camera frame: the pose of view 1 relative to view 0 (world = camera 0).
    X0 = unproject(np.stack([xs, ys], -1), np.where(known, z, 0), K0, np.eye(4))
    p1, z1 = project(X0, K1, relative_pose(T0, T1))
    if depth1 is not None:
        h1, w1 = depth1.shape
    elif size1 is not None:
        w1, h1 = size1
    else:
        raise PairsError("reproject: give depth1 (occlusion check) or size1")
    valid = known & (z1 > 0) & np.all(np.isfinite(p1), -1)
    valid &= (p1[..., 0] >= 0) & (p1[..., 0] <= w1 - 1) & (p1[..., 1] >= 0) & (p1[..., 1] <= h1 - 1)
    if depth1 is not None:
        d1 = np.where(np.isfinite(depth1) & (depth1 > 0), depth1, 0).astype(np.float32)
        q = np.where(valid[..., None], p1, 0).astype(np.float32)
        # Nearest depth (bilinear would mix the two sides of a depth edge).
        sampled = cv2.remap(d1, q[..., 0], q[..., 1], interpolation=cv2.INTER_NEAREST)
        ok = (sampled > 0) & (np.abs(z1 - sampled) <= occlusion_tolerance * sampled)
        valid &= ok
    flow = np.where(valid[..., None], p1, np.nan).astype(np.float32)
    return flow, valid


class PosedPairs(torch.utils.data.Dataset):
    """Pairs of posed views with depth: `views` is a sequence of `PosedView` (or a callable i -> view),
    `pairs` a list of (i, j). Each sample is a random S x S crop of view i (kept where its centre has
    depth) and the crop of view j centred on the projection of that centre; flow and valid as in the
    module docstring (occlusion-checked).
    """

    def __init__(self, views: Sequence[PosedView] | Callable[[int], PosedView], pairs: Sequence[tuple[int, int]],
                 crop_size: int = 192, seed: int = 0, occlusion_tolerance: float = 0.05, length: Optional[int] = None):
        if not pairs:
            raise PairsError("PosedPairs: the list of pairs is empty")
        self.get_view = views if callable(views) else (lambda i: views[i])
        self.pairs = list(pairs)
        self.crop_size, self.seed, self.tol = int(crop_size), int(seed), float(occlusion_tolerance)
        self.length = int(length) if length else len(self.pairs)

    def __len__(self) -> int:
        return self.length

    @_on_one_opencv_thread
    def sample(self, index: int, epoch: int = 0) -> dict:
        rng = np.random.default_rng([self.seed, epoch, index])
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        i, j = self.pairs[int(order[index % len(self.pairs)])]
        v0, v1 = self.get_view(i), self.get_view(j)
        s = self.crop_size
        for v, name in ((v0, i), (v1, j)):
            if min(v.image.shape[:2]) < s:
                raise PairsError(f"view {name} is {v.image.shape[1]}x{v.image.shape[0]}, smaller than crop_size {s}")
        flow, valid = reproject(v0.depth, v0.K, v0.T_cw, v1.K, v1.T_cw, depth1=v1.depth, occlusion_tolerance=self.tol)
        h0, w0 = valid.shape
        h1, w1 = v1.image.shape[:2]
        # Crop of view 0 around a random valid pixel (any pixel when none is valid).
        ys, xs = np.nonzero(valid[s // 2:h0 - s // 2, s // 2:w0 - s // 2])
        if len(ys):
            k = int(rng.integers(len(ys)))
            cy, cx = ys[k] + s // 2, xs[k] + s // 2
        else:
            cy, cx = int(rng.integers(s // 2, h0 - s // 2 + 1)), int(rng.integers(s // 2, w0 - s // 2 + 1))
        y0, x0 = min(max(cy - s // 2, 0), h0 - s), min(max(cx - s // 2, 0), w0 - s)
        f = flow[y0:y0 + s, x0:x0 + s].copy()
        m = valid[y0:y0 + s, x0:x0 + s].copy()
        centre = flow[cy, cx] if valid[cy, cx] else np.array([w1 / 2, h1 / 2])
        y1 = int(min(max(round(centre[1]) - s // 2, 0), h1 - s))
        x1 = int(min(max(round(centre[0]) - s // 2, 0), w1 - s))
        f -= np.array([x1, y1], np.float32)
        m &= np.all((f >= 0) & (f <= s - 1), -1)
        f[~m] = np.nan
        img0 = v0.image[y0:y0 + s, x0:x0 + s]
        img1 = v1.image[y1:y1 + s, x1:x1 + s]
        return {"image0": _to_tensor(img0), "image1": _to_tensor(img1), "flow": torch.from_numpy(f),
                "valid": torch.from_numpy(m), "index": torch.tensor(index)}

    def __getitem__(self, k: int) -> dict:
        return self.sample(k % self.length, epoch=k // self.length)


class IndexRange(torch.utils.data.Sampler):
    """Sample indices start, start + 1, ..., stop - 1: the loader position of a resumable run."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = int(start), int(stop)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class StepShard(torch.utils.data.Sampler):
    """The sample indices of one rank for steps start_step .. total_steps - 1: at step s, samples
    s * B + rank * B / W ... s * B + (rank + 1) * B / W - 1 (B = global batch size, W = world size);
    with W = 1 the same indices as `IndexRange(start_step * B, total_steps * B)`."""

    def __init__(self, start_step: int, total_steps: int, batch_size: int, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise PairsError(f"batch_size {batch_size} is not a multiple of the {world_size} processes")
        self.start, self.stop, self.batch, self.rank = int(start_step), int(total_steps), int(batch_size), int(rank)
        self.local = self.batch // int(world_size)

    def __iter__(self):
        for step in range(self.start, self.stop):
            first = step * self.batch + self.rank * self.local
            yield from range(first, first + self.local)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.local


def make_loader(dataset, batch_size: int, start_step: int, total_steps: int, num_workers: int = 2,
                rank: int = 0, world_size: int = 1):
    """A DataLoader yielding the batches of steps start_step .. total_steps - 1 (batch b holds samples
    b * batch_size .. (b + 1) * batch_size - 1 of the infinite deterministic stream). With world_size W > 1
    it yields this rank's shard of each batch (`StepShard`), batch_size / W samples."""
    sampler = StepShard(start_step, total_steps, batch_size, rank, world_size)
    batch_size = batch_size // world_size
    if num_workers:
        import pickle

        try:  # spawned workers receive the dataset pickled
            pickle.dumps(dataset)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            logger.warning("the dataset cannot be sent to loader workers (%s): loading in the main process", exc)
            num_workers = 0
    # An own generator: creating the loader's iterator draws worker seeds from it, never from the
    # global torch generator, whose state belongs to the checkpointed training run.
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                       persistent_workers=False, drop_last=True,
                                       generator=torch.Generator().manual_seed(start_step),
                                       # spawn: forked workers can hang in OpenCV/OpenMP after the parent used them
                                       multiprocessing_context="spawn" if num_workers else None,
                                       worker_init_fn=_worker_init if num_workers else None)


def _worker_init(_worker_id: int) -> None:
    # Each worker does OpenCV work on one thread: the two loader workers use the two cores.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
