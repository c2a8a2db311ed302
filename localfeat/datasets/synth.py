"""Synthetic HPatches-format sequences from any folder of photos (default: scikit-image's bundled photos).

Writes the layout of hpatches-sequences-release (``<seq>/1.ppm .. 6.ppm``, ``<seq>/H_1_2 .. H_1_6``),
so every HPatches tool reads it:

- ``i_<photo>``: the same geometry (H = identity) and 5 photometric changes of increasing strength
  s = 0.2, 0.4, ..., 1.0, each combining gamma, brightness/contrast, colour cast, blur, noise and
  JPEG compression (parameters drawn from the seed, amplitudes proportional to s).
- ``v_<photo>``: 5 homographies of increasing severity (rotation, scale, shear, perspective,
  amplitudes proportional to s) and no photometric change.

Ground truth is exact: image 1 is a crop of the photo and image k is rendered from the PHOTO
through H_1_k composed with the crop offset (2x supersampled, then area-averaged), and H_1_k is
written with 17 significant digits. No void: every homography is checked (and zoomed in when
needed) so that every pixel of image k comes from inside the photo, so no image has black
borders and no keypoint can be scored against void. Everything is deterministic given the seed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..geometry import homography_about_centre, warp_points
from ..io.atomic import atomic_path, write_text_atomic
from .photos import bundled_photo_dir

logger = logging.getLogger(__name__)

# Textured photos bundled with scikit-image < 0.26 (flat, binary or synthetic ones left out).
SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
                  "ihc.png", "retina.jpg", "brick.png", "grass.png", "gravel.png", "camera.png",
                  "moon.png", "coins.png", "page.png", "hubble_deep_field.jpg", "motorcycle_right.png")
CROP_FRACTION = 0.7     # image 1 is the central CROP_FRACTION of the photo (room for the warps)
SUPERSAMPLE = 2


@dataclass(frozen=True)
class SynthConfig:
    """Amplitudes at full severity (s = 1, image 6); image k uses s = (k - 1) / 5.

    rotation_deg: max |rotation|; scale: max relative zoom change; perspective: max |h31|, |h32|
    relative to the image size; shear: max |shear|. Photometric: gamma (max |log gamma|),
    contrast (max relative change), brightness (max offset, grey levels), colour (max relative
    per-channel gain change), blur (max Gaussian sigma, px), noise (max sigma, grey levels),
    jpeg_quality (quality at s = 1; 95 at s = 0).
    """

    rotation_deg: float = 35.0
    scale: float = 0.45
    perspective: float = 0.45
    shear: float = 0.15
    gamma: float = 0.6
    contrast: float = 0.4
    brightness: float = 40.0
    colour: float = 0.25
    blur: float = 1.6
    noise: float = 8.0
    jpeg_quality: int = 30


def list_photos(photos=None) -> list[Path]:
    """Photos to build sequences from: the bundled scikit-image ones (None), or every image of a folder
    (recursive), a quoted glob or a list file, or a list of such sources (concatenated in order, each
    sorted). A source that holds no image is an error naming it."""
    if photos is None:
        folder = bundled_photo_dir()
        return [folder / name for name in SKIMAGE_PHOTOS if (folder / name).exists()]
    from ..io.images import list_images

    out = []
    for source in ([photos] if isinstance(photos, (str, Path)) else list(photos)):
        root, names = list_images(source)
        if not names:
            raise FileNotFoundError(f"no images found in {source}")
        out += [Path(root) / n for n in names]
    return out


def _fits(T_inv: np.ndarray, out_size, photo_size, margin: float = 1.0) -> bool:
    """Do all pixels of an output image of out_size (W, H) map, through T_inv, inside the photo?"""
    w, h = out_size
    pw, ph = photo_size
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
    p = warp_points(corners, T_inv)
    # A homography keeps the quadrilateral convex when no corner crosses the line at infinity.
    homog = np.concatenate([corners, np.ones((4, 1))], 1) @ T_inv.T
    if not (np.all(homog[:, 2] > 0) or np.all(homog[:, 2] < 0)):
        return False
    return bool(np.all(p[:, 0] >= margin) and np.all(p[:, 1] >= margin)
                and np.all(p[:, 0] <= pw - 1 - margin) and np.all(p[:, 1] <= ph - 1 - margin))


def render(photo: np.ndarray, T: np.ndarray, out_size) -> np.ndarray:
    """Image of size out_size (W, H) whose pixel centre q shows the photo at T^-1(q), pixel-centre
    convention, rendered 2x supersampled with bilinear interpolation then area-averaged."""
    w, h = out_size
    f = SUPERSAMPLE
    # Supersampled pixel u covers image pixel x with u = f x + (f - 1) / 2 (centres).
    S = np.array([[f, 0, (f - 1) / 2], [0, f, (f - 1) / 2], [0, 0, 1]], np.float64)
    big = cv2.warpPerspective(photo, S @ T, (w * f, h * f), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)


def viewpoint_homography(rng: np.random.Generator, size, s: float, conf: SynthConfig,
                         directions: dict) -> np.ndarray:
    """H_1_k of severity s in [0, 1] about the centre of an image of `size` (W, H)."""
    w, h = size
    angle = directions["angle"] * conf.rotation_deg * s
    scale = float(np.exp(directions["scale"] * np.log1p(conf.scale) * s))
    px, py = directions["perspective"] * conf.perspective * s
    return homography_about_centre(size, angle_deg=angle, scale=scale,
                                   perspective=(px / w, py / h), shear=directions["shear"] * conf.shear * s)


def photometric(image: np.ndarray, rng: np.random.Generator, s: float, conf: SynthConfig) -> np.ndarray:
    """Photometric change of strength s in [0, 1] of an RGB uint8 image: gamma, brightness/contrast,
    colour cast, blur, noise, then JPEG compression (each amplitude proportional to s)."""
    img = image.astype(np.float32) / 255.0
    gamma = float(np.exp(rng.uniform(-1, 1) * conf.gamma * s))
    img = np.power(np.clip(img, 0, 1), gamma)
    contrast = 1.0 + rng.uniform(-1, 1) * conf.contrast * s
    brightness = rng.uniform(-1, 1) * conf.brightness * s / 255.0
    img = (img - 0.5) * contrast + 0.5 + brightness
    gains = 1.0 + rng.uniform(-1, 1, size=3).astype(np.float32) * conf.colour * s
    img = img * gains[None, None, :]
    sigma = conf.blur * s
    if sigma > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    img = img + rng.normal(0, conf.noise * s / 255.0, size=img.shape).astype(np.float32)
    out = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    quality = int(round(95 - (95 - conf.jpeg_quality) * s))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _write_ppm(path: Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {path}")


def _write_homography(path: Path, H: np.ndarray) -> None:
    write_text_atomic(path, "\n".join(" ".join(f"{v:.17g}" for v in row) for row in H) + "\n")


def generate(out_dir, n_sequences: int = 10, seed: int = 0, photos=None,
             image_max_size: int = 640, conf: SynthConfig = SynthConfig()) -> list[str]:
    """Write `n_sequences` synthetic sequences (alternately i_ and v_) into `out_dir`; returns their names.

    photos: a folder of photos, a glob, a list file or a list of those (`list_photos`; default:
    scikit-image's bundled photos); each photo gives one i_ and one v_ sequence, named after the photo
    (`_photo_labels`: the folder's name is prefixed where two photos share a name), reused with new
    random parameters (suffix _2, _3, ...) when more sequences are asked than photos exist.
    image_max_size: max(W, H) of the images written.
    A description of every sequence (photo, parameters) is written to ``out_dir/synth.json``.
    """
    from ..io.images import read_image

    if n_sequences < 1:
        raise ValueError(f"--sequences must be at least 1, got {n_sequences}")
    sources = list_photos(photos)
    if not sources:
        raise FileNotFoundError(f"no photos found in {photos}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = _photo_labels(sources)
    names, description = [], {"seed": seed, "config": conf.__dict__, "image_max_size": image_max_size,
                              "photos": ("scikit-image bundled photos" if photos is None
                                         else str(photos) if isinstance(photos, (str, Path))
                                         else [str(p) for p in photos]),
                              "sequences": {}}
    for idx in range(n_sequences):
        kind = "i" if idx % 2 == 0 else "v"
        src, label = sources[(idx // 2) % len(sources)], labels[(idx // 2) % len(sources)]
        repeat = idx // (2 * len(sources))
        name = f"{kind}_{label}" + (f"_{repeat + 1}" if repeat else "")
        rng = np.random.default_rng([seed, idx])
        photo = read_image(src, "rgb")
        ph, pw = photo.shape[:2]
        limit = image_max_size / CROP_FRACTION
        if max(ph, pw) > limit:
            factor = limit / max(ph, pw)
            photo = cv2.resize(photo, (max(1, round(pw * factor)), max(1, round(ph * factor))),
                               interpolation=cv2.INTER_AREA)
            ph, pw = photo.shape[:2]
        w, h = int(round(pw * CROP_FRACTION)), int(round(ph * CROP_FRACTION))
        if min(w, h) < 32:
            raise ValueError(f"{src}: photo too small ({pw}x{ph}) for a sequence")
        # Image 1: a crop, shifted at random within the middle of the margin.
        ox = int(round((pw - w) / 2 + rng.uniform(-0.25, 0.25) * (pw - w)))
        oy = int(round((ph - h) / 2 + rng.uniform(-0.25, 0.25) * (ph - h)))
        crop = np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]], np.float64)  # photo -> image 1
        seq_dir = out_dir / name
        _write_ppm(seq_dir / "1.ppm", np.ascontiguousarray(photo[oy:oy + h, ox:ox + w]))
        image1 = photo[oy:oy + h, ox:ox + w]
        directions = {"angle": rng.choice([-1.0, 1.0]), "scale": rng.choice([-1.0, 1.0]),
                      "perspective": rng.uniform(-1, 1, size=2), "shear": rng.uniform(-1, 1)}
        record = {"photo": src.name, "crop_offset": [ox, oy], "size": [w, h], "images": {}}
        for k in range(2, 7):
            s = (k - 1) / 5.0
            if kind == "i":
                H = np.eye(3)
                image = photometric(image1, rng, s, conf)
                record["images"][k] = {"strength": s}
            else:
                H = viewpoint_homography(rng, (w, h), s, conf, directions)
                zoom = 1.0
                while not _fits(np.linalg.inv(H @ crop), (w, h), (pw, ph)):
                    # Zoom in about the centre until every output pixel comes from the photo.
                    zoom *= 1.05
                    H = homography_about_centre((w, h), scale=1.05) @ H
                    H = H / H[2, 2]
                    if zoom > 20:
                        raise RuntimeError(f"{name}: cannot fit homography {k} inside the photo")
                H = np.array([[float(f"{v:.17g}") for v in row] for row in H])
                image = render(photo, H @ crop, (w, h))
                record["images"][k] = {"severity": s, "extra_zoom": zoom}
            _write_ppm(seq_dir / f"{k}.ppm", image)
            _write_homography(seq_dir / f"H_1_{k}", H)
        description["sequences"][name] = record
        names.append(name)
    write_text_atomic(out_dir / "synth.json", json.dumps(description, indent=1, default=_jsonable))
    logger.info("wrote %d synthetic HPatches sequences to %s", len(names), out_dir)
    return names


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _photo_labels(sources: list[Path]) -> list[str]:
    """One distinct sequence label per photo: its slugged stem, prefixed by its folder's name where stems clash
    (two scenes' 1.jpg: "piazzasanmarco1", "stpaulscathedral1"), then numbered if they still clash."""
    stems = [_slug(src.stem) for src in sources]
    labels, taken = [], set()
    for src, stem in zip(sources, stems):
        label = stem if stems.count(stem) == 1 else _slug(src.parent.name) + stem
        base, k = label, 2
        while label in taken:
            label, k = f"{base}{k}", k + 1
        taken.add(label)
        labels.append(label)
    return labels


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "", text.lower()) or "photo"
