"""Base class of every extractor: image in (path or array), `Features` out, in original-image pixels."""
from __future__ import annotations

import numpy as np

from ..config import Model
from ..io.images import as_image_array, map_keypoints_to_original, resize_max
from ..ops import resolve_device
from ..types import Features


DEFAULT_RESIZE_MAX = 1600  # pixels, longest side; see Extractor


class Extractor(Model):
    """Subclasses set `name`, `default_conf`, `input_mode` ('rgb' or 'gray') and implement `_extract`.

    Config keys shared by all extractors:
      resize_max: int or None, downscale the image so that max(H, W) <= resize_max before
                  extraction (area interpolation; never upscales); keypoints are mapped back to
                  original-image pixels. Default DEFAULT_RESIZE_MAX = 1600, as hloc's SfM presets:
                  it bounds memory and time on camera photos (ALIKED on 6000 x 4000: 7.4 GB at full
                  size). None = full resolution.
      device:     None (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', ...
    """

    default_conf = {"resize_max": DEFAULT_RESIZE_MAX, "device": None}
    input_mode = "rgb"

    def __init__(self, **conf):
        super().__init__(**conf)
        self.check_count("resize_max")  # 0 or -1 would shrink images to nothing
        self.device = resolve_device(self.conf["device"])

    def extract(self, image) -> Features | list[Features]:
        """Features of `image`: a path; a numpy array (H, W) / (H, W, 3) RGB / (H, W, 4), channels last;
        or a torch tensor (C, H, W) / (1, C, H, W), channels first as in kornia. Float images are read as
        [0, 1] when every value lies in [0, 1], else as [0, 255]; other values are an error (never clipped).
        A tensor batch (B, C, H, W) with B > 1 gives a list of B `Features`, in batch order."""
        if hasattr(image, "detach") and image.ndim == 4 and image.shape[0] != 1:
            return [self.extract(item) for item in image]
        img = as_image_array(image, self.input_mode)
        h, w = img.shape[:2]
        small, factors = resize_max(img, self.conf["resize_max"])
        feats = self._extract(small)
        if factors != (1.0, 1.0):
            feats.keypoints = map_keypoints_to_original(feats.keypoints, factors)
            if feats.scales is not None:
                feats.scales = (feats.scales * np.float32(np.sqrt(factors[0] * factors[1]))).astype(np.float32)
        feats.image_size = (w, h)
        return feats

    def _extract(self, image: np.ndarray) -> Features:
        """Features of a uint8 image in `input_mode`, coordinates in that image's pixels."""
        raise NotImplementedError
