"""`compose`: a detector + a patch descriptor, with optional orientation and affine-shape estimation.

    load_extractor('compose', detector='keynet', descriptor='tfeat')
    load_extractor('compose', detector='sift', descriptor='hardnet', affine='affnet', orientation='orinet')

Detectors: 'keynet' (its multi-scale detection), 'sift' / 'dog' (OpenCV's DoG keypoints with their
sizes and orientations), or any registered extractor (its keypoints and, when it has them, scales and
orientations; its descriptors are discarded). Descriptors (`_patch_nets`): 'tfeat', 'hardnet',
'sosnet' (32 x 32 patches from `localfeat.patches`), 'sift' (OpenCV's SIFT descriptor at the keypoints).

Support region: a patch covers `magnification * scales` pixels (diameter) around each keypoint;
magnification None = 1 for keynet (its `scales` already are the descriptor support, 2 * s_mult) and
6 for every other detector (OpenCV keypoint sizes; descriptor 'sift' is then computed by OpenCV at
size = support / 6, i.e. the detector's own size; it differs from SIFT's own descriptors only because
OpenCV's detector also passes the octave/layer, which a bare keypoint does not carry). Detectors without scales use `support` pixels.
Orientation: 'none' (upright), 'detector' (the detector's orientations, 0 where it has none),
'orinet' (OriNet on the upright patch). Affine shape: 'none' or 'affnet' (AffNet on the patch,
det-1 shape applied under the orientation: patch = R(angle) @ A).
"""
from __future__ import annotations

import logging

import numpy as np

from ..registry import ConfigError, load_extractor, parse_model_spec
from ..types import Features
from ._patch_nets import WEIGHTS as PATCH_WEIGHTS
from ._patch_nets import DESCRIPTORS, PatchDescriptor, ShapeEstimator, descriptor_weight_specs
from .base import Extractor
from .keynet import WEIGHTS as KEYNET_WEIGHTS

logger = logging.getLogger(__name__)


class Compose(Extractor):
    """Detector + patch descriptor.

    Config:
      detector:        'keynet', 'sift' ('dog'), or any registered extractor as NAME or NAME:key=value.
      detector_conf:   dict of config for the detector (merged after the spec's own items).
      descriptor:      'tfeat' (default), 'hardnet', 'sosnet' or 'sift'.
      orientation:     'detector' (default), 'none' (or None) or 'orinet'.
      affine:          'none' (default, or None) or 'affnet'.
      magnification:   None (auto, see module docstring) or support diameter / detector scale.
      support:         support diameter (pixels) for detectors without scales (default 32).
      max_keypoints:   None or keep the best-scoring K keypoints (before description).
      descriptor_weights, orientation_weights, affine_weights: None or paths.
    """

    name = "compose"
    input_mode = "gray"
    default_conf = {
        "detector": "sift", "detector_conf": {}, "descriptor": "tfeat", "orientation": "detector",
        "affine": "none", "magnification": None, "support": 32.0, "max_keypoints": None,
        "descriptor_weights": None, "orientation_weights": None, "affine_weights": None,
    }

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        c = dict(cls.all_defaults(), **conf)
        specs = descriptor_weight_specs(c["descriptor"])
        det_name, _ = parse_model_spec(str(c["detector"]))
        if det_name == "keynet":
            specs.insert(0, KEYNET_WEIGHTS["keynet"])
        if c["orientation"] == "orinet":
            specs.append(PATCH_WEIGHTS["orinet"])
        if c["affine"] == "affnet":
            specs.append(PATCH_WEIGHTS["affnet"])
        return specs

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        # 'none' given on the command line is parsed as None: both mean "not used".
        c["orientation"] = "none" if c["orientation"] is None else c["orientation"]
        c["affine"] = "none" if c["affine"] is None else c["affine"]
        self.check_choice("descriptor", DESCRIPTORS)
        if c["orientation"] not in ("none", "detector", "orinet"):
            raise ConfigError(f"compose: orientation={c['orientation']!r}; use 'none', 'detector' or 'orinet'")
        if c["affine"] not in ("none", "affnet"):
            raise ConfigError(f"compose: affine={c['affine']!r}; use 'none' or 'affnet'")
        det_name, det_conf = parse_model_spec(str(c["detector"]))
        det_conf.update(c["detector_conf"] or {})
        if det_name == "dog":
            det_name = "sift"
        self.detector_name = det_name
        if det_name == "keynet":
            det_conf.setdefault("descriptor", None)
        det_conf.setdefault("device", c["device"])
        self.detector = load_extractor(det_name, **det_conf)
        mag = c["magnification"]
        self.magnification = float(mag) if mag is not None else (1.0 if det_name == "keynet" else 6.0)
        self.descriptor = PatchDescriptor(c["descriptor"], weights=c["descriptor_weights"], device=self.device)
        self.orinet = (ShapeEstimator("orinet", c["orientation_weights"], self.device)
                       if c["orientation"] == "orinet" else None)
        self.affnet = ShapeEstimator("affnet", c["affine_weights"], self.device) if c["affine"] == "affnet" else None

    def detect(self, image: np.ndarray) -> dict:
        """Keypoints (N, 2), scores (N,), scales (N,) or None, orientations (N,) or None of a grey uint8 image."""
        if self.detector_name == "keynet":
            det = self.detector.detect(image)
            return {"keypoints": det["keypoints"], "scores": det["scores"], "scales": det["scales"],
                    "orientations": None}
        feats = self.detector.extract(image)
        return {"keypoints": feats.keypoints, "scores": feats.scores, "scales": feats.scales,
                "orientations": feats.orientations}

    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        det = self.detect(image)
        kpts, scores = det["keypoints"], det["scores"]
        order = np.argsort(-scores, kind="stable")
        if self.conf["max_keypoints"] is not None:
            order = order[: int(self.conf["max_keypoints"])]
        kpts, scores = kpts[order], scores[order]
        n = len(kpts)
        scales = (det["scales"][order] * self.magnification if det["scales"] is not None
                  else np.full(n, float(self.conf["support"])))
        ori = np.zeros(n)
        if self.conf["orientation"] == "detector" and det["orientations"] is not None:
            ori = det["orientations"][order].astype(np.float64)
        affine = None
        if self.affnet is not None:
            affine = self.affnet(image, kpts, scales, ori).astype(np.float64)
        if self.orinet is not None:
            ori = ori + self.orinet(image, kpts, scales, ori, affine).astype(np.float64)
        desc = self.descriptor.describe(image, kpts, scales, ori, affine)
        ori = np.mod(ori, 2 * np.pi)
        return Features(kpts, scores, desc, (w, h), scales=scales.astype(np.float32),
                        orientations=ori.astype(np.float32))
