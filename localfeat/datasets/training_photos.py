"""Real, licence-clean training photos on a machine that reaches only the package registries.

    python -m localfeat.datasets.training_photos -o data/train_photos      # or: localfeat dataset gather-photos

Sources (each package's Debian copyright file is copied next to its photos, in `licences/`):

| source | what | licence (from the package's copyright file) |
|---|---|---|
| opencv-doc | sample photos of OpenCV's examples and tutorials | Apache-2.0 / BSD-2/3-Clause (per file) |
| plasma-workspace-wallpapers | KDE Plasma wallpapers (photos and renders) | GPL-2+ / LGPL-3 / CC-BY-SA |
| gnome-backgrounds | GNOME wallpapers | CC-BY-SA-3.0 / GPL |
| mate-backgrounds | MATE wallpapers | GPL-2+ / CC-BY-SA-4.0 |
| lomiri-wallpapers, lomiri-wallpapers-16.04, -20.04 | Ubuntu Touch wallpapers | CC-BY-4.0 / CC-BY-SA / CC0 |
| ukui-wallpapers | UKUI wallpapers | CC-BY-SA-3.0 |
| desktop-base, xfdesktop4-data, sway-backgrounds | Debian / Xfce / sway backgrounds | GPL / CC-BY-SA / Expat |
| scikit-image | the photos bundled with scikit-image (`bundled_photo_dir`) | BSD-3-Clause / public domain |

Filtering keeps photographs and photo-like renders: decodable, shorter side >= `min_side`, at least
300 distinct (quantised) colours and less than half of the pixels flat (|Laplacian| < 1) at 256 x 256,
which drops diagrams, icons, logos and flat gradients. Duplicates (same bytes) are kept once.
Never add ../shared/data/hpatches_subset: it is the validation set.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import cv2
import numpy as np

from ..io.atomic import current_umask

logger = logging.getLogger(__name__)

DEBIAN_PACKAGES = ("opencv-doc", "plasma-workspace-wallpapers", "gnome-backgrounds", "mate-backgrounds",
                   "lomiri-wallpapers", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "ukui-wallpapers",
                   "desktop-base", "xfdesktop4-data", "sway-backgrounds")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def is_photo(image: np.ndarray, min_side: int = 240) -> bool:
    """Photograph-like: shorter side >= min_side, >= 300 distinct colours (5 bits per channel) and less
    than half of the pixels flat (|Laplacian| < 1 grey level) at 256 x 256. image: uint8 (H, W, 3) BGR."""
    if image is None or image.ndim != 3 or min(image.shape[:2]) < min_side:
        return False
    small = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)
    colours = len(np.unique(small.reshape(-1, 3) // 8, axis=0))
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    flat = float(np.mean(np.abs(cv2.Laplacian(gray, cv2.CV_32F)) < 1))
    return colours >= 300 and flat < 0.5


def _download_and_unpack(packages: Iterable[str], work: Path) -> dict[str, Path]:
    """`apt-get download` each package into `work` and unpack it; returns {package: unpacked root}.
    A package that cannot be downloaded is reported and skipped."""
    roots = {}
    for pkg in packages:
        proc = subprocess.run(["apt-get", "download", pkg], cwd=work, capture_output=True, text=True)
        debs = sorted(work.glob(f"{pkg}_*.deb"))
        if proc.returncode != 0 or not debs:
            logger.warning("skipping %s: apt-get download failed: %s", pkg, proc.stderr.strip()[-300:])
            continue
        root = work / f"unpacked_{pkg}"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
        roots[pkg] = root
    return roots


def downscale(image: np.ndarray, max_short_side: int) -> np.ndarray:
    """Area-downscale so that the shorter side is `max_short_side` (never upscales)."""
    f = max_short_side / min(image.shape[:2])
    if f >= 1:
        return image
    return cv2.resize(image, (round(image.shape[1] * f), round(image.shape[0] * f)), interpolation=cv2.INTER_AREA)


def gather(out_dir: str | os.PathLike, packages: Iterable[str] = DEBIAN_PACKAGES, min_side: int = 240,
           include_skimage: bool = True, extra: Optional[dict[str, str | os.PathLike]] = None,
           max_short_side: Optional[int] = 720) -> dict[str, int]:
    """Collect the photos of `packages` (and scikit-image's, and `extra` {source name: folder}) into
    OUT_DIR/<source>/<sha1[:16]><suffix>, with OUT_DIR/manifest.csv (source, original path, sha1 of the
    original file, original width, height) and OUT_DIR/licences/<source>.copyright. Photos whose shorter
    side exceeds `max_short_side` are stored area-downscaled to it as JPEG (quality 95): training crops
    are taken at a shorter side of ~480, and decoding 4K wallpapers would starve the data loader.
    The folder is built beside OUT_DIR and renamed at the end, so an interrupted run leaves no
    half-filled OUT_DIR. Returns {source: count}."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists: remove it or choose another output folder")
    for name, folder in (extra or {}).items():
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"photo source {name!r}: {folder} is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".partial-", dir=out_dir.parent))
    counts: dict[str, int] = {}
    seen: set[str] = set()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="localfeat-debs-") as tmp:
            sources = {pkg: root for pkg, root in _download_and_unpack(packages, Path(tmp)).items()}
            if include_skimage:
                from .photos import bundled_photo_dir

                sources["scikit-image"] = bundled_photo_dir()
            sources.update({k: Path(v) for k, v in (extra or {}).items()})
            for source, root in sources.items():
                (staging / "licences").mkdir(exist_ok=True)
                for cp in sorted(root.rglob("copyright"))[:1]:
                    shutil.copyfile(cp, staging / "licences" / f"{source}.copyright")
                for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
                    data = path.read_bytes()
                    digest = hashlib.sha1(data).hexdigest()
                    if digest in seen:
                        continue
                    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                    if not is_photo(image, min_side):
                        continue
                    seen.add(digest)
                    suffix = path.suffix.lower()
                    height, width = image.shape[:2]
                    if max_short_side and min(image.shape[:2]) > max_short_side:
                        image = downscale(image, max_short_side)
                        data, suffix = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(), ".jpg"
                    dest = staging / source / f"{digest[:16]}{suffix}"
                    dest.parent.mkdir(exist_ok=True)
                    dest.write_bytes(data)
                    rows.append([source, str(path.relative_to(root)), digest, width, height])
                    counts[source] = counts.get(source, 0) + 1
        with open(staging / "manifest.csv", "w", newline="") as f:
            csv.writer(f).writerows([["source", "path", "sha1", "width", "height"], *rows])
        os.chmod(staging, 0o777 & ~current_umask())
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Gather licence-clean real training photos from Debian packages "
                                            "and scikit-image (see the module docstring for the licences).")
    p.add_argument("-o", "--output", required=True, help="output folder (must not exist)")
    p.add_argument("--min-side", type=int, default=240, help="minimum shorter side in pixels (default 240)")
    p.add_argument("--max-short-side", type=int, default=720,
                   help="store larger photos downscaled to this shorter side (default 720; 0 = keep)")
    p.add_argument("--packages", nargs="*", default=list(DEBIAN_PACKAGES), help="Debian packages to read")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    counts = gather(args.output, args.packages, args.min_side, max_short_side=args.max_short_side or None)
    for source, n in counts.items():
        print(f"{source:32s} {n:5d}")
    print(f"{'total':32s} {sum(counts.values()):5d} photos in {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
