"""Base class of every extractor: image in (path or array), `Features` out, in original-image pixels."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ConfigError, Model
from ..io.images import as_image_array, map_keypoints_to_original, resize_max
from ..ops import resolve_device
from ..types import Features, normalize_rows_if_needed


DEFAULT_RESIZE_MAX = 1600  # pixels, longest side; see Extractor
PRECISIONS = ("fp32", "bf16")


@dataclass
class PreparedImage:
    """An image made ready for `Extractor.extract_prepared` by `Extractor.prepare` (decode, mode, resize):
    `image` uint8 (h, w) or (h, w, 3) after `resize_max`; `factors` (sx, sy) = original / resized size;
    `size` (W, H) of the original image, pixels."""

    image: np.ndarray
    factors: tuple
    size: tuple


class Extractor(Model):
    """Subclasses set `name`, `default_conf`, `input_mode` ('rgb' or 'gray') and implement `_extract`.

    Config keys shared by all extractors:
      resize_max: int or None, downscale the image so that max(H, W) <= resize_max before
                  extraction (area interpolation; never upscales); keypoints are mapped back to
                  original-image pixels. Default DEFAULT_RESIZE_MAX = 1600, as hloc's SfM presets:
                  it bounds memory and time on camera photos (ALIKED on 6000 x 4000: 7.4 GB at full
                  size). None = full resolution.
      device:     None (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', ...
      precision:  'fp32' (default: the reference outputs) or 'bf16': `_extract` runs under
                  torch.autocast(bfloat16), so convolutions and matrix products compute in bfloat16;
                  keypoints, scores and descriptors still come out float32 (descriptors re-normalised
                  in float32). Faster only on hardware
                  with bfloat16 arithmetic (CPUs with AVX-512 BF16 or AMX, recent GPUs); keypoints
                  move slightly (benchmarks/bench_precision.py measures the agreement per model).
                  Models with their own bfloat16 path (`precision_in_model = True`, e.g. R2D2) run
                  that instead of autocast. No effect on models without a network (SIFT).
      channels_last: False (default) or True: the model's networks are converted to channels-last
                  (NHWC) memory, which oneDNN / cuDNN convolutions often run faster; values equal up to
                  rounding. Some models already run channels-last whatever this says (ALIKE, ALIKED, lite).
    `precision` and `channels_last` at their defaults are left out of config hashes (see
    `localfeat.config.conf_hash`): stores written before these options existed stay valid.
    """

    default_conf = {"resize_max": DEFAULT_RESIZE_MAX, "device": None, "precision": "fp32",
                    "channels_last": False}
    input_mode = "rgb"
    # True for models that implement conf['precision'] themselves (no autocast around their `_extract`).
    precision_in_model = False

    def __init__(self, **conf):
        super().__init__(**conf)
        self.check_count("resize_max")  # 0 or -1 would shrink images to nothing
        self.check_choice("precision", PRECISIONS)
        self.device = resolve_device(self.conf["device"])
        if self.conf["precision"] == "bf16" and self.device.type == "cuda":
            if not torch.cuda.is_bf16_supported():
                raise ConfigError(f"{self.name}: precision='bf16' but {torch.cuda.get_device_name(self.device)} "
                                  "has no bfloat16 support; use precision='fp32'")
        self._run_options_applied = False

    def prepare(self, image) -> PreparedImage:
        """The CPU work before the network, for one image (a path, an array or a tensor, as `extract`
        takes): decode, conversion to `input_mode` uint8, `resize_max`. Thread-safe: the batch pipeline
        runs it for the next images while the network works on this one (`localfeat.pipeline.extract`)."""
        img = as_image_array(image, self.input_mode)
        h, w = img.shape[:2]
        small, factors = resize_max(img, self.conf["resize_max"])
        return PreparedImage(small, factors, (w, h))

    def extract(self, image) -> Features | list[Features]:
        """Features of `image`: a path; a numpy array (H, W) / (H, W, 3) RGB / (H, W, 4), channels last;
        or a torch tensor (C, H, W) / (1, C, H, W), channels first as in kornia. Float images are read as
        [0, 1] when every value lies in [0, 1], else as [0, 255]; other values are an error (never clipped).
        A tensor batch (B, C, H, W) with B > 1 gives a list of B `Features`, in batch order."""
        if hasattr(image, "detach") and image.ndim == 4 and image.shape[0] != 1:
            return [self.extract(item) for item in image]
        return self.extract_prepared(self.prepare(image))

    def extract_prepared(self, prepared: PreparedImage) -> Features:
        """Features of an image made ready by `prepare`, keypoints in original-image pixels."""
        self._apply_run_options()
        with self._precision_context():
            feats = self._extract(prepared.image)
        if self.conf["precision"] != "fp32" and feats.descriptors.dtype == np.float32:
            # Rows normalised in bfloat16 have norms off by up to ~0.5%; the contract wants unit rows.
            feats.descriptors = normalize_rows_if_needed(feats.descriptors)
        factors = prepared.factors
        if factors != (1.0, 1.0):
            feats.keypoints = map_keypoints_to_original(feats.keypoints, factors)
            if feats.scales is not None:
                feats.scales = (feats.scales * np.float32(np.sqrt(factors[0] * factors[1]))).astype(np.float32)
        feats.image_size = prepared.size
        return feats

    def _precision_context(self):
        """torch.autocast(bfloat16) on the model's device for precision='bf16', else nothing."""
        if self.conf["precision"] == "fp32" or self.precision_in_model:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _apply_run_options(self) -> None:
        """Once, before the first extraction (the subclass has built its networks by then): channels-last
        memory for every network held as an attribute of the extractor."""
        if self._run_options_applied:
            return
        self._run_options_applied = True
        if not self.conf["channels_last"]:
            return
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                value.to(memory_format=torch.channels_last)

    def _extract(self, image: np.ndarray) -> Features:
        """Features of a uint8 image in `input_mode`, coordinates in that image's pixels."""
        raise NotImplementedError
