"""Weights: where official files are looked for, downloaded, checked and loaded.

Lookup order for a file name: the directories in the environment variable
``LOCALFEAT_WEIGHTS`` (``os.pathsep``-separated), then the user cache
(``LOCALFEAT_CACHE`` or ``~/.cache/localfeat/weights``), then a download from the
spec's URLs with a sha256 check. A config key ``weights=PATH`` bypasses all of it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

logger = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
    """The weights file is neither present locally nor downloadable."""


class CheckpointError(ValueError):
    """A weights file that cannot be read, or whose contents do not fit the model (wrong file or variant)."""


@dataclass(frozen=True)
class WeightSpec:
    """An official weights file.

    filename:  the official file name (what users have on disk).
    urls:      where the release publishes it, tried in order.
    sha256:    hex digest of the released file, or None where unpublished/unknown.
    licence:   licence of the weights.
    non_commercial: True when the licence forbids commercial use (never packaged; a notice on first load).
    """

    filename: str
    urls: Sequence[str] = field(default_factory=tuple)
    sha256: Optional[str] = None
    licence: str = "unknown"
    non_commercial: bool = False


def cache_dir() -> Path:
    root = os.environ.get("LOCALFEAT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "localfeat" / "weights"


def search_dirs() -> list[Path]:
    """Directories searched for weights, in order."""
    dirs = [Path(p) for p in os.environ.get("LOCALFEAT_WEIGHTS", "").split(os.pathsep) if p.strip()]
    return dirs + [cache_dir()]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def locate(spec: WeightSpec) -> Optional[Path]:
    """The first local copy of `spec.filename` in `search_dirs()`, or None."""
    for d in search_dirs():
        candidate = d / spec.filename
        if candidate.is_file():
            return candidate
    return None


def status(spec: WeightSpec) -> str:
    path = locate(spec)
    return f"found: {path}" if path else f"missing: {spec.filename}"


_NOTICED: set = set()


def notice_licence(spec: WeightSpec) -> None:
    """Log the licence of non-commercial weights once per process."""
    if spec.non_commercial and spec.filename not in _NOTICED:
        _NOTICED.add(spec.filename)
        logger.warning("%s is licensed %s: NON-COMMERCIAL use only; localfeat never packages it.",
                       spec.filename, spec.licence)


def download_file(url: str, dest: Path, expected_sha256: Optional[str]) -> None:
    """Download `url` to `dest`, resuming a previous partial download, then check the hash."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if start and getattr(response, "status", None) != 206:  # range ignored: start over
            start = 0
        length = response.headers.get("Content-Length")
        total = int(length) + start if length else None
        with open(part, "ab" if start else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=dest.name,
                disable=None) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                bar.update(len(block))
    if expected_sha256:
        got = sha256_file(part)
        if got != expected_sha256:
            part.unlink()
            raise WeightsNotFoundError(
                f"downloaded {dest.name} from {url} has sha256 {got}, expected {expected_sha256}; "
                "the partial file was removed, try again")
    os.replace(part, dest)


def find_weights(spec: WeightSpec, override: Optional[str | os.PathLike] = None,
                 download: bool = True) -> Path:
    """Path of the weights file for `spec` (see module docstring for the lookup order).

    Raises `WeightsNotFoundError` naming the file, its URL(s) and where to put it.
    """
    if override is not None:
        path = Path(override).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights={override!s}: no such file")
        notice_licence(spec)
        return path
    path = locate(spec)
    errors: list[str] = []
    if path is None and download and spec.urls and os.environ.get("LOCALFEAT_OFFLINE") != "1":
        dest = cache_dir() / spec.filename
        for url in spec.urls:
            try:
                logger.info("downloading %s from %s", spec.filename, url)
                download_file(url, dest, spec.sha256)
                path = dest
                break
            except Exception as exc:  # network errors come in many types; report them all below
                errors.append(f"{url}: {exc}")
    if path is None:
        dirs = ", ".join(str(d) for d in search_dirs())
        urls = " or ".join(spec.urls) if spec.urls else "(no public URL known)"
        failures = f" Download attempts failed: {'; '.join(errors)}." if download and errors else ""
        raise WeightsNotFoundError(
            f"weights file {spec.filename!r} not found. Download it from {urls} and put it in one of: "
            f"{dirs} (set LOCALFEAT_WEIGHTS to add a directory), or pass weights=PATH.{failures}")
    notice_licence(spec)
    return path


def load_torch_checkpoint(path: str | os.PathLike, allowed_globals: Sequence = ()):
    """Load a torch checkpoint on the CPU with ``weights_only=True``.

    Legacy pickles that hold more than tensors and containers are read with
    `allowed_globals` (an explicit allow-list of classes/functions); nothing is ever `eval`-ed.
    """
    import torch

    path = Path(path)
    try:
        if allowed_globals:
            with torch.serialization.safe_globals(list(allowed_globals)):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc



# The weights table: every official file a registered model can load, by a short key.
# Each model adds its entries in a block of its own, above the end marker.
WEIGHTS: dict[str, WeightSpec] = {
    # --- LightGlue matcher (cvg/LightGlue release v0.1_arxiv; Apache-2.0). sha256: not published by the
    # release and the files were not available offline to hash. torch.hub caches them as
    # <name>_v0-1_arxiv.pth; localfeat.matchers.lightglue also looks for that name.
    "lightglue_superpoint": WeightSpec(
        "superpoint_lightglue.pth",
        ("https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/superpoint_lightglue.pth",),
        None, "Apache-2.0", False),
    "lightglue_disk": WeightSpec(
        "disk_lightglue.pth",
        ("https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/disk_lightglue.pth",),
        None, "Apache-2.0", False),
    "lightglue_aliked": WeightSpec(
        "aliked_lightglue.pth",
        ("https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/aliked_lightglue.pth",),
        None, "Apache-2.0", False),
    # --- DISK, SuperPoint, D2-Net extractors (issue 6). sha256: none is published by the releases and
    # the files are not available offline to hash, so None (the download is not hash-checked).
    # DISK: cvlab-epfl/disk repo root (Apache-2.0); the URLs kornia and LightGlue download from.
    "disk_depth": WeightSpec(
        "depth-save.pth",
        ("https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth",),
        None, "Apache-2.0", False),
    "disk_epipolar": WeightSpec(
        "epipolar-save.pth",
        ("https://raw.githubusercontent.com/cvlab-epfl/disk/master/epipolar-save.pth",),
        None, "Apache-2.0", False),
    # SuperPoint: Magic Leap academic/non-profit NON-COMMERCIAL licence; never packaged.
    "superpoint_v1": WeightSpec(
        "superpoint_v1.pth",
        ("https://github.com/magicleap/SuperPointPretrainedNetwork/raw/master/superpoint_v1.pth",
         "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/superpoint_v1.pth"),
        None, "Magic Leap SuperPoint licence (academic or non-profit non-commercial research use only)", True),
    # D2-Net: mihaidusmanu/d2-net README wget lines (Clear BSD).
    "d2net_tf": WeightSpec(
        "d2_tf.pth", ("https://dusmanu.com/files/d2-net/d2_tf.pth",), None, "Clear BSD", False),
    "d2net_tf_no_phototourism": WeightSpec(
        "d2_tf_no_phototourism.pth", ("https://dusmanu.com/files/d2-net/d2_tf_no_phototourism.pth",),
        None, "Clear BSD", False),
    # --- ALIKE (Shiaoming/ALIKE, models/ at commit 4e61fc7; BSD-3-Clause) and ALIKED (Shiaoming/ALIKED,
    # models/ at commit 683d7c6; BSD-3-Clause). sha256 computed on the official files. aliked-t16 and
    # aliked-n32 are not in that commit (no offline copy): URL as LightGlue's loader uses it, hash unknown.
    "alike-t": WeightSpec("alike-t.pth", ("https://github.com/Shiaoming/ALIKE/raw/main/models/alike-t.pth",),
                          "c0840329a6b88518d914b03af2be956f5607055a389ba17441db02bb94f7d12e", "BSD-3-Clause", False),
    "alike-s": WeightSpec("alike-s.pth", ("https://github.com/Shiaoming/ALIKE/raw/main/models/alike-s.pth",),
                          "a9c0789ff0a09f576cc24afe4924d3233471499d1ce3b0248d650c8794e99a94", "BSD-3-Clause", False),
    "alike-n": WeightSpec("alike-n.pth", ("https://github.com/Shiaoming/ALIKE/raw/main/models/alike-n.pth",),
                          "8bd4789272eec779be280f8fc1007608ff604241440a0a3377c1559199412ee3", "BSD-3-Clause", False),
    "alike-l": WeightSpec("alike-l.pth", ("https://github.com/Shiaoming/ALIKE/raw/main/models/alike-l.pth",),
                          "bed5fbbf352ab1c3e92e2241881f8b84edce949984fa23bc7f2517eab93938a0", "BSD-3-Clause", False),
    "aliked-t16": WeightSpec("aliked-t16.pth",
                             ("https://github.com/Shiaoming/ALIKED/raw/main/models/aliked-t16.pth",),
                             None, "BSD-3-Clause", False),
    "aliked-n16": WeightSpec("aliked-n16.pth",
                             ("https://github.com/Shiaoming/ALIKED/raw/main/models/aliked-n16.pth",),
                             "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2", "BSD-3-Clause", False),
    "aliked-n16rot": WeightSpec("aliked-n16rot.pth",
                                ("https://github.com/Shiaoming/ALIKED/raw/main/models/aliked-n16rot.pth",),
                                "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332", "BSD-3-Clause",
                                False),
    "aliked-n32": WeightSpec("aliked-n32.pth",
                             ("https://github.com/Shiaoming/ALIKED/raw/main/models/aliked-n32.pth",),
                             None, "BSD-3-Clause", False),
    # --- R2D2 / Fast-R2D2 (naver/r2d2, models/; CC BY-NC-SA 3.0: non-commercial, never packaged) ---
    # sha256 of the released files (faster2d2_WASF_N8_big: not available offline, so unknown).
    "r2d2_WAF_N16": WeightSpec(
        "r2d2_WAF_N16.pt",
        ("https://github.com/naver/r2d2/raw/0ff8f6afcbea91f19613d0cb7d93143a977830f5/models/r2d2_WAF_N16.pt",
         "https://github.com/naver/r2d2/raw/master/models/r2d2_WAF_N16.pt"),
        "27cebd6608317b35198a76f60f87492110dee3e88ca382586a729dadb1a16b90", "CC BY-NC-SA 3.0", non_commercial=True),
    "r2d2_WASF_N16": WeightSpec(
        "r2d2_WASF_N16.pt",
        ("https://github.com/naver/r2d2/raw/0ff8f6afcbea91f19613d0cb7d93143a977830f5/models/r2d2_WASF_N16.pt",
         "https://github.com/naver/r2d2/raw/master/models/r2d2_WASF_N16.pt"),
        "9ae90e02a9a133d100ca7aeaa32f4d4d7736a6dd222a530a25c8f7da5e508528", "CC BY-NC-SA 3.0", non_commercial=True),
    "r2d2_WASF_N8_big": WeightSpec(
        "r2d2_WASF_N8_big.pt",
        ("https://github.com/naver/r2d2/raw/0ff8f6afcbea91f19613d0cb7d93143a977830f5/models/r2d2_WASF_N8_big.pt",
         "https://github.com/naver/r2d2/raw/master/models/r2d2_WASF_N8_big.pt"),
        "597dc13998e211e827c550bdc8f76dbb4aca32747846f96962c9168586cec418", "CC BY-NC-SA 3.0", non_commercial=True),
    "faster2d2_WASF_N16": WeightSpec(
        "faster2d2_WASF_N16.pt",
        ("https://github.com/naver/r2d2/raw/0ff8f6afcbea91f19613d0cb7d93143a977830f5/models/faster2d2_WASF_N16.pt",
         "https://github.com/naver/r2d2/raw/master/models/faster2d2_WASF_N16.pt"),
        "217daa3a166bfe9bf2b68c05c1607a09dd4d552ae1bbeda885479d504eefc14b", "CC BY-NC-SA 3.0", non_commercial=True),
    "faster2d2_WASF_N8_big": WeightSpec(
        "faster2d2_WASF_N8_big.pt",
        ("https://github.com/naver/r2d2/raw/0ff8f6afcbea91f19613d0cb7d93143a977830f5/models/faster2d2_WASF_N8_big.pt",
         "https://github.com/naver/r2d2/raw/master/models/faster2d2_WASF_N8_big.pt"),
        None, "CC BY-NC-SA 3.0", non_commercial=True),
    # --- XFeat (verlab/accelerated_features, Apache-2.0) ---
    # The official release file. Its sha256 is not recorded: the file was not available offline (only its git
    # blob id 9da942e9c7406b8add3746bf98d4b1840233cd92 is known), so a download is not hash-checked.
    "xfeat": WeightSpec(
        filename="xfeat.pt",
        urls=("https://github.com/verlab/accelerated_features/raw/main/weights/xfeat.pt",),
        sha256=None, licence="Apache-2.0", non_commercial=False),
    # The same weights recovered from the official ONNX export (PR #38, commit c58e74f), BatchNorm folded and
    # without fine_matcher.*; not published as a file, accepted by the xfeat extractor when xfeat.pt is absent.
    "xfeat_from_onnx": WeightSpec(
        filename="xfeat_from_onnx.pt", urls=(),
        sha256="cbdf1b1715d450f25cf337a19ed2cccc4983c6be36ea93e3573e9d99f1a5b421",
        licence="Apache-2.0", non_commercial=False),
    # --- Key.Net detector, patch descriptors and shape estimators (issue 10) ---
    # Key.Net: axelBarroso/Key.Net-Pytorch model/weights/ at commit 74fe0a7 (MIT); sha256 of the official file.
    "keynet": WeightSpec(
        "keynet_pytorch.pth",
        ("https://github.com/axelBarroso/Key.Net-Pytorch/raw/74fe0a75998445bb47b74b642b764543b25dc90a/model/weights/keynet_pytorch.pth",
         "https://github.com/axelBarroso/Key.Net-Pytorch/raw/main/model/weights/keynet_pytorch.pth"),
        "59d3a46d57b439513acf531877fdfaa95eb550ccd10ec462e23d7c1f7a86d52a", "MIT", False),
    # TFeat: vbalnt/tfeat pretrained-models/ at commit 9434ffa (MIT); sha256 of the official file.
    "tfeat_liberty": WeightSpec(
        "tfeat-liberty.params",
        ("https://github.com/vbalnt/tfeat/raw/9434ffaade966efee9ee89304f59b6c224d3b039/pretrained-models/tfeat-liberty.params",
         "https://github.com/vbalnt/tfeat/raw/master/pretrained-models/tfeat-liberty.params"),
        "1f2e9516b03c45876161da006ce8047e0a66ef08cc91d3fbf96a75f1a80f445a", "MIT", False),
    # HardNet (DagnyT/hardnet, MIT), SOSNet (scape-research/SOSNet, formerly yuruntian/SOSNet; no licence file
    # seen), AffNet / OriNet (ducha-aiki/affnet, MIT): the URLs kornia downloads from. No sha256 is published and
    # the files were not available offline to hash, so None (downloads are not hash-checked).
    "hardnet_liberty_aug": WeightSpec(
        "checkpoint_liberty_with_aug.pth",
        ("https://github.com/DagnyT/hardnet/raw/master/pretrained/train_liberty_with_aug/checkpoint_liberty_with_aug.pth",),
        None, "MIT", False),
    "sosnet_32x32_liberty": WeightSpec(
        "sosnet-32x32-liberty.pth",
        ("https://github.com/scape-research/SOSNet/raw/master/sosnet-weights/sosnet-32x32-liberty.pth",
         "https://github.com/yuruntian/SOSNet/raw/master/sosnet-weights/sosnet-32x32-liberty.pth"),
        None, "unknown (no licence file in the repository)", False),
    "affnet": WeightSpec(
        "AffNet.pth", ("https://github.com/ducha-aiki/affnet/raw/master/pretrained/AffNet.pth",), None, "MIT", False),
    "orinet": WeightSpec(
        "OriNet.pth", ("https://github.com/ducha-aiki/affnet/raw/master/pretrained/OriNet.pth",), None, "MIT", False),
    # --- torchvision ImageNet ResNets (BSD-3-Clause code; ImageNet-trained), loaded unchanged by the DeLF
    # backbone (localfeat.extractors._resnet) with backbone_weights='imagenet'. The file names carry the first
    # 8 hex digits of their sha256 (torchvision's check_hash convention); the full digests were not available
    # offline, so None. DeLF itself released TF-slim checkpoints only (no PyTorch file to list).
    "torchvision_resnet18": WeightSpec(
        "resnet18-f37072fd.pth", ("https://download.pytorch.org/models/resnet18-f37072fd.pth",), None, "BSD-3-Clause"),
    "torchvision_resnet34": WeightSpec(
        "resnet34-b627a593.pth", ("https://download.pytorch.org/models/resnet34-b627a593.pth",), None, "BSD-3-Clause"),
    "torchvision_resnet50": WeightSpec(
        "resnet50-0676ba61.pth", ("https://download.pytorch.org/models/resnet50-0676ba61.pth",), None, "BSD-3-Clause"),
    "torchvision_resnet50_v2": WeightSpec(
        "resnet50-11ad3fa6.pth", ("https://download.pytorch.org/models/resnet50-11ad3fa6.pth",), None, "BSD-3-Clause"),
    "torchvision_resnet101": WeightSpec(
        "resnet101-63fe2227.pth", ("https://download.pytorch.org/models/resnet101-63fe2227.pth",), None,
        "BSD-3-Clause"),
    "torchvision_resnet152": WeightSpec(
        "resnet152-394f9c45.pth", ("https://download.pytorch.org/models/resnet152-394f9c45.pth",), None,
        "BSD-3-Clause"),
    # --- end of weights table ---
}


def weight_spec(key: str) -> WeightSpec:
    """The `WeightSpec` registered under `key` (e.g. 'r2d2_WASF_N16'); a clear error otherwise."""
    if key not in WEIGHTS:
        raise KeyError(f"no weights named {key!r}; known: {sorted(WEIGHTS)}")
    return WEIGHTS[key]
