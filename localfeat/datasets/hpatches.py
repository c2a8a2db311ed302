"""HPatches sequences: reader of the official release layout, the D2-Net exclusion list, a download helper.

Layout (hpatches-sequences-release): ``ROOT/<seq>/1.ppm .. 6.ppm`` and ``ROOT/<seq>/H_1_2 .. H_1_6``,
where ``H_1_k`` (3x3 text) maps image-1 pixels to image-k pixels. Sequences starting with
``i_`` change illumination (H = identity), ``v_`` change viewpoint.

The D2-Net protocol drops the 8 sequences whose images exceed 1600x1200 (`D2NET_EXCLUDED`),
leaving 52 illumination + 56 viewpoint sequences = 540 pairs (1, k), k = 2..6.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

D2NET_EXCLUDED = ("i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
                  "v_artisans", "v_astronautis", "v_talent")

HPATCHES_URL = "http://icvl.ee.ic.ac.uk/vbalnt/hpatches/hpatches-sequences-release.tar.gz"
HPATCHES_ARCHIVE = "hpatches-sequences-release.tar.gz"
# The release publishes no checksum; `download_hpatches` checks the archive's integrity and the
# extracted layout (116 sequences x (6 images + 5 homographies)) instead, and a sha256 when given.
HPATCHES_SHA256: Optional[str] = None
N_SEQUENCES_FULL = 116
IMAGE_IDS = (1, 2, 3, 4, 5, 6)


class DatasetError(FileNotFoundError):
    """The dataset folder is missing or not laid out as expected; the message says what to do."""


def missing_dataset_message(root) -> str:
    return (f"no HPatches sequences in {root}. Download {HPATCHES_URL} (about 1.3 GB; "
            f"`localfeat.datasets.hpatches.download_hpatches(DIR)` does it, resumable), extract it, and pass "
            f"the folder holding i_*/ and v_*/ (hpatches-sequences-release/) as --root; or build a synthetic "
            f"set with `localfeat hpatches synth -o DIR`.")


def read_homography(path) -> np.ndarray:
    """A 3x3 homography from an HPatches text file (np.loadtxt, float64)."""
    H = np.loadtxt(path, dtype=np.float64)
    if H.shape != (3, 3):
        raise ValueError(f"{path}: expected a 3x3 matrix, got shape {H.shape}")
    return H


def read_image_size(path) -> tuple[int, int]:
    """(W, H) of an image file; reads only the header of binary PPM/PGM files."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:2] in (b"P6", b"P5"):
        tokens, i, buf = [], 2, head
        while len(tokens) < 2:
            while i < len(buf) and buf[i:i + 1].isspace():
                i += 1
            if buf[i:i + 1] == b"#":
                while i < len(buf) and buf[i:i + 1] not in (b"\n", b"\r"):
                    i += 1
                continue
            j = i
            while j < len(buf) and not buf[j:j + 1].isspace():
                j += 1
            tokens.append(int(buf[i:j]))
            i = j
        return tokens[0], tokens[1]
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: cannot read the image")
    return img.shape[1], img.shape[0]


@dataclass(frozen=True)
class Pair:
    """One evaluation pair: image 1 and image k of `sequence`."""

    sequence: str
    k: int

    @property
    def kind(self) -> str:
        return self.sequence[0]

    @property
    def key(self) -> str:
        return f"{self.sequence}/{self.k}"


class HPatchesSequences:
    """The sequences found below `root`, sorted by name, minus `exclude`.

    root:      folder holding <seq>/1.ppm..6.ppm and <seq>/H_1_2..H_1_6.
    exclude:   sequence names to drop; default the D2-Net list (`D2NET_EXCLUDED`); () keeps all.
    sequences: optional explicit list of names to keep (after exclusion).
    extension: image file extension ('ppm' in the release).
    """

    def __init__(self, root, exclude: Optional[Iterable[str]] = D2NET_EXCLUDED,
                 sequences: Optional[Sequence[str]] = None, extension: str = "ppm"):
        self.root = Path(root)
        self.extension = extension.lstrip(".")
        if not self.root.is_dir():
            raise DatasetError(missing_dataset_message(self.root))
        found = sorted(p.name for p in self.root.iterdir()
                       if p.is_dir() and p.name[:2] in ("i_", "v_") and (p / f"1.{self.extension}").exists())
        if not found:
            raise DatasetError(missing_dataset_message(self.root))
        self.excluded = sorted(set(exclude or ()) & set(found))
        names = [s for s in found if s not in set(exclude or ())]
        if sequences is not None:
            unknown = sorted(set(sequences) - set(found))
            if unknown:
                raise DatasetError(f"sequence(s) {unknown} not found in {self.root}")
            names = [s for s in names if s in set(sequences)]
        self.sequences: list[str] = names
        for seq in self.sequences:
            for k in IMAGE_IDS:
                if not self.image_path(seq, k).exists():
                    raise DatasetError(f"{self.image_path(seq, k)} is missing: the sequence {seq} is incomplete")
            for k in IMAGE_IDS[1:]:
                if not self.homography_path(seq, k).exists():
                    raise DatasetError(f"{self.homography_path(seq, k)} is missing: the sequence {seq} is incomplete")
        if self.excluded:
            logger.info("HPatches: excluding %d sequence(s) as in the D2-Net protocol: %s",
                        len(self.excluded), ", ".join(self.excluded))

    # ------------------------------------------------------------------ layout
    def image_name(self, sequence: str, k: int) -> str:
        """Name of image k of `sequence` relative to root: '<seq>/<k>.ppm' (FeatureStore key)."""
        return f"{sequence}/{k}.{self.extension}"

    def image_path(self, sequence: str, k: int) -> Path:
        return self.root / self.image_name(sequence, k)

    def homography_path(self, sequence: str, k: int) -> Path:
        return self.root / sequence / f"H_1_{k}"

    def homography(self, sequence: str, k: int) -> np.ndarray:
        """H_1_k (3, 3) float64: image-1 pixels -> image-k pixels (identity for k = 1)."""
        if k == 1:
            return np.eye(3)
        return read_homography(self.homography_path(sequence, k))

    def image_size(self, sequence: str, k: int) -> tuple[int, int]:
        """(W, H) of image k."""
        return read_image_size(self.image_path(sequence, k))

    def pairs(self) -> list[Pair]:
        """(seq, k) for every sequence and k = 2..6, sequences sorted by name."""
        return [Pair(s, k) for s in self.sequences for k in IMAGE_IDS[1:]]

    def image_names(self) -> list[str]:
        return [self.image_name(s, k) for s in self.sequences for k in IMAGE_IDS]

    @property
    def counts(self) -> dict:
        """Number of sequences per kind: {'i': n_i, 'v': n_v}."""
        return {"i": sum(s.startswith("i_") for s in self.sequences),
                "v": sum(s.startswith("v_") for s in self.sequences)}

    # ------------------------------------------------------------------ identity
    def file_digest(self, path: Path) -> str:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest()

    def image_digests(self) -> dict:
        """{image name: content digest} of every image of the selected sequences."""
        return {name: self.file_digest(self.root / name) for name in self.image_names()}

    def fingerprint(self) -> str:
        """A digest of the selected sequences: names and the CONTENT of every image and homography.

        Changing one pixel of one image, one homography entry, or the sequence selection gives
        another fingerprint, so results cached under it can never be stale.
        """
        digest = hashlib.sha256()
        for seq in self.sequences:
            for k in IMAGE_IDS:
                digest.update(f"{seq}/{k}:".encode())
                digest.update(self.file_digest(self.image_path(seq, k)).encode())
                if k > 1:
                    digest.update(self.file_digest(self.homography_path(seq, k)).encode())
        return digest.hexdigest()[:16]


def download_hpatches(dest, url: str = HPATCHES_URL, sha256: Optional[str] = HPATCHES_SHA256,
                      extract: bool = True) -> Path:
    """Download (resumable) and extract the HPatches sequences into `dest`; returns the sequences folder.

    The archive is kept as ``dest/hpatches-sequences-release.tar.gz`` (an interrupted download
    resumes from ``.part``). Offline, the error names the URL and where to put the archive.
    """
    from ..hub import download_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / HPATCHES_ARCHIVE
    if not archive.exists():
        try:
            download_file(url, archive, sha256)
        except Exception as exc:  # network errors come in many types; say what to do instead
            raise DatasetError(
                f"cannot download {url} ({exc}). Download it by other means and put it at {archive} "
                f"(or extract it yourself and pass the hpatches-sequences-release/ folder as --root)") from exc
    elif sha256:
        from ..hub import sha256_file

        got = sha256_file(archive)
        if got != sha256:
            raise DatasetError(f"{archive} has sha256 {got}, expected {sha256}: delete it and download again")
    out = dest / "hpatches-sequences-release"
    if extract and not out.is_dir():
        tmp = dest / ".extracting"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = [m for m in tar.getmembers()
                           if not (m.name.startswith("/") or ".." in Path(m.name).parts) and (m.isfile() or m.isdir())]
                tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetError(f"{archive} is corrupt or incomplete ({exc}): delete it and download again") from exc
        inner = next((p for p in tmp.rglob("v_*") if p.is_dir()), None)
        if inner is None:
            raise DatasetError(f"{archive} holds no v_* sequence folders: is it the HPatches sequences release?")
        os.replace(inner.parent, out)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    data = HPatchesSequences(out, exclude=())
    if len(data.sequences) != N_SEQUENCES_FULL:
        logger.warning("%s holds %d sequences; the release has %d", out, len(data.sequences), N_SEQUENCES_FULL)
    return out
