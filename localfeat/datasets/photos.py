"""The photos bundled with scikit-image: offline demo data and the source of synthetic sets."""
from __future__ import annotations

from pathlib import Path


def bundled_photo_dir() -> Path:
    """Folder of the photos bundled with scikit-image (< 0.26)."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    if not (folder / "astronaut.png").exists():
        raise FileNotFoundError(
            f"scikit-image's bundled photos are not in {folder}; install scikit-image<0.26 "
            "(later releases download them on demand)")
    return folder
