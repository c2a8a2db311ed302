"""The data contract: `Features` of one image, `Matches` of one pair, `PairMatches` of a detector-free matcher.

Coordinates are x to the right, y down, in pixels of the ORIGINAL image, the
centre of the top-left pixel being (0, 0). Validation happens on construction so
that a wrong shape or dtype is caught where it is made, not three steps later.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

import numpy as np


class ContractError(ValueError):
    """A `Features` or `Matches` field breaks the data contract."""


def _tensor_to_numpy(tensor) -> np.ndarray:
    """A torch tensor as a numpy array; bfloat16 / float16 (numpy has no bfloat16; e.g. outputs of a model run
    with precision='bf16') become float32."""
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.element_size() < 4:
        tensor = tensor.float()
    return tensor.numpy()


def _as_array(name: str, value, dtype, shape: tuple, shape_text: str, finite: bool = True) -> np.ndarray:
    """Convert `value` to a numpy array of `dtype` and check it against `shape` (None = any size)."""
    if value is None:
        raise ContractError(f"{name} is required, expected an array of shape {shape_text}")
    if hasattr(value, "detach"):  # torch tensor
        value = _tensor_to_numpy(value)
    arr = np.asarray(value)
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        raise ContractError(f"{name} has shape {tuple(arr.shape)}, expected {shape_text}")
    if dtype is not None:
        if arr.dtype.kind not in "fiub":
            raise ContractError(f"{name} has dtype {arr.dtype}, expected a numeric array ({np.dtype(dtype)})")
        arr = np.ascontiguousarray(arr, dtype=dtype)
    if finite and arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ContractError(f"{name} holds {bad} non-finite value(s) (NaN or inf)")
    return arr


def normalize_rows_if_needed(desc: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """float32 descriptors (N, D) with unit rows, for descriptors read from other tools' files:
    unchanged (bit for bit) when every row norm is already within `tol` of 1."""
    desc = np.asarray(desc, np.float32)
    norms = np.linalg.norm(desc.astype(np.float64), axis=1, keepdims=True)
    if desc.size == 0 or np.all(np.abs(norms - 1) <= tol):
        return desc
    return (desc / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class Features:
    """Keypoints and descriptors of one image.

    keypoints:    float32 (N, 2), (x, y) in original-image pixels, pixel-centre origin.
    scores:       float32 (N,), higher is better.
    descriptors:  (N, D), float32 L2-normalised rows, or uint8 for binary descriptors.
    image_size:   (W, H) of the original image, in pixels.
    scales:       optional float32 (N,), patch diameter in pixels.
    orientations: optional float32 (N,), radians.
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    image_size: tuple
    scales: Optional[np.ndarray] = None
    orientations: Optional[np.ndarray] = None

    def __post_init__(self):
        self.keypoints = _as_array("keypoints", self.keypoints, np.float32, (None, 2), "(N, 2)")
        n = len(self.keypoints)
        self.scores = _as_array("scores", self.scores, np.float32, (n,), f"(N,) with N={n}")
        desc = self.descriptors
        if hasattr(desc, "detach"):
            desc = _tensor_to_numpy(desc)
        desc = np.asarray(desc)
        if desc.ndim != 2 or desc.shape[0] != n:
            raise ContractError(f"descriptors has shape {tuple(desc.shape)}, expected (N, D) with N={n}")
        if desc.dtype == np.uint8:
            self.descriptors = np.ascontiguousarray(desc)
        else:
            self.descriptors = _as_array("descriptors", desc, np.float32, (n, None), f"(N, D) with N={n}")
        if self.image_size is None or len(self.image_size) != 2:
            raise ContractError(f"image_size is {self.image_size!r}, expected (W, H)")
        w, h = (int(v) for v in self.image_size)
        if w <= 0 or h <= 0:
            raise ContractError(f"image_size is {(w, h)}, expected positive (W, H)")
        self.image_size = (w, h)
        for name in ("scales", "orientations"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _as_array(name, value, np.float32, (n,), f"(N,) with N={n}"))

    def __len__(self) -> int:
        return len(self.keypoints)

    def __repr__(self) -> str:
        optional = "".join(f", {name}" for name in ("scales", "orientations") if getattr(self, name) is not None)
        return (f"Features({len(self)} keypoints, descriptors {self.descriptors.shape[1]}-D "
                f"{self.descriptors.dtype}, image_size={self.image_size}{optional})")

    @property
    def dim(self) -> int:
        """Descriptor dimension D."""
        return self.descriptors.shape[1]

    def select(self, index) -> "Features":
        """A new `Features` holding the rows `index` (boolean mask or integer indices)."""
        return Features(
            keypoints=self.keypoints[index], scores=self.scores[index],
            descriptors=self.descriptors[index], image_size=self.image_size,
            scales=None if self.scales is None else self.scales[index],
            orientations=None if self.orientations is None else self.orientations[index],
        )

    def to_dict(self) -> dict:
        """Arrays by name; optional fields only when present. `image_size` as int array (W, H)."""
        out = {"keypoints": self.keypoints, "scores": self.scores, "descriptors": self.descriptors,
               "image_size": np.asarray(self.image_size, dtype=np.int64)}
        for name in ("scales", "orientations"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Features":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(np.asarray(v).tolist()) if k == "image_size" else v)
                      for k, v in data.items() if k in known})

    def equals(self, other: "Features") -> bool:
        """Exact equality of every field (used by resume and round-trip checks)."""
        a, b = self.to_dict(), other.to_dict()
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@dataclass
class Matches:
    """Correspondences between two `Features`.

    indices: int64 (M, 2), column 0 indexes the keypoints of image 0, column 1 those of image 1.
    scores:  float32 (M,), higher is better (for nearest neighbours: descriptor similarity).
    """

    indices: np.ndarray
    scores: np.ndarray = field(default=None)

    def __post_init__(self):
        idx = self.indices
        if hasattr(idx, "detach"):
            idx = idx.detach().cpu().numpy()
        idx = np.asarray(idx)
        if idx.size == 0:
            idx = idx.reshape(0, 2)
        if idx.ndim != 2 or idx.shape[1] != 2:
            raise ContractError(f"indices has shape {tuple(idx.shape)}, expected (M, 2)")
        if idx.dtype.kind not in "iu":
            raise ContractError(f"indices has dtype {idx.dtype}, expected integers (stored as int64)")
        if idx.size and idx.min() < 0:
            raise ContractError("indices holds negative values; unmatched points are simply absent")
        if idx.size and idx.dtype == np.uint64 and idx.max() > np.iinfo(np.int64).max:  # would wrap to < 0
            raise ContractError(f"indices holds {int(idx.max())}, beyond int64: not a keypoint index")
        self.indices = np.ascontiguousarray(idx, dtype=np.int64)
        m = len(self.indices)
        if self.scores is None:
            self.scores = np.ones(m, np.float32)
        self.scores = _as_array("scores", self.scores, np.float32, (m,), f"(M,) with M={m}")

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        mean = f", mean score {float(self.scores.mean()):.3g}" if len(self) else ""
        return f"Matches({len(self)} matches{mean})"

    def check_against(self, features0: Features | int, features1: Features | int) -> "Matches":
        """Raise when an index is out of range for the keypoints it points into; return self.

        features0, features1: the two images' `Features`, or their keypoint counts N0, N1.
        """
        for col, feats in enumerate((features0, features1)):
            count = int(feats) if isinstance(feats, (int, np.integer)) else len(feats)
            if len(self) and self.indices[:, col].max() >= count:
                raise ContractError(
                    f"indices[:, {col}] reaches {int(self.indices[:, col].max())} but image {col} "
                    f"has only {count} keypoints")
        return self

    def select(self, index) -> "Matches":
        return Matches(self.indices[index], self.scores[index])

    def to_dict(self) -> dict:
        return {"indices": self.indices, "scores": self.scores}


@dataclass
class PairMatches:
    """Correspondences of a detector-free matcher (LoFTR family, XFeat*) between two images.

    keypoints0:  float32 (M, 2), (x, y) in original pixels of image 0, pixel-centre origin.
    keypoints1:  float32 (M, 2), the matching points of image 1, same convention; row m matches row m.
    scores:      float32 (M,), match confidence, higher is better.
    image_size0, image_size1: optional (W, H) of the original images.

    For files and SfM, `localfeat.dense.quantize_pair_matches` turns them into per-image keypoints and
    `Matches` (indices) on a pixel grid, so that tracks form across pairs.
    """

    keypoints0: np.ndarray
    keypoints1: np.ndarray
    scores: np.ndarray = field(default=None)
    image_size0: Optional[tuple] = None
    image_size1: Optional[tuple] = None

    def __post_init__(self):
        self.keypoints0 = _as_array("keypoints0", self.keypoints0, np.float32, (None, 2), "(M, 2)")
        m = len(self.keypoints0)
        self.keypoints1 = _as_array("keypoints1", self.keypoints1, np.float32, (m, 2), f"(M, 2) with M={m}")
        if self.scores is None:
            self.scores = np.ones(m, np.float32)
        self.scores = _as_array("scores", self.scores, np.float32, (m,), f"(M,) with M={m}")
        for name in ("image_size0", "image_size1"):
            size = getattr(self, name)
            if size is None:
                continue
            if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
                raise ContractError(f"{name} is {size!r}, expected positive (W, H)")
            setattr(self, name, (int(size[0]), int(size[1])))

    def __len__(self) -> int:
        return len(self.keypoints0)

    def select(self, index) -> "PairMatches":
        """A new `PairMatches` holding the rows `index` (boolean mask or integer indices)."""
        return PairMatches(self.keypoints0[index], self.keypoints1[index], self.scores[index],
                           self.image_size0, self.image_size1)

    def to_dict(self) -> dict:
        """Arrays by name; image sizes as int64 (W, H) when known."""
        out = {"keypoints0": self.keypoints0, "keypoints1": self.keypoints1, "scores": self.scores}
        for name in ("image_size0", "image_size1"):
            if getattr(self, name) is not None:
                out[name] = np.asarray(getattr(self, name), dtype=np.int64)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PairMatches":
        sizes = {k: tuple(np.asarray(data[k]).tolist()) for k in ("image_size0", "image_size1") if k in data}
        return cls(data["keypoints0"], data["keypoints1"], data.get("scores"), **sizes)
