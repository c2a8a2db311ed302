"""SIFT (OpenCV), with the RootSIFT option."""
from __future__ import annotations

import cv2
import numpy as np

from ..types import Features
from .base import Extractor


class SIFT(Extractor):
    """OpenCV SIFT: DoG keypoints, 128-D descriptors (L2-normalised, or RootSIFT).

    Config: max_keypoints (None = no limit; keeps the strongest DoG responses), rootsift (bool),
    and OpenCV's n_octave_layers, contrast_threshold, edge_threshold, sigma.
    Output: scales = OpenCV keypoint size (diameter, pixels), orientations in radians.
    """

    name = "sift"
    input_mode = "gray"
    default_conf = {
        "max_keypoints": None,
        "rootsift": False,
        "n_octave_layers": 3,
        "contrast_threshold": 0.04,
        "edge_threshold": 10.0,
        "sigma": 1.6,
    }

    def __init__(self, **conf):
        super().__init__(**conf)
        self.check_count("max_keypoints")
        # OpenCV's own asserts (sigma > 0, layers >= 1) would surface as cv2.error; many layers exhaust memory.
        self.check_range("n_octave_layers", 1, 10, integer=True)
        self.check_range("sigma", 0, 10, low_open=True)
        self.check_range("contrast_threshold", 0)
        self.check_range("edge_threshold", 0, low_open=True)
        self._sift = cv2.SIFT_create(
            nfeatures=0, nOctaveLayers=int(self.conf["n_octave_layers"]),
            contrastThreshold=float(self.conf["contrast_threshold"]),
            edgeThreshold=float(self.conf["edge_threshold"]), sigma=float(self.conf["sigma"]))

    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        cv_kpts, desc = self._sift.detectAndCompute(image, None)
        n = len(cv_kpts)
        if n == 0:
            return Features(np.zeros((0, 2), np.float32), np.zeros(0, np.float32),
                            np.zeros((0, 128), np.float32), (w, h),
                            scales=np.zeros(0, np.float32), orientations=np.zeros(0, np.float32))
        kpts = np.array([k.pt for k in cv_kpts], np.float32)
        scores = np.array([k.response for k in cv_kpts], np.float32)
        scales = np.array([k.size for k in cv_kpts], np.float32)
        orientations = np.deg2rad(np.array([k.angle for k in cv_kpts], np.float32))
        order = np.argsort(-scores, kind="stable")
        if self.conf["max_keypoints"] is not None:
            order = order[: self.conf["max_keypoints"]]
        desc = desc[order].astype(np.float32)
        if self.conf["rootsift"]:
            desc /= np.maximum(np.abs(desc).sum(axis=1, keepdims=True), 1e-12)
            desc = np.sqrt(desc)
        desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return Features(kpts[order], scores[order], desc, (w, h), scales=scales[order],
                        orientations=orientations[order].astype(np.float32))
