"""R2D2 and Fast-R2D2 (Revaud et al., NeurIPS 2019) with the official weights of naver/r2d2.

Detection follows the original `extract.py`: for every level of the multi-scale pyramid, a pixel
is a keypoint when its repeatability is the maximum of its 3x3 window and both repeatability and
reliability reach their thresholds; score = reliability x repeatability; descriptor = the
L2-normalised 128-D map at that pixel; the `max_keypoints` best over all levels are kept.

Coordinates follow the original exactly: a keypoint at (row, col) of a level of size nh x nw is at
x = col * W / nw, y = row * H / nh in the original image (integers at full resolution are pixel
centres; at smaller levels this is the original's mapping, which differs from the centre-to-centre
mapping by 0.5 * (W / nw - 1) px). scales = 32 / s (patch diameter in original pixels).

Beyond the original: tiled inference (exact, bounded memory for any image size), a bfloat16
mode, device selection, and a checkpoint reader that never evaluates the checkpoint's 'net' string.
"""
from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .. import hub
from ..checkpoints import training_weights
from ..io.atomic import torch_save_atomic
from ..ops import IMAGENET_MEAN, IMAGENET_STD, image_pyramid, image_to_tensor, l2_normalize, max_filter_nms, \
    normalize_images, tile_windows, top_k_indices
from ..registry import ConfigError, check_choice
from ..types import Features
from ._r2d2_nets import ARCHITECTURES, R2D2Net, load_network, parse_net_string
from .base import Extractor

logger = logging.getLogger(__name__)

# naver/r2d2 models/ (CC BY-NC-SA 3.0: non-commercial, never packaged); sha256 of the released files
# (faster2d2_WASF_N8_big: not available offline, so not pinned).
WEIGHTS = {
    variant: hub.WeightSpec(
        f"{variant}.pt",
        (f"https://github.com/naver/r2d2/raw/0ff8f6afcbea91f19613d0cb7d93143a977830f5/models/{variant}.pt",
         f"https://github.com/naver/r2d2/raw/master/models/{variant}.pt"),
        digest, "CC BY-NC-SA 3.0", non_commercial=True)
    for variant, digest in (
        ("r2d2_WAF_N16", "27cebd6608317b35198a76f60f87492110dee3e88ca382586a729dadb1a16b90"),
        ("r2d2_WASF_N16", "9ae90e02a9a133d100ca7aeaa32f4d4d7736a6dd222a530a25c8f7da5e508528"),
        ("r2d2_WASF_N8_big", "597dc13998e211e827c550bdc8f76dbb4aca32747846f96962c9168586cec418"),
        ("faster2d2_WASF_N16", "217daa3a166bfe9bf2b68c05c1607a09dd4d552ae1bbeda885479d504eefc14b"),
        ("faster2d2_WASF_N8_big", None))
}
VARIANTS = tuple(WEIGHTS)
PRECISIONS = ("fp32", "bf16")


class R2D2(Extractor):
    """R2D2 / Fast-R2D2 keypoints and 128-D descriptors, multi-scale as in the original.

    Config (names and defaults of the original `extract.py`):
      variant:           released model, by file stem: one of VARIANTS (default r2d2_WASF_N16).
      weights:           path of the checkpoint; None = find `<variant>.pt` through the weights lookup.
      max_keypoints:     keep the best keypoints over all levels (None = all). Default 5000
                         (the original's `top_k`, accepted as an alias).
      scale_f:           ratio between pyramid levels (2 ** 0.25).
      min_size/max_size: pyramid levels with max(h, w) in [min_size, max_size] (256 / 1024; None = no limit).
      min_scale/max_scale: and with scale s in [min_scale, max_scale] (0 / 1).
      reliability_thr/repeatability_thr: detection thresholds (0.7 / 0.7).
    Our additions:
      precision:  'fp32' (default; same output as the original) or 'bf16' (BatchNorm folded, the
                  trunk after its first two convolutions in bfloat16; heads, NMS and descriptors
                  stay float32). About 2-3x faster on CPUs with AVX-512 BF16 / AMX.
      tile_size:  None = run each level whole; an int T = levels larger than T x T are processed in
                  T x T tiles grown by the receptive radius of the network (+1 px for the NMS), which
                  gives the same keypoints as the whole level with memory bounded by T.
    Output: keypoints (N, 2) float32 in original-image pixels, scores (N,), descriptors (N, 128),
    scales (N,) = 32 / s; sorted by decreasing score.
    """

    name = "r2d2"
    input_mode = "rgb"
    precision_in_model = True  # precision='bf16' is the bf16 trunk below, not the base class's autocast
    conf_aliases = {"top_k": "max_keypoints"}
    default_conf = {
        "variant": "r2d2_WASF_N16",
        "weights": None,
        "max_keypoints": 5000,
        "scale_f": 2 ** 0.25,
        "min_size": 256,
        "max_size": 1024,
        "min_scale": 0.0,
        "max_scale": 1.0,
        "reliability_thr": 0.7,
        "repeatability_thr": 0.7,
        "precision": "fp32",
        "tile_size": 1024,
    }

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        variant = conf.get("variant", cls.default_conf["variant"])
        check_choice(cls.name, "variant", variant, VARIANTS)
        return [WEIGHTS[variant]]

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        spec = self.weight_specs(c)[0]
        self.check_choice("precision", PRECISIONS)
        self.check_count("max_keypoints")
        if c["tile_size"] is not None and (not isinstance(c["tile_size"], int) or c["tile_size"] < 16):
            raise ConfigError(f"r2d2: tile_size must be None or an integer >= 16, got {c['tile_size']!r}")
        if not float(c["scale_f"]) > 1:
            raise ConfigError(f"r2d2: scale_f must be > 1, got {c['scale_f']!r}")
        if float(c["max_scale"]) > 1:
            raise ConfigError(f"r2d2: max_scale must be <= 1 (the original never upsamples), got {c['max_scale']!r}")
        path = hub.find_weights(spec, override=c["weights"])
        self.net, self.net_string = load_network(path, self.device)
        if c["tile_size"] is not None and c["tile_size"] % self.net.alignment:
            raise ConfigError(f"r2d2: tile_size must be a multiple of {self.net.alignment} for {c['variant']}")
        # Tiles overlap by the receptive radius, plus 1 px so that the 3x3 NMS of a core pixel sees exact values.
        self.tile_margin = self.net.receptive_radius + 1
        self._bf16_trunk = self.net.bf16_trunk() if c["precision"] == "bf16" else None
        self._head_w = torch.cat([self.net.clf.weight, self.net.sal.weight]).flatten(1)  # (3, D)
        self._head_b = torch.cat([self.net.clf.bias, self.net.sal.bias])  # (3,)
        logger.debug("r2d2: %s from %s on %s", self.net_string, path, self.device)

    # ------------------------------------------------------------------ network
    def _forward(self, x: torch.Tensor) -> dict:
        """Network outputs (float32) for an input (1, 3, h, w); see `R2D2Net.forward`."""
        if self.conf["precision"] == "bf16":
            net = self.net
            y = x
            for op in self._bf16_trunk:
                y = op(y)
            if net.fast:
                y = F.interpolate(y.float(), scale_factor=net.upsample, mode="bilinear", align_corners=False)
            # Heads in float32 (bf16 confidence maps would be full of ties that the NMS keeps), as one
            # matmul over the channels-last features: no layout conversion of the 128-channel map.
            feats = y.float()
            del y
            sq = feats * feats
            logits = torch.matmul(sq.permute(0, 2, 3, 1), self._head_w.t()) + self._head_b  # (B, h, w, 3)
            del sq
            logits = logits.permute(0, 3, 1, 2)
            rel = F.softmax(logits[:, :2], dim=1)[:, 1:2].contiguous()
            sp = F.softplus(logits[:, 2:3]).contiguous()
            return {"features": feats, "reliability": rel, "repeatability": sp / (1 + sp)}
        return self.net(x)

    def _tiles(self, level: torch.Tensor) -> Iterator[tuple]:
        """Run the network on the tiles of a level (1, 3, nh, nw).

        Yields (core, ring, out): `core` (y0, y1, x0, x1) in level pixels, clipped to the output maps;
        `ring` = core grown by 1 px (clipped); `out` = network outputs cropped to `ring`.
        """
        nh, nw = level.shape[-2:]
        for (wy0, wy1, wx0, wx1), (cy0, cy1, cx0, cx1) in tile_windows(
                nh, nw, self.conf["tile_size"], self.tile_margin, self.net.alignment):
            out = self._forward(level[:, :, wy0:wy1, wx0:wx1])
            oh, ow = out["reliability"].shape[-2:]  # Fast-R2D2 drops an odd last row/column
            cy1, cx1 = min(cy1, wy0 + oh), min(cx1, wx0 + ow)
            if cy1 <= cy0 or cx1 <= cx0:
                continue
            ry0, ry1 = max(cy0 - 1, wy0), min(cy1 + 1, wy0 + oh)
            rx0, rx1 = max(cx0 - 1, wx0), min(cx1 + 1, wx0 + ow)
            crop = {k: v[:, :, ry0 - wy0:ry1 - wy0, rx0 - wx0:rx1 - wx0] for k, v in out.items()}
            del out
            yield (cy0, cy1, cx0, cx1), (ry0, ry1, rx0, rx1), crop
            del crop  # free this tile's maps before the next tile is computed

    def _detect_level(self, level: torch.Tensor) -> tuple:
        """Keypoints of one level: rows, cols (int64, level pixels), reliability, repeatability (K,)
        and descriptors (K, D) float32 L2-normalised."""
        rows, cols, rels, reps, descs = [], [], [], [], []
        for (cy0, cy1, cx0, cx1), (ry0, ry1, rx0, rx1), out in self._tiles(level):
            rel, rep = out["reliability"], out["repeatability"]
            maxima = max_filter_nms(rep, 3)
            maxima &= rep >= self.conf["repeatability_thr"]
            maxima &= rel >= self.conf["reliability_thr"]
            core = maxima[0, 0, cy0 - ry0:cy1 - ry0, cx0 - rx0:cx1 - rx0]
            y, x = core.nonzero(as_tuple=True)
            y, x = y + (cy0 - ry0), x + (cx0 - rx0)  # ring coordinates
            rels.append(rel[0, 0, y, x])
            reps.append(rep[0, 0, y, x])
            descs.append(F.normalize(out["features"][0, :, y, x].t(), p=2, dim=1))
            rows.append(y + ry0)
            cols.append(x + rx0)
            del out, rel, rep, maxima, core  # this tile's maps: free them before the next tile is computed
        if not rows:
            empty = torch.zeros(0, dtype=torch.int64, device=level.device)
            z = torch.zeros(0, device=level.device)
            return empty, empty, z, z, torch.zeros(0, self.net.dim, device=level.device)
        return torch.cat(rows), torch.cat(cols), torch.cat(rels), torch.cat(reps), torch.cat(descs)

    # ------------------------------------------------------------------ public
    def _extract(self, image: np.ndarray) -> Features:
        c = self.conf
        h, w = image.shape[:2]
        xs, ys, ss, scores, descs = [], [], [], [], []
        with torch.inference_mode():
            x = image_to_tensor(image, self.device, IMAGENET_MEAN, IMAGENET_STD)
            for s, level in image_pyramid(x, float(c["scale_f"]), float(c["min_scale"]), float(c["max_scale"]),
                                          c["min_size"], c["max_size"]):
                nh, nw = level.shape[-2:]
                rows, cols, rel, rep, desc = self._detect_level(level)
                logger.debug("r2d2: level s=%.3f %dx%d: %d candidates", s, nw, nh, len(rows))
                # Same float32 operations, in the same order, as the original: (col * W) / nw.
                xs.append(cols.float() * w / nw)
                ys.append(rows.float() * h / nh)
                ss.append(torch.full((len(rows),), 32 / s, dtype=torch.float32, device=level.device))
                scores.append(rel * rep)
                descs.append(desc)
                del level
            if not xs:
                return Features(np.zeros((0, 2), np.float32), np.zeros(0, np.float32),
                                np.zeros((0, self.net.dim), np.float32), (w, h), scales=np.zeros(0, np.float32))
            score = torch.cat(scores)
            keep = top_k_indices(score, c["max_keypoints"])
            kpts = torch.stack([torch.cat(xs), torch.cat(ys)], dim=-1)[keep]
            return Features(kpts.cpu().numpy(), score[keep].cpu().numpy(), torch.cat(descs)[keep].cpu().numpy(),
                            (w, h), scales=torch.cat(ss)[keep].cpu().numpy())

    def dense_maps(self, image) -> dict:
        """Reliability and repeatability at full resolution (the s = 1 level, no pyramid).

        image: a path or uint8 array. Returns {'reliability', 'repeatability'}: float32 (H, W) maps in
        [0, 1] aligned with the ORIGINAL image (resized back when resize_max applies; Fast-R2D2's missing
        last odd row/column is filled with the nearest one).
        """
        from ..io.images import as_image_array, resize_max

        import cv2

        img = as_image_array(image, self.input_mode)
        h, w = img.shape[:2]
        small, factors = resize_max(img, self.conf["resize_max"])
        sh, sw = small.shape[:2]
        maps = {"reliability": np.zeros((sh, sw), np.float32), "repeatability": np.zeros((sh, sw), np.float32)}
        with torch.inference_mode():
            x = image_to_tensor(small, self.device, IMAGENET_MEAN, IMAGENET_STD)
            oh = ow = 0
            for (cy0, cy1, cx0, cx1), (ry0, _, rx0, _), out in self._tiles(x):
                for key in maps:
                    maps[key][cy0:cy1, cx0:cx1] = out[key][0, 0, cy0 - ry0:cy1 - ry0,
                                                           cx0 - rx0:cx1 - rx0].float().cpu().numpy()
                oh, ow = max(oh, cy1), max(ow, cx1)
                del out
        for key, m in maps.items():
            if (oh, ow) != (sh, sw):
                m[oh:] = m[oh - 1:oh]
                m[:, ow:] = m[:, ow - 1:ow]
            if factors != (1.0, 1.0):
                m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
            maps[key] = np.ascontiguousarray(m, np.float32)
        return maps


# ------------------------------------------------------------------------------------------ training
# R2D2 / Fast-R2D2 of any width; 'variant' names the official file that weights='official' starts from.
TRAIN_DEFAULTS = {"arch": "Fast_Quad_L2Net_ConfCFS", "dim": 128, "mchan": 4, "relu22": False, "weights": None,
                  "variant": "faster2d2_WASF_N16"}


def _net_string(conf: dict) -> str:
    args = f"dim={int(conf['dim'])}, mchan={int(conf['mchan'])}, relu22={bool(conf['relu22'])}"
    return f"{conf['arch']}({args})"


def train_build(conf: dict) -> R2D2Net:
    """The network of `conf` (arch, dim, mchan, relu22), from scratch or from conf['weights'] ('official' = the
    file of conf['variant'], or a path), in training mode; a file holding another network is a ConfigError."""
    arch, kwargs = parse_net_string(_net_string(conf))  # validates arch and widths
    path = training_weights(WEIGHTS[conf["variant"]], conf["weights"])
    if path is None:
        return R2D2Net(arch, **kwargs)
    net, net_string = load_network(path)
    file_arch, file_kwargs = parse_net_string(net_string)
    wanted = {"arch": conf["arch"], "dim": conf["dim"], "mchan": conf["mchan"], "relu22": conf["relu22"]}
    found = {"arch": file_arch, **{k: file_kwargs.get(k, d) for k, (_, d) in ARCHITECTURES[file_arch].items()
                                  if k in wanted}}
    if any(found[k] != wanted[k] for k in wanted):
        raise ConfigError(f"model weights {path} hold {net_string}, but the model config asks for {wanted}; "
                          f"set model.arch/dim/mchan/relu22 to {found}")
    return net.train()


def train_dense(net: R2D2Net, images: torch.Tensor) -> dict:
    """images (B, 3, H, W) RGB in [0, 1] -> 'descriptors' (B, D, H, W) L2-normalised, 'reliability' and
    'repeatability' (B, 1, H, W), stride 1."""
    out = net(normalize_images(images))
    return {"descriptors": l2_normalize(out["features"], dim=1), "reliability": out["reliability"],
            "repeatability": out["repeatability"], "stride": 1}


def train_save(net: R2D2Net, conf: dict, path) -> None:
    """{'net': net string, 'state_dict'}: the release's layout (this extractor and the original code read it)."""
    torch_save_atomic({"net": _net_string(conf), "state_dict": net.state_dict()}, path)
