"""Distillation: a frozen teacher (any supported registered extractor) gives targets for the student's
detection map and descriptors.

    losses:
      distill: {teacher: "aliked:variant=aliked-n16", detection: 1.0, descriptors: 1.0, cache: runs/teacher_cache}
      ap: 1.0                      # combines with any other loss family

Teacher targets of one image (B images at a time, in no_grad, teacher in eval mode):
  T: its keypoint-score map (H, W) in [0, 1];
  G: its descriptors on the grid of pixel centres (g*i + (g-1)/2) for a stride g = `grid` (D_t, H/g, W/g),
     L2-normalised (ALIKED: its SDDH head run at every grid point; dense models: their map there).
Terms (each multiplied by its weight; a weight of 0 skips the term):
  detection:   mean over pixels of the binary cross-entropy of the student's map P against T:
               -(T log P + (1 - T) log(1 - P)), P clamped to [1e-6, 1 - 1e-6].
  descriptors: similarity-structure distillation, dimension-free: per pair, K points of each image
               (the student's `num_points` best NMS peaks, detached, plus `grid_points` cell centres of the
               stride-`grid` grid drawn uniformly at random, so that the teacher's whole descriptor field is
               distilled, not only where the student fires), the student descriptors s_i
               (bilinear on its map) and the teacher's t_i (G sampled bilinearly, re-normalised) of all
               2K points; row-wise softmax of the similarity matrices over the other points (diagonal
               excluded) at temperature tau: KL(softmax(t t^T / tau) || softmax(s s^T / tau)), mean over
               rows. Intra- and cross-image rows: the student learns whom the teacher matches.
  cosine:      mean (1 - s_i . t_i) at the same points (only when D_student == D_teacher).
Teacher targets can be cached on disk (`cache`: a folder): one file per image, keyed by the sha256 of
the teacher's name and config hash, `grid`, and the image's uint8 content, so a repeated crop costs no
teacher pass and a changed teacher can never reuse stale targets.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ...config import ConfigError, parse_model_spec
from ...io.atomic import torch_save_atomic
from ...ops import l2_normalize, max_filter_nms, sample_at_pixels
from ._base import Loss, detection_map

logger = logging.getLogger(__name__)

_CLAMP = 1e-6


class Teacher:
    """A frozen extractor giving dense targets; `targets(images (B, 3, H, W) RGB in [0, 1])` ->
    (scores (B, 1, H, W), descriptors on the stride-`grid` grid (B, D, H/grid, W/grid), L2-normalised).

    Supported: `aliked` (score map + SDDH at the grid points) and every model with a training adapter
    (alike, disk, r2d2, lite, ...: their dense maps)."""

    def __init__(self, spec: str, grid: int, device: torch.device):
        from ...registry import load_extractor

        self.spec, self.grid, self.device = spec, int(grid), device
        name, conf = parse_model_spec(spec)
        self.name = name
        if name == "aliked":
            self.extractor = load_extractor(name, **{**conf, "device": str(device)})
            self.key = f"{name}:{self.extractor.conf_hash}:grid={self.grid}"
        else:
            from ...registry import trainable

            self.adapter = trainable(name)
            model_conf = self.adapter.resolve({"weights": "official", **conf})
            self.net = self.adapter.build(model_conf).to(device).eval()
            for p in self.net.parameters():
                p.requires_grad_(False)
            from ...config import conf_hash

            self.key = f"{name}:{conf_hash(name, model_conf)}:grid={self.grid}"

    def grid_points(self, h: int, w: int) -> torch.Tensor:
        """(h // g * w // g, 2) pixel centres (x, y) of the grid cells, row-major."""
        g = self.grid
        ys = torch.arange(h // g, device=self.device, dtype=torch.float32) * g + (g - 1) / 2
        xs = torch.arange(w // g, device=self.device, dtype=torch.float32) * g + (g - 1) / 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = images.shape
        g = self.grid
        if h % g or w % g:
            raise ConfigError(f"distill: image size {w}x{h} is not a multiple of grid={g}")
        images = images.to(self.device)
        pts = self.grid_points(h, w)
        if self.name == "aliked":
            scores, fmap = self.extractor.dense(images)
            grid01 = pts / pts.new_tensor([w - 1, h - 1]) * 2 - 1       # align_corners=True coordinates
            with torch.inference_mode():
                desc = self.extractor.net.desc_head(fmap.contiguous(), [grid01] * b)
            desc = torch.stack(desc).transpose(1, 2).reshape(b, -1, h // g, w // g)
            return scores.clone().float(), desc.clone().float()
        from ..validation import detection_and_descriptors

        out = self.adapter.dense(self.net, images)
        scores, dense = detection_and_descriptors(out)
        s = int(out.get("stride", 1))
        if s != 1:
            scores = F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=False)
        gx = (pts + 0.5) / pts.new_tensor([w, h]) * 2 - 1
        desc = F.grid_sample(dense.float(), gx.view(1, 1, -1, 2).expand(b, -1, -1, -1), mode="bilinear",
                             align_corners=False)[:, :, 0]
        return scores.float(), l2_normalize(desc, dim=1).reshape(b, -1, h // g, w // g)


def image_key(teacher_key: str, image: torch.Tensor) -> str:
    """sha256 of the teacher key and the uint8 content of one image (3, H, W) in [0, 1]."""
    q = (image.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).contiguous()
    h = hashlib.sha256(teacher_key.encode())
    h.update(str(tuple(q.shape)).encode())
    h.update(q.numpy().tobytes())
    return h.hexdigest()


class TargetCache:
    """Teacher targets on disk: ROOT/<key[:2]>/<key>.pt holding float16 'scores' (1, H, W) and
    'descriptors' (D, h, w); written atomically (a crash leaves whole files only)."""

    def __init__(self, root: Optional[str | Path]):
        self.root = Path(root) if root else None
        self.hits = self.misses = 0

    def get(self, teacher: Teacher, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.root is None:
            return teacher.targets(images)
        keys = [image_key(teacher.key, im) for im in images]
        found = {}
        for i, k in enumerate(keys):
            path = self.root / k[:2] / f"{k}.pt"
            if path.is_file():
                try:
                    found[i] = torch.load(path, weights_only=True)
                except Exception as exc:  # an unreadable entry is recomputed, never trusted
                    logger.warning("distill cache: ignoring unreadable %s (%s)", path, exc)
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            s, d = teacher.targets(images[missing])
            for j, i in enumerate(missing):
                entry = {"scores": s[j].half(), "descriptors": d[j].half()}
                path = self.root / keys[i][:2] / f"{keys[i]}.pt"
                torch_save_atomic(entry, path)
                found[i] = entry
        dev = images.device
        scores = torch.stack([found[i]["scores"] for i in range(len(keys))]).float().to(dev)
        desc = torch.stack([found[i]["descriptors"] for i in range(len(keys))]).float().to(dev)
        return scores, l2_normalize(desc, dim=1)


def student_points(scores: torch.Tensor, k: int, nms: int, border: int = 4) -> torch.Tensor:
    """(B, K, 2) pixel positions (x, y) of the K best NMS peaks of scores (B, 1, H, W) (detached),
    `border` pixels away from the edges."""
    s = scores.detach()
    b, _, h, w = s.shape
    peaks = s * max_filter_nms(s, nms).to(s.dtype)
    peaks[..., :border, :] = -1
    peaks[..., h - border:, :] = -1
    peaks[..., :, :border] = -1
    peaks[..., :, w - border:] = -1
    idx = peaks.reshape(b, -1).topk(k, dim=1).indices
    return torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1).float()


def random_grid_points(b: int, h: int, w: int, n: int, grid: int, border: int = 4) -> torch.Tensor:
    """(B, n, 2) pixel centres (x, y) = (g*j + (g-1)/2, g*i + (g-1)/2) of n distinct stride-g grid cells per image,
    drawn uniformly (torch's global generator) among the cells whose centre is at least `border` pixels from
    the edges; the teacher's grid descriptors are read there without interpolation."""
    g = grid
    ci = torch.arange(h // g, dtype=torch.float32) * g + (g - 1) / 2
    cj = torch.arange(w // g, dtype=torch.float32) * g + (g - 1) / 2
    ci = ci[(ci >= border) & (ci <= h - 1 - border)]
    cj = cj[(cj >= border) & (cj <= w - 1 - border)]
    cells = len(ci) * len(cj)
    if n > cells:
        raise ConfigError(f"loss 'distill': grid_points={n} exceeds the {cells} grid cells of a {w}x{h} image")
    idx = torch.stack([torch.randperm(cells)[:n] for _ in range(b)])
    return torch.stack([cj[idx % len(cj)], ci[torch.div(idx, len(cj), rounding_mode="floor")]], -1)


def relational_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean row-wise KL(softmax(t t^T / tau) || softmax(s s^T / tau)) over (B, N, D*) descriptor sets, the
    diagonal excluded."""
    n = student.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=student.device)
    ss = (student @ student.transpose(1, 2) / temperature).masked_fill(eye, float("-inf"))
    tt = (teacher @ teacher.transpose(1, 2) / temperature).masked_fill(eye, float("-inf"))
    log_p_s = F.log_softmax(ss, dim=-1)
    log_p_t = F.log_softmax(tt, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).masked_fill(eye, 0.0).sum(-1)
    return kl.mean()


class DistillLoss(Loss):
    """Teacher-student distillation (module docstring)."""

    name = "distill"
    default_conf = {"teacher": "aliked:variant=aliked-n16", "detection": 1.0, "descriptors": 1.0, "cosine": 0.0,
                    "num_points": 256, "grid_points": 0, "temperature": 0.05, "grid": 4, "nms": 5, "cache": None}
    requires = ("descriptors", ("scores", "logits", "repeatability"))

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        for key in ("num_points", "grid", "nms"):
            v = c[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"loss 'distill': {key} must be a positive integer, got {v!r}")
        gp = c["grid_points"]
        if isinstance(gp, bool) or not isinstance(gp, int) or gp < 0:
            raise ConfigError(f"loss 'distill': grid_points must be an integer >= 0, got {gp!r}")
        if not isinstance(c["teacher"], str) or not c["teacher"]:
            raise ConfigError(f"loss 'distill': teacher must be a model spec such as 'aliked:variant=aliked-n16', "
                              f"got {c['teacher']!r}")
        if not (isinstance(c["temperature"], (int, float)) and c["temperature"] > 0):
            raise ConfigError(f"loss 'distill': temperature must be > 0, got {c['temperature']!r}")
        self.cache = TargetCache(c["cache"])
        self._teacher: Optional[Teacher] = None   # built on first use (on the training device)

    def teacher(self, device) -> Teacher:
        if self._teacher is None:
            self._teacher = Teacher(self.conf["teacher"], self.conf["grid"], torch.device(device))
        return self._teacher

    def forward(self, out0: dict, out1: dict, batch: dict, step: int = 0) -> dict:
        for out in (out0, out1):
            self.check(out)
            if int(out.get("stride", 1)) != 1:
                raise ConfigError("loss 'distill' needs full-resolution dense outputs (stride 1)")
        c = self.conf
        images = torch.cat([batch["image0"], batch["image1"]])
        t_scores, t_desc = self.cache.get(self.teacher(images.device), images)
        p = torch.cat([detection_map(out0), detection_map(out1)])
        zero = p.sum() * 0
        terms = {}
        if c["detection"]:
            pc = p.clamp(_CLAMP, 1 - _CLAMP)
            terms["detection"] = F.binary_cross_entropy(pc, t_scores.clamp(0, 1))
        if c["descriptors"] or c["cosine"]:
            b = len(batch["image0"])
            k = min(int(c["num_points"]), p.shape[-1] * p.shape[-2] // 16)
            xy = student_points(p, k, int(c["nms"]))                       # (2B, K, 2)
            if c["grid_points"]:
                extra = random_grid_points(len(p), p.shape[-2], p.shape[-1], int(c["grid_points"]), int(c["grid"]))
                xy = torch.cat([xy, extra.to(xy.device)], dim=1)             # (2B, K + n, 2)
            # Each image's map sampled on its own: concatenating the two dense maps would copy them.
            s = l2_normalize(torch.cat([sample_at_pixels(out0["descriptors"], xy[:b]),
                                        sample_at_pixels(out1["descriptors"], xy[b:])]), dim=-1)  # (2B, K, D)
            t = l2_normalize(sample_at_pixels(t_desc, xy, int(c["grid"])), dim=-1)  # (2B, K, Dt)
            if c["descriptors"]:
                pair_s = torch.cat([s[:b], s[b:]], dim=1)                  # (B, 2K, D): both images of a pair
                pair_t = torch.cat([t[:b], t[b:]], dim=1)
                terms["descriptors"] = relational_kl(pair_s, pair_t, float(c["temperature"]))
            if c["cosine"]:
                if s.shape[-1] != t.shape[-1]:
                    raise ConfigError(f"loss 'distill': cosine needs equal descriptor sizes; the student has "
                                      f"{s.shape[-1]}, the teacher {t.shape[-1]} (use `descriptors`, which is "
                                      "dimension-free)")
                terms["cosine"] = (1 - (s * t).sum(-1)).mean()
        total = zero
        for key, value in terms.items():
            total = total + float(c[key]) * value
        return {"total": total, **terms}
