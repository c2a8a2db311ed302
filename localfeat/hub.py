"""Weights: where official files are looked for, downloaded, verified. No model's table lives here.

A model is one file, and that file declares its weights (the pattern every model follows; the
worked example is docs/adding_a_model.md):

    # localfeat/extractors/mymodel.py
    from .. import hub
    from ..checkpoints import load_weights

    WEIGHTS = {   # config value that selects the file (variant, arch, ...) -> the official file
        "v1": hub.WeightSpec("mymodel-v1.pth", urls=("https://.../mymodel-v1.pth",),
                             sha256="<64 hex digits of the released file>", licence="MIT"),
    }

    class MyModel(Extractor):
        name = "mymodel"
        default_conf = {"variant": "v1", "weights": None, "max_keypoints": None}

        @classmethod
        def weight_specs(cls, conf):          # what `localfeat models` lists and checks
            return [WEIGHTS[conf.get("variant", "v1")]]

        def __init__(self, **conf):
            super().__init__(**conf)
            self.check_choice("variant", WEIGHTS)
            self.net = MyNet()
            self.weights_path = load_weights(self.net, WEIGHTS[self.conf["variant"]], self.conf["weights"],
                                             model="mymodel")
            self.net.to(self.device)

- `sha256` is the digest of the released file, pinned only when it was established on the file
  itself (else None: the file is then used with a warning that says it is unverified).
- `load_weights` (localfeat.checkpoints) is the one loading path: lookup here, then a strict load;
  renamed or extra keys of an official file are handled by an explicit `convert` function, never
  by `strict=False`.
- An extractor that has trained LightGlue weights declares them as a class attribute
  ``lightglue = {"weights": WeightSpec(...), "input_dim": D}``; the `lightglue` matcher reads its
  per-feature table from there (`features=<extractor name>`).

Lookup order for a file name: the directories in the environment variable ``LOCALFEAT_WEIGHTS``
(``os.pathsep``-separated), then the user cache (``LOCALFEAT_CACHE`` or
``~/.cache/localfeat/weights``), then a download from the spec's URLs. A file found or downloaded
is checked against the pinned sha256 (`WeightsHashError` names the file, the expected and the
actual digest). A config key ``weights=PATH`` bypasses lookup and hash (any compatible file).
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .io.atomic import publish

logger = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
    """The weights file is neither present locally nor downloadable."""


class WeightsHashError(ValueError):
    """A weights file whose sha256 differs from the pinned digest of the official release."""


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
    """Hex sha256 of the file `path` (read in chunks of `chunk` bytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# (resolved path, size, mtime_ns) -> sha256: a file is hashed once per process unless it changes.
_DIGESTS: dict = {}
_UNPINNED_WARNED: set = set()


def verify(spec: WeightSpec, path: str | os.PathLike) -> None:
    """Check the file `path` against `spec.sha256`.

    Raises `WeightsHashError` naming the file, the expected and the actual digest when they differ
    (a tampered, truncated or different file). When the spec has no pinned digest, logs a warning
    (once per file name and process) that the file is used unverified.
    """
    path = Path(path)
    if spec.sha256 is None:
        if spec.filename not in _UNPINNED_WARNED:
            _UNPINNED_WARNED.add(spec.filename)
            logger.warning("%s: no sha256 is pinned for this official file (not established), so %s is used "
                           "UNVERIFIED", spec.filename, path)
        return
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    got = _DIGESTS[key]
    if got != spec.sha256:
        raise WeightsHashError(
            f"{path}: sha256 {got} does not match the official {spec.filename} (expected {spec.sha256}); "
            "the file is damaged, truncated or a different file: delete it and download it again from "
            f"{' or '.join(spec.urls) or 'its release'}, or pass weights=PATH to use it anyway")


def locate(spec: WeightSpec) -> Optional[Path]:
    """The first local copy of `spec.filename` in `search_dirs()`, or None."""
    for d in search_dirs():
        candidate = d / spec.filename
        if candidate.is_file():
            return candidate
    return None


def status(spec: WeightSpec) -> str:
    """One line for listings: where the file is (or that it is missing), its licence, whether its hash is pinned."""
    path = locate(spec)
    where = f"found: {path}" if path else f"missing: {spec.filename}"
    pinned = "sha256 pinned" if spec.sha256 else "sha256 NOT pinned"
    nc = ", non-commercial" if spec.non_commercial else ""
    return f"{where} (licence {spec.licence}{nc}; {pinned})"


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
    publish(part, dest)


def find_weights(spec: WeightSpec, override: Optional[str | os.PathLike] = None,
                 download: bool = True) -> Path:
    """Path of the weights file for `spec` (see module docstring for the lookup order).

    A file found locally is checked against `spec.sha256` (`verify`); a download is checked before it
    lands. `override` is returned as is (no hash: any compatible file may be passed).
    Raises `WeightsNotFoundError` naming the file, its URL(s) and where to put it, and
    `WeightsHashError` when a local file differs from the pinned digest.
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
    verify(spec, path)
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

