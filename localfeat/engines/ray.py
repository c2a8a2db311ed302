"""The Ray engine: `extract` and `match` cut into shards run by Ray actors, merged into one store.

    localfeat.extract("photos/", "features.h5", model="sift", engine="ray",
                      engine_options={"address": "head-node:6379"})
    localfeat extract photos/ -o features.h5 --engine ray --ray-address head-node:6379

How a run goes (docs/scale.md):
- The work (images, or pairs) is cut into shards of `shard_images` / `shard_pairs` consecutive items of
  the full list. A shard's identity is a hash of its items and of everything its result depends on
  (model and config hash, layout; for pairs the matcher, its config and the features' identity).
- Actors (`ShardWorker`, `num_cpus` / `num_gpus` each) load the model once and run shards with the loops
  of the local engine (`engines.local.extract_into`, `match_into`). Each shard is written as its own
  complete store ``<shard_dir>/<id>.h5`` (the crash-safe writers of `localfeat.io.h5`, then published by
  an atomic rename) and a record ``<id>.json`` (written last, atomically) of what it computed and which
  inputs failed. A shard is complete when its record exists.
- The driver merges complete shards into the output store in shard order, entry by entry (raw arrays,
  `_H5Store.copy_entry`), so the output holds the same arrays in the same order as the local engine's,
  and the driver holds at most one store buffer of features, never the collection.
- Faults: a worker process that dies (SIGKILL, a lost node) is restarted by Ray (`max_restarts=-1`,
  the model is loaded again) and its shard is resubmitted whole (up to `max_retries` times per shard):
  partial shard files are temporary files that never count. A killed driver leaves the output store
  readable with whole entries and the shard files of finished shards; rerunning the same command
  merges those without computing them again and computes the rest. The shard folder is removed when a
  run completes.
- Shards live beside the output (``<output>.shards/``), so every node must see the same filesystem
  path for the images, the features (for `match`) and the output folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from ..io.atomic import atomic_path, write_text_atomic
from ..io.h5 import FeatureStore, MatchStore, pair_key
from ..io.images import ImageReadError
from ..io.lock import lock_path
from .local import RunInterrupted, RunReport, extract_into, match_into
from . import EngineError

logger = logging.getLogger(__name__)

RAY_MISSING = ("the Ray engine needs the package `ray`, which is not installed: pip install 'localfeat[ray]' "
               "(or pip install ray), or run with --engine local")


def require_ray():
    """The `ray` module, or `EngineError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise EngineError(RAY_MISSING) from exc
    return ray


@dataclass
class RayOptions:
    """Settings of the Ray engine (all optional).

    address:       an existing cluster ("HOST:PORT", "auto", "ray://HOST:10001"); None starts a Ray on this
                   machine for the run and stops it at the end (unless Ray is already initialised in this
                   process, which is then used as it is).
    workers:       number of actors; None = as many as the cluster's free resources allow.
    num_cpus:      CPUs per actor (also its torch threads).
    num_gpus:      GPUs per actor; None = 1 when the cluster has GPUs, else 0.
    shard_images:  images per shard; shard_pairs: pairs per shard.
    shard_dir:     where shard files go (default ``<output>.shards``; on a cluster, a path every node sees).
    max_retries:   how many times a shard whose worker died is resubmitted before the run fails.
    local_cpus:    CPUs of a Ray started for the run (default: all of this machine's).
    object_store_memory: bytes of Ray's object store, for a Ray started for the run (shards pass paths,
                   not arrays, so a small store suffices).
    keep_shards:   keep the shard folder after a complete run (default: removed).
    """

    address: Optional[str] = None
    workers: Optional[int] = None
    num_cpus: float = 1.0
    num_gpus: Optional[float] = None
    shard_images: int = 32
    shard_pairs: int = 512
    shard_dir: Optional[str] = None
    max_retries: int = 3
    local_cpus: Optional[int] = None
    object_store_memory: int = 200 << 20
    keep_shards: bool = False

    @classmethod
    def make(cls, options) -> "RayOptions":
        """RayOptions from None, a RayOptions or a dict of its fields (unknown keys: `ValueError`)."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise ValueError(f"unknown Ray engine option(s) {unknown}; valid: {sorted(valid)}")
        return cls(**options)

    def __post_init__(self):
        for name in ("shard_images", "shard_pairs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Ray engine: {name} must be >= 1, got {getattr(self, name)}")
        if self.workers is not None and int(self.workers) < 1:
            raise ValueError(f"Ray engine: workers must be >= 1 (or None = as many as fit), got {self.workers}")
        if self.num_cpus <= 0:
            raise ValueError(f"Ray engine: num_cpus per worker must be > 0, got {self.num_cpus}")
        if self.max_retries < 0:
            raise ValueError(f"Ray engine: max_retries must be >= 0, got {self.max_retries}")


# ----------------------------------------------------------------------------------------- the cluster
def _free_port() -> int:
    """A TCP port free now (the OS's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_cluster(node_cpus: Sequence[int], object_store_memory: int = 200 << 20,
                        num_gpus: Optional[int] = None, attempts: int = 3):
    """Start a Ray cluster on this machine, one node per entry of `node_cpus` (a head, then workers), and
    connect this process to it. Returns the `ray.cluster_utils.Cluster`; `cluster.shutdown()` (after
    `ray.shutdown()`) stops exactly its processes.

    On a machine busy with other work, Ray's agents can start later than its node waits for them (a
    fixed 15 s for the dashboard agent's port file, after which the node aborts). So the agents' ports are
    chosen here and given to Ray, and `_AgentPorts` publishes the dashboard agent's port file as soon as a
    node starts (the value the agent itself writes when it is up); a node that still fails to start is
    started again, up to `attempts` times.
    """
    ray = require_ray()
    from ray.cluster_utils import Cluster

    ports = _AgentPorts()

    def node_args(cpus, head):
        args = {"num_cpus": int(cpus), "object_store_memory": int(object_store_memory), **ports.new_node()}
        if num_gpus is not None and head:
            args["num_gpus"] = int(num_gpus)
        if head:
            args["include_dashboard"] = False
        return args

    with ports:
        for attempt in range(1, attempts + 1):
            cluster = None
            try:
                cluster = Cluster(initialize_head=True, head_node_args=node_args(node_cpus[0], True))
                for cpus in node_cpus[1:]:
                    cluster.add_node(**node_args(cpus, False))
                ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
                return cluster
            except Exception as exc:
                if cluster is not None:
                    cluster.shutdown()
                if attempt == attempts:
                    raise EngineError(f"could not start a local Ray ({attempts} attempts): {exc}; start one with "
                                      "`ray start --head` and pass --ray-address") from exc
                logger.warning("starting a local Ray failed (%s); trying again (%d of %d)", exc, attempt + 1,
                               attempts)


class _AgentPorts:
    """Ports for the agents of the nodes started here, and, while in a `with` block, a thread that writes
    each new node's dashboard-agent port file (`ray._raylet.persist_port`) as soon as its raylet runs
    (found in /proc by its metrics-agent port), so that a slow agent does not make the node abort."""

    def __init__(self):
        self.listen = {}  # metrics agent port -> dashboard agent listen port
        self._stop = None

    def new_node(self) -> dict:
        ports = {"metrics_agent_port": _free_port(), "runtime_env_agent_port": _free_port(),
                 "dashboard_agent_listen_port": _free_port(), "metrics_export_port": _free_port()}
        self.listen[ports["metrics_agent_port"]] = ports["dashboard_agent_listen_port"]
        return ports

    def __enter__(self):
        import threading

        if os.path.isdir("/proc"):
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._publish, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._stop is not None:
            self._stop.set()
            self._thread.join()

    def _publish(self) -> None:
        from ray._raylet import DASHBOARD_AGENT_LISTEN_PORT_NAME, persist_port

        done = set()
        while not self._stop.wait(0.1):
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                except OSError:
                    continue
                if not argv[0].endswith("raylet"):
                    continue
                args = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
                try:
                    metrics_port = int(args.get("metrics-agent-port", 0))
                except ValueError:
                    continue
                node = args.get("node_id")
                if metrics_port in self.listen and node and (node, metrics_port) not in done:
                    persist_port(args["session_dir"], node, DASHBOARD_AGENT_LISTEN_PORT_NAME,
                                 self.listen[metrics_port])
                    done.add((node, metrics_port))


@contextlib.contextmanager
def ray_session(options: RayOptions):
    """Ray connected for the duration of the block: an existing `ray.init` is used as it is; `address`
    joins that cluster; otherwise a one-node Ray is started on this machine and stopped afterwards."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if options.address:
        try:
            ray.init(address=options.address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EngineError(f"cannot join the Ray cluster at --ray-address {options.address}: {exc}; start it "
                              "with `ray start --head` (docs/scale.md) or omit the address to run on this "
                              "machine") from exc
        try:
            yield ray
        finally:
            ray.shutdown()
        return
    cluster = start_local_cluster([options.local_cpus or os.cpu_count() or 1], options.object_store_memory)
    try:
        yield ray
    finally:
        ray.shutdown()
        cluster.shutdown()


def _forwarded_env() -> dict:
    """Environment variables the workers must share with the driver (weights folders, offline mode)."""
    return {k: v for k, v in os.environ.items() if k.startswith("LOCALFEAT_")}


# ----------------------------------------------------------------------------------------- the workers
class ShardWorker:
    """A Ray actor that loads one model once and runs shards with the local engine's loops.

    kind "extract": spec = {"model", "conf", "conf_hash", "layout"}; kind "match": spec = {"matcher", "conf",
    "features", "features1", "layout"}.
    """

    def __init__(self, kind: str, spec: dict, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.kind, self.spec = kind, spec
        if kind == "extract":
            from ..registry import load_extractor

            self.model = load_extractor(spec["model"], **spec["conf"])
            if self.model.conf_hash != spec["conf_hash"]:
                raise EngineError(f"the worker's {spec['model']} has config hash {self.model.conf_hash}, the "
                                  f"driver's {spec['conf_hash']}: give the Ray engine a registered model and "
                                  "its config, not a modified extractor object")
        else:
            from ..registry import get_class

            self.model = get_class("matcher", spec["matcher"])(**spec["conf"])
            self.feats0 = FeatureStore(spec["features"], mode="r")
            self.feats1 = FeatureStore(spec["features1"], mode="r") if spec["features1"] else self.feats0

    def where(self) -> dict:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}

    def run(self, shard: dict) -> dict:
        """Compute shard["todo"] into the complete files shard["path"] (.h5) and its record (.json)."""
        path = Path(shard["path"])
        report = RunReport()
        start = time.perf_counter()
        if self.kind == "extract":
            with atomic_path(path) as tmp:
                store = FeatureStore(tmp, mode="w", model=self.model.name, conf=self.model.conf,
                                     conf_hash=self.model.conf_hash, layout=self.spec["layout"])
                with store:
                    extract_into(store, self.model, [(n, Path(p)) for n, p in shard["todo"]], report,
                                 on_error="skip", progress=False)
                _publishable(store, tmp)
        else:
            if self.kind != "match":
                raise EngineError(f"unknown shard kind {self.kind!r}")
            with atomic_path(path) as tmp:
                store = MatchStore(tmp, mode="w", layout=self.spec["layout"])
                with store:
                    match_into(store, self.model, self.feats0, self.feats1, [tuple(p) for p in shard["todo"]],
                               report, progress=False)
                _publishable(store, tmp)
        seconds = time.perf_counter() - start
        record = {"id": shard["id"], "todo": [list(t) for t in shard["todo"]], "done": report.done,
                  "failed": report.failed, "seconds": seconds, **self.where()}
        write_text_atomic(path.with_suffix(".json"), json.dumps(record))  # last: marks the shard complete
        return record


def _publishable(store, tmp: Path) -> None:
    """After a shard store closed: make sure `tmp` is a complete store file even when no entry was written
    (every input of the shard failed), and drop the lock file of the temporary name."""
    if not tmp.exists():
        import h5py

        with h5py.File(tmp, "w") as f:
            f.attrs.update(store._root_attrs())
    lock_path(tmp).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- the driver
@dataclass
class EngineReport(RunReport):
    """A `RunReport` plus what the cluster did: per-node counts, shards computed / reused, retries."""

    shards: int = 0
    reused_shards: int = 0
    retries: int = 0
    workers: int = 0
    nodes: dict = field(default_factory=dict)  # node -> {"host", "items", "shards", "seconds"}

    def summary(self) -> str:
        text = super().summary()
        text += (f"\n  ray: {self.shards} shards ({self.reused_shards} reused from an earlier run), "
                 f"{self.workers} workers, {self.retries} shard retries after a worker died")
        for node, info in sorted(self.nodes.items(), key=lambda kv: kv[1]["host"]):
            text += (f"\n  node {info['host']} ({node[:8]}): {info['items']} items in {info['shards']} shards, "
                     f"{info['seconds']:.1f} s of work")
        return text


def _shard_id(kind: str, identity: dict, items: Sequence) -> str:
    text = json.dumps({"kind": kind, "identity": identity, "items": [list(i) for i in items]}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _complete_record(path: Path, todo: Sequence) -> Optional[dict]:
    """The record of a complete shard file that covers every item of `todo`, else None."""
    record_path = path.with_suffix(".json")
    if not record_path.exists() or not path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    computed = {tuple(t) for t in record.get("todo", [])}
    return record if all(tuple(t) in computed for t in todo) else None


def _workers_wanted(ray, options: RayOptions, num_gpus: float, shards: int) -> int:
    if options.workers:
        return max(1, min(int(options.workers), shards))
    resources = ray.cluster_resources()
    fit = int(resources.get("CPU", 1) // options.num_cpus)
    if num_gpus:
        fit = min(fit, int(resources.get("GPU", 0) // num_gpus))
    return max(1, min(fit, shards))


def _run(kind: str, spec: dict, identity: dict, units: list, key_of, out_store, report: EngineReport,
         options: RayOptions, shard_size: int, shard_dir: Path, on_error: str = "skip") -> None:
    """Compute `units` (image items or pairs, in order) on Ray and merge them into `out_store` in order.

    key_of(unit) -> the store key of a unit; units already in the store are skipped (report.skipped).
    """
    groups = [units[i:i + shard_size] for i in range(0, len(units), shard_size)]
    shards = []
    for group in groups:
        todo = [u for u in group if not out_store.has_key(key_of(u))]
        report.skipped.extend(_label(kind, u) for u in group if out_store.has_key(key_of(u)))
        if todo:
            sid = _shard_id(kind, identity, group)
            shards.append({"id": sid, "path": str(shard_dir / f"{sid}.h5"), "todo": [list(t) for t in todo]})
    report.shards = len(shards)
    records: dict[int, dict] = {}
    queue = deque()
    for index, shard in enumerate(shards):
        record = _complete_record(Path(shard["path"]), shard["todo"])
        if record is not None:
            records[index] = {**record, "node": "earlier run", "host": "(shards of an earlier run)"}
            report.reused_shards += 1
        else:
            queue.append(index)
    total = sum(len(s["todo"]) for s in shards)
    bar = tqdm(total=total, desc=f"{kind} (ray)", unit="img" if kind == "extract" else "pair", disable=None,
               dynamic_ncols=True)
    bar.update(sum(len(shards[i]["todo"]) for i in records))
    next_merge = 0

    def merge_ready():
        nonlocal next_merge
        while next_merge in records:
            _merge(kind, shards[next_merge], records.pop(next_merge), out_store, report, key_of, on_error)
            next_merge += 1

    merge_ready()
    if queue:
        with ray_session(options) as ray:
            num_gpus = options.num_gpus
            if num_gpus is None:
                num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
            n_workers = _workers_wanted(ray, options, num_gpus, len(queue))
            report.workers = n_workers
            actor_cls = ray.remote(ShardWorker).options(
                num_cpus=options.num_cpus, num_gpus=num_gpus, max_restarts=-1, max_task_retries=0,
                scheduling_strategy="SPREAD", runtime_env={"env_vars": _forwarded_env()})
            threads = max(1, int(options.num_cpus))
            actors = [actor_cls.remote(kind, spec, threads) for _ in range(n_workers)]
            idle = deque(actors)
            pending: dict = {}  # ObjectRef -> ("run", shard index, actor) or ("ping", None, actor)
            retries: dict[int, int] = {}

            def ping(actor, delay: float = 0.0):
                """Ask a restarting actor where it runs; it is idle again once it answers."""
                time.sleep(delay)
                pending[actor.where.remote()] = ("ping", None, actor)

            try:
                while queue or any(what == "run" for what, _, _ in pending.values()):
                    while queue and idle:
                        index = queue.popleft()
                        actor = idle.popleft()
                        pending[actor.run.remote(shards[index])] = ("run", index, actor)
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        what, index, actor = pending.pop(ref)
                        try:
                            result = ray.get(ref)
                        except ray.exceptions.RayActorError as exc:
                            if isinstance(exc, ray.exceptions.ActorDiedError):  # restarts exhausted: a new one
                                actor = actor_cls.remote(kind, spec, threads)
                                actors.append(actor)
                            if what == "ping":  # still restarting (the model loads again): ask later
                                ping(actor, 0.5)
                                continue
                            retries[index] = retries.get(index, 0) + 1
                            report.retries += 1
                            if retries[index] > options.max_retries:
                                raise EngineError(f"shard {shards[index]['id']} failed {retries[index]} times "
                                                  f"because its worker died ({exc}); see the Ray logs of the "
                                                  "nodes, then rerun to resume") from exc
                            logger.warning("a worker died during shard %s (%s); computing the shard again",
                                           shards[index]["id"], type(exc).__name__)
                            queue.appendleft(index)
                            ping(actor)  # Ray restarts the actor (max_restarts=-1)
                            continue
                        except ray.exceptions.RayTaskError as exc:
                            cause = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
                            raise EngineError(f"shard {shards[index]['id']} failed on a worker: {cause}") from exc
                        idle.append(actor)
                        if what == "run":
                            records[index] = result
                            bar.update(len(shards[index]["todo"]))
                            merge_ready()
            except KeyboardInterrupt as exc:
                raise RunInterrupted(report, out_store.path) from exc
            finally:
                bar.close()
                for actor in actors:
                    ray.kill(actor)
    bar.close()
    merge_ready()
    if next_merge != len(shards):  # cannot happen: every shard was computed or reused
        raise EngineError(f"{len(shards) - next_merge} shards were not merged")


def _label(kind: str, unit) -> str:
    return unit[0] if kind == "extract" else f"{unit[0]} {unit[1]}"


def _merge(kind: str, shard: dict, record: dict, out_store, report: EngineReport, key_of, on_error: str) -> None:
    """Copy the entries of a complete shard into `out_store` in the shard's order; count per node."""
    failed = {name: message for name, message in record["failed"]}
    source_cls = FeatureStore if kind == "extract" else MatchStore
    source = source_cls(shard["path"], mode="r")
    for unit in shard["todo"]:
        label = _label(kind, unit)
        if label in failed:
            report.failed.append((label, failed[label]))
            if on_error == "fail":
                raise ImageReadError(f"{label}: {failed[label]}")
            continue
        out_store.copy_entry(source, key_of(unit))
        report.done.append(label)
    node = report.nodes.setdefault(record.get("node", "?"), {"host": record.get("host", "?"), "items": 0,
                                                             "shards": 0, "seconds": 0.0})
    node["items"] += len(shard["todo"])
    node["shards"] += 1
    node["seconds"] += float(record.get("seconds", 0.0))


def _shard_dir(output, options: RayOptions, overwrite: bool) -> Path:
    output = Path(output).absolute()
    folder = Path(options.shard_dir).absolute() if options.shard_dir else output.with_name(output.name + ".shards")
    if overwrite:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _finish(folder: Path, options: RayOptions) -> None:
    if not options.keep_shards:
        shutil.rmtree(folder, ignore_errors=True)


def extract(items: Sequence[tuple[str, Path]], output, extractor, on_error: str = "skip", overwrite: bool = False,
            layout: Optional[str] = None, options=None, recompute: bool = False) -> EngineReport:
    """`localfeat.pipeline.extract` on Ray (called by it with engine="ray"): the images `items` ((name,
    path) in order) into the FeatureStore `output`. `extractor` is the driver's instance (its name and
    full config are what the workers load). recompute: also recompute names already in the output (the
    HPatches runner: images whose content changed)."""
    options = RayOptions.make(options)
    require_ray()
    folder = _shard_dir(output, options, overwrite)
    spec = {"model": extractor.name, "conf": dict(extractor.conf), "conf_hash": extractor.conf_hash}
    report = EngineReport()
    with FeatureStore(output, mode="w" if overwrite else "a", model=extractor.name, conf=extractor.conf,
                      conf_hash=extractor.conf_hash, layout=layout) as store:
        spec["layout"] = store.layout
        identity = {"model": extractor.name, "conf_hash": extractor.conf_hash, "layout": store.layout}
        units = [(str(name), str(Path(path).absolute())) for name, path in items]
        view = _Forgetful(store, {n for n, _ in units}) if recompute else store
        _run("extract", spec, identity, units, lambda u: u[0], view, report, options, options.shard_images,
             folder, on_error)
    _finish(folder, options)
    return report


def match(features, output, pairs: Sequence[tuple[str, str]], matcher: str, conf: dict,
          overwrite: bool = False, features1=None, layout: Optional[str] = None, options=None) -> EngineReport:
    """`localfeat.pipeline.match` on Ray (called by it with engine="ray"): `pairs` (in order) of the
    FeatureStore `features` into the MatchStore `output`, with the matcher `matcher` and its full `conf`."""
    options = RayOptions.make(options)
    require_ray()
    folder = _shard_dir(output, options, overwrite)
    features = str(Path(features).absolute())
    features1 = str(Path(features1).absolute()) if features1 else None
    feats0 = FeatureStore(features, mode="r")
    identity = {"matcher": matcher, "conf": conf, "features": features, "features1": features1,
                "features_identity": feats0.stored_identity(), "features_entries": len(feats0)}
    spec = {"matcher": matcher, "conf": dict(conf), "features": features, "features1": features1}
    report = EngineReport()
    with MatchStore(output, mode="w" if overwrite else "a", layout=layout) as store:
        spec["layout"] = identity["layout"] = store.layout
        units = [(str(a), str(b)) for a, b in pairs]
        _run("match", spec, identity, units, lambda u: pair_key(u[0], u[1]), store, report, options,
             options.shard_pairs, folder)
    _finish(folder, options)
    return report


class _Forgetful:
    """A store seen as lacking the names `forget` (so they are computed again), otherwise the store."""

    def __init__(self, store, forget: set):
        self._store, self._forget = store, forget

    def has_key(self, key: str) -> bool:
        return key not in self._forget and self._store.has_key(key)

    def __getattr__(self, name):
        return getattr(self._store, name)
