"""Where the features of an evaluated method come from: a registered extractor (extracted once, kept in a
FeatureStore beside per-image content digests), a FeatureStore, a folder of per-image npz files, or a
Python callable. Each source has a config hash covering everything its features depend on."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from tqdm import tqdm

from ..datasets.hpatches import HPatchesSequences
from ..io.atomic import write_text_atomic
from ..registry import conf_hash, get_class, load_extractor, merge_conf, parse_model_spec
from ..types import Features
from .cache import digest_files, safe_name


class FeatureSource:
    """Where the features of a method come from. Subclasses set `label`, `method`, `config`."""

    label: str = ""
    method: str = ""
    kind: str = ""

    def config(self) -> dict:
        raise NotImplementedError

    def config_hash(self, dataset: HPatchesSequences) -> str:
        raise NotImplementedError

    def check(self) -> None:
        """Raise now if this source cannot produce features (e.g. missing weights)."""

    def prepare(self, dataset: HPatchesSequences, names: Sequence[str], work_dir: Path) -> None:
        """Make features of `names` available (extract what is missing)."""

    def get(self, dataset: HPatchesSequences, name: str) -> Features:
        raise NotImplementedError


class ExtractorSource(FeatureSource):
    """Features of a registered extractor, given as a SPEC ('NAME' or 'NAME:key=value,...').

    Extracted features are kept in ``<work_dir>/features/<name>-<config hash>.h5`` with the content
    digest of each image beside it; an image whose content changed is extracted again.
    `max_size` sets the extractor's `resize_max` unless the spec sets it. `engine` "ray" extracts on a Ray
    cluster (`localfeat.engines.ray`, options in `engine_options`): the same features, so the same results.
    """

    kind = "extractor"

    def __init__(self, spec: str, max_size: Optional[int] = None, conf: Optional[dict] = None,
                 engine: str = "local", engine_options=None):
        from ..engines import check_engine

        check_engine(engine)
        self.engine, self.engine_options = engine, engine_options
        name, spec_conf = parse_model_spec(spec)
        spec_conf.update(conf or {})
        if max_size is not None and "resize_max" not in spec_conf:
            spec_conf["resize_max"] = int(max_size)
        self.method = name
        self.label = spec
        cls = get_class("extractor", name)
        self._conf = dict(spec_conf)
        # Resolve the full config now (strict: a bad key fails before any work).
        self._full_conf = merge_conf(cls.all_defaults(), spec_conf, where=f"model {name!r}")
        self._full_conf.pop("device", None)  # where it runs does not change the result
        self._extractor = None
        self._store = None

    def config(self) -> dict:
        return dict(self._full_conf)

    def config_hash(self, dataset) -> str:
        return conf_hash(self.method, self._full_conf)

    def check(self) -> None:
        """Load the extractor (finds or downloads its weights; the error names the file and URL)."""
        _ = self.extractor

    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor = load_extractor(self.method, **self._conf)
        return self._extractor

    def prepare(self, dataset, names, work_dir: Path) -> None:
        from ..io.h5 import FeatureStore

        ext = self.extractor
        path = Path(work_dir) / "features" / f"{safe_name(self.method)}-{ext.conf_hash}.h5"
        digests_path = path.with_name(path.name + ".digests.json")
        digests = json.loads(digests_path.read_text()) if digests_path.exists() else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        todo = []
        with FeatureStore(path, mode="a", model=ext.name, conf=ext.conf, conf_hash=ext.conf_hash) as store:
            for name in names:
                digest = dataset.file_digest(dataset.root / name)
                if name not in store or digests.get(name) != digest:
                    todo.append((name, digest))
        if self.engine != "local" and todo:
            self._prepare_on_engine(dataset, todo, path, digests, digests_path)
            return
        with FeatureStore(path, mode="a", model=ext.name, conf=ext.conf, conf_hash=ext.conf_hash) as store:
            for i, (name, digest) in enumerate(tqdm(todo, desc=f"extract {self.label}", unit="img",
                                                     disable=None)):
                store.put(name, ext.extract(str(dataset.root / name)))
                digests[name] = digest
                if i % 16 == 15:  # journal the features first, then record their digests
                    store.flush()
                    write_text_atomic(digests_path, json.dumps(digests, indent=0, sort_keys=True))
        write_text_atomic(digests_path, json.dumps(digests, indent=0, sort_keys=True))
        self._store = FeatureStore(path, mode="r")

    def _prepare_on_engine(self, dataset, todo, path: Path, digests: dict, digests_path: Path) -> None:
        """`prepare` on the Ray engine: the images `todo` ((name, digest)) extracted into `path`."""
        from ..engines import ray
        from ..io.h5 import FeatureStore
        from ..io.images import ImageReadError

        report = ray.extract([(name, dataset.root / name) for name, _ in todo], path, extractor=self.extractor,
                             options=self.engine_options, recompute=True)
        if report.failed:
            raise ImageReadError(f"{self.label}: cannot extract {len(report.failed)} HPatches image(s): "
                                 + "; ".join(f"{n}: {m}" for n, m in report.failed[:3]))
        digests.update(dict(todo))
        write_text_atomic(digests_path, json.dumps(digests, indent=0, sort_keys=True))
        self._store = FeatureStore(path, mode="r")

    def get(self, dataset, name: str) -> Features:
        return self._store.get(name)


class StoreSource(FeatureSource):
    """Features computed elsewhere, in a FeatureStore whose image names are '<seq>/<k>.ppm'."""

    kind = "features"

    def __init__(self, path, label: Optional[str] = None):
        from ..io.h5 import FeatureStore

        self.path = Path(path)
        self.store = FeatureStore(self.path, mode="r")
        self.label = label or self.path.stem
        self.method = self.label

    def config(self) -> dict:
        return {"features": str(self.path), "format": "featurestore"}

    def config_hash(self, dataset) -> str:
        files = [self.path] if self.path.exists() else []
        files += sorted(self.store.journal_dir.glob("*.h5"))  # entries not yet merged into the main file
        return digest_files(files)

    def prepare(self, dataset, names, work_dir) -> None:
        missing = [n for n in names if n not in self.store]
        if missing:
            raise FileNotFoundError(f"{self.path} has no features for {len(missing)} image(s), e.g. {missing[:3]}; "
                                    "image names must be '<seq>/<k>.ppm' relative to the dataset root")

    def get(self, dataset, name: str) -> Features:
        return self.store.get(name)


class NpzSource(FeatureSource):
    """Features computed elsewhere, as D2-Net-style per-image npz files '<folder>/<seq>/<k>.ppm.<ext>'
    (keys keypoints (N, 2+), descriptors (N, D), scores (N,)), e.g. R2D2's or D2-Net's outputs."""

    kind = "features"

    def __init__(self, folder, ext: str, label: Optional[str] = None):
        self.folder = Path(folder)
        self.ext = ext.lstrip(".")
        if not self.folder.is_dir():
            raise FileNotFoundError(f"--features {self.folder}: no such folder")
        self.label = label or self.ext
        self.method = self.label

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.{self.ext}"

    def config(self) -> dict:
        return {"features": str(self.folder), "ext": self.ext, "format": "npz"}

    def config_hash(self, dataset) -> str:
        names = tuple(dataset.image_names())
        stamp = tuple((self.path(n).stat().st_mtime_ns, self.path(n).stat().st_size) if self.path(n).exists()
                      else None for n in names)
        if getattr(self, "_hash_memo", (None,))[0] != (names, stamp):  # hash once per state of the files
            self._hash_memo = ((names, stamp), digest_files([self.path(n) for n in names]))
        return self._hash_memo[1]

    def prepare(self, dataset, names, work_dir) -> None:
        missing = [str(self.path(n)) for n in names if not self.path(n).exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} feature file(s) missing, e.g. {missing[:3]} "
                                    f"(expected <folder>/<seq>/<k>.ppm.{self.ext})")

    def get(self, dataset, name: str) -> Features:
        from ..io.npz import read_npz

        seq, k = name.split("/")
        return read_npz(self.path(name), image_size=dataset.image_size(seq, int(k.split(".")[0])))


class CallableSource(FeatureSource):
    """Features from a Python function `get(name) -> Features` (tests, benchmarks, notebooks).

    `config` must describe everything the features depend on: it is hashed into the cache key.
    """

    kind = "callable"

    def __init__(self, label: str, get: Callable[[str], Features], config: dict):
        self.label = self.method = label
        self._get, self._config = get, dict(config)

    def config(self) -> dict:
        return dict(self._config)

    def config_hash(self, dataset) -> str:
        return conf_hash(self.label, self._config)

    def get(self, dataset, name: str) -> Features:
        return self._get(name)
