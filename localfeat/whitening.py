"""PCA whitening of descriptors: fit on a sample, save, load, apply (DeLF's 1024 -> 40-D step; any descriptor).

    w = PCAWhitening.fit(descriptors, dim=40)      # descriptors (N, D) float
    w.save("pca.npz"); w = PCAWhitening.load("pca.npz")
    out = w.apply(descriptors)                     # (N, dim), L2-normalised rows (normalize=True)

With mean m (D,), the principal axes P (dim, D) (rows: unit eigenvectors of the covariance, by decreasing
variance; sign fixed so that the largest-magnitude entry of each row is positive) and the variances v (dim,)
(covariance eigenvalues, unbiased: / (N - 1)), `apply` computes
    y = (x - m) @ P.T / sqrt(v + eps)        (whiten=True; without whitening: y = (x - m) @ P.T)
then L2-normalises y when `normalize`. On the fitting data with eps = 0, cov(y) = identity.
DeLF's own PCA files (mean, projection matrix, variances as separate arrays) load with `from_arrays`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io.atomic import atomic_path

FORMAT = "localfeat-pca-whitening-1"


@dataclass
class PCAWhitening:
    """mean (D,), components (dim, D), variances (dim,), float64; eps added to the variances in `apply`."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    eps: float = 0.0

    def __post_init__(self):
        self.mean = np.asarray(self.mean, np.float64).reshape(-1)
        self.components = np.asarray(self.components, np.float64)
        self.variances = np.asarray(self.variances, np.float64).reshape(-1)
        d = self.mean.size
        if self.components.ndim != 2 or self.components.shape[1] != d:
            raise ValueError(f"components has shape {self.components.shape}, expected (dim, {d})")
        if self.variances.size != self.components.shape[0]:
            raise ValueError(f"variances has {self.variances.size} values, expected {self.components.shape[0]}")

    @property
    def input_dim(self) -> int:
        return self.mean.size

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    @classmethod
    def fit(cls, descriptors: np.ndarray, dim: int | None = None, eps: float = 0.0) -> "PCAWhitening":
        """Fit on descriptors (N, D) (N >= 2); dim None = D. Raises ValueError naming the shapes when
        dim > min(N - 1, D) (the extra axes would have zero variance: whitening them divides by zero)."""
        x = np.asarray(descriptors, np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"PCA fit needs descriptors of shape (N, D) with N >= 2, got {x.shape}")
        n, d = x.shape
        dim = d if dim is None else int(dim)
        rank = min(n - 1, d)
        if not 1 <= dim <= rank:
            raise ValueError(f"PCA output dim {dim} must be in 1..{rank} for {n} descriptors of dimension {d} "
                             f"(fit on more descriptors or lower the dimension)")
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        comps = vt[:dim]
        flip = np.sign(comps[np.arange(dim), np.abs(comps).argmax(1)])
        comps = comps * flip[:, None]
        variances = s[:dim] ** 2 / (n - 1)
        if variances[-1] <= 1e-12 * max(variances[0], 1e-300) and eps == 0:
            raise ValueError(f"PCA: the data has (almost) no variance along axis {dim}; lower the dimension "
                             f"or pass eps > 0")
        return cls(mean, comps, variances, eps)

    @classmethod
    def from_arrays(cls, mean, projection, variances, eps: float = 0.0) -> "PCAWhitening":
        """From DeLF-style arrays: mean (D,), projection (>= dim, D), variances (>= dim,)."""
        return cls(mean, projection, np.asarray(variances).reshape(-1)[: np.asarray(projection).shape[0]], eps)

    def apply(self, descriptors: np.ndarray, whiten: bool = True, normalize: bool = True) -> np.ndarray:
        """descriptors (N, D) -> float32 (N, dim)."""
        x = np.asarray(descriptors, np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"descriptors have shape {x.shape}, the PCA was fit on dimension {self.input_dim}")
        y = (x - self.mean) @ self.components.T
        if whiten:
            y = y / np.sqrt(self.variances + self.eps)
        if normalize:
            y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return y.astype(np.float32)

    def save(self, path: str | os.PathLike) -> Path:
        """Write an .npz (atomically); returns the path."""
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy appends no '.npz'
            np.savez(f, format=np.array(FORMAT), mean=self.mean, components=self.components,
                     variances=self.variances, eps=np.array(self.eps))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PCAWhitening":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"PCA whitening file {path} does not exist (fit one with PCAWhitening.fit "
                                    f"or `localfeat.extractors.delf.fit_pca`)")
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z or str(z["format"]) != FORMAT:
                raise ValueError(f"{path} is not a localfeat PCA whitening file (expected format {FORMAT})")
            return cls(z["mean"], z["components"], z["variances"], float(z["eps"]))
