"""Base classes of the matchers: `Matcher` (two `Features` in, `Matches` out) and `DetectorFreeMatcher`
(two images in, `PairMatches` out)."""
from __future__ import annotations

import numpy as np

from ..config import Model
from ..io.images import as_image_array, map_keypoints_to_original, resize_max
from ..ops import resolve_device
from ..types import Features, Matches, PairMatches


class Matcher(Model):
    """Subclasses set `name`, `default_conf` and implement `_match`."""

    default_conf = {"device": None}

    def __init__(self, **conf):
        super().__init__(**conf)
        self.device = resolve_device(self.conf["device"])

    @classmethod
    def conf_for_features(cls, conf: dict, extractor: str | None) -> dict:
        """The config to use on features of the extractor `extractor` (the model a store records; None when
        unknown). Here `conf` unchanged; matchers whose weights depend on the extractor (LightGlue) fill in
        the keys the user left unset, or raise `ConfigError` when they have nothing for that extractor."""
        return dict(conf)

    def match(self, features0: Features, features1: Features) -> Matches:
        """Matches between `features0` and `features1`, index ranges checked."""
        return self._match(features0, features1).check_against(features0, features1)

    def _match(self, features0: Features, features1: Features) -> Matches:
        raise NotImplementedError


class DetectorFreeMatcher(Model):
    """Base of the matchers that take two images and give `PairMatches` (LoFTR family, XFeat*).

    Subclasses set `name`, `default_conf`, `input_mode` ('gray' or 'rgb') and implement `_match_images`.
    Config keys shared with the extractors:
      resize_max: None or int, downscale each image so that max(H, W) <= resize_max (area interpolation,
                  as the extractors); keypoints are mapped back to original-image pixels.
      device:     None (CUDA when available, else CPU), 'cpu', 'cuda', ...
    """

    default_conf = {"resize_max": None, "device": None}
    input_mode = "gray"

    def __init__(self, **conf):
        super().__init__(**conf)
        self.device = resolve_device(self.conf["device"])

    def match_images(self, image0, image1) -> PairMatches:
        """Matches between two images (paths or uint8 arrays (H, W) / (H, W, 3) RGB / (H, W, 4)).

        Returns `PairMatches` with keypoints0/1 (M, 2) float32 in original-image pixels (pixel-centre origin)
        and scores (M,); `image_size0/1` = (W, H) of the originals.
        """
        images, factors, sizes = [], [], []
        for image in (image0, image1):
            img = as_image_array(image, self.input_mode)
            sizes.append((img.shape[1], img.shape[0]))
            small, f = resize_max(img, self.conf["resize_max"])
            images.append(small)
            factors.append(f)
        out = self._match_images(images[0], images[1])
        return PairMatches(map_keypoints_to_original(out.keypoints0, factors[0]),
                           map_keypoints_to_original(out.keypoints1, factors[1]), out.scores,
                           image_size0=sizes[0], image_size1=sizes[1])

    def _match_images(self, image0: np.ndarray, image1: np.ndarray) -> PairMatches:
        """Matches between two uint8 images in `input_mode`, coordinates in those images' pixels."""
        raise NotImplementedError
