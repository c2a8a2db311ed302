"""The Ray engine on a two-node cluster started here (a head and a worker node on localhost, 1 CPU each):
extract, exhaustive match and the HPatches evaluation give the local engine's files; a worker SIGKILLed in
the middle of a shard and a driver SIGKILLed mid-run both end in the same files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import localfeat
from localfeat.eval.hpatches import EvalSettings, ExtractorSource, evaluate_hpatches
from localfeat.io.h5 import FeatureStore, file_entries
from localfeat.pairs import exhaustive_pairs
from conftest import REPO, shared

CONF = {"max_keypoints": 256, "resize_max": 640}


@pytest.fixture(scope="module")
def cluster():
    """Needs Ray (`pip install 'localfeat[ray]'`; `make test` installs it): without it these tests fail."""
    import ray

    from localfeat.engines.ray import start_local_cluster

    cluster = start_local_cluster([1, 1], object_store_memory=100 << 20)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """8 photos of the Sacre Coeur set and one truncated JPEG (a bad image both engines must skip)."""
    src = shared("sfm_sacre_coeur_hloc", "mapping")
    folder = tmp_path_factory.mktemp("photos")
    names = sorted(p.name for p in src.glob("*.jpg"))[:8]
    for name in names:
        (folder / name).write_bytes((src / name).read_bytes())
    good = (src / names[0]).read_bytes()
    (folder / "broken.jpg").write_bytes(good[: len(good) // 4])
    return folder


def assert_same_store(a, b) -> None:
    ea, eb = file_entries(a), file_entries(b)
    assert [e[0] for e in ea] == [e[0] for e in eb]
    for x, y in zip(ea, eb):
        assert x == y, f"{a} and {b} differ at {x[0]}"
    assert not Path(str(b) + ".journal").exists() and not Path(str(b) + ".shards").exists()


def test_extract_and_match_equal_the_local_engine(cluster, photos, tmp_path):
    local = localfeat.extract(photos, tmp_path / "local.h5", model="sift", conf=CONF)
    report = localfeat.extract(photos, tmp_path / "ray.h5", model="sift", conf=CONF, engine="ray",
                               engine_options={"shard_images": 2})
    assert report.failed == local.failed and [n for n, _ in local.failed] == ["broken.jpg"]
    assert report.done == local.done and len(local.done) == 8
    assert_same_store(tmp_path / "local.h5", tmp_path / "ray.h5")
    # 9 images in shards of 2 -> 5 shards, spread over the two nodes; every image counted once.
    assert report.shards == 5 and report.retries == 0 and report.reused_shards == 0
    assert len(report.nodes) == 2 and sum(n["items"] for n in report.nodes.values()) == 9
    assert "node " in report.summary()

    pairs = exhaustive_pairs(FeatureStore(tmp_path / "local.h5", mode="r").names()) + [("broken.jpg", local.done[0])]
    mlocal = localfeat.match(tmp_path / "local.h5", tmp_path / "m_local.h5", pairs, conf={"ratio": 0.8})
    mray = localfeat.match(tmp_path / "ray.h5", tmp_path / "m_ray.h5", pairs, conf={"ratio": 0.8}, engine="ray",
                           engine_options={"shard_pairs": 8})
    assert len(mlocal.done) == 28 and mray.done == mlocal.done and mray.failed == mlocal.failed
    assert mray.shards == 4 and len(mray.nodes) == 2
    assert_same_store(tmp_path / "m_local.h5", tmp_path / "m_ray.h5")

    # A rerun finds everything done: no shard, nothing computed, the file stays the same.
    again = localfeat.match(tmp_path / "ray.h5", tmp_path / "m_ray.h5", pairs[:-1], conf={"ratio": 0.8},
                            engine="ray")
    assert again.done == [] and len(again.skipped) == 28 and again.shards == 0
    assert_same_store(tmp_path / "m_local.h5", tmp_path / "m_ray.h5")


def test_hpatches_eval_equals_the_local_engine(cluster, tmp_path):
    root = shared("hpatches_subset")
    settings = EvalSettings(top_k=200)
    results = {}
    for engine in ("local", "ray"):
        source = ExtractorSource("sift:max_keypoints=300", max_size=480, engine=engine,
                                 engine_options={"shard_images": 4})
        results[engine] = evaluate_hpatches(root, [source], tmp_path / engine, settings=settings, exclude=(),
                                            plot=False)
    local, distributed = (results[e]["methods"]["sift:max_keypoints=300"] for e in ("local", "ray"))
    assert local["dataset"]["sequences"] == {"i": 0, "v": 2}
    local.pop("cache_file"), distributed.pop("cache_file")
    assert json.dumps(local, sort_keys=True) == json.dumps(distributed, sort_keys=True)
    [a], [b] = (list((tmp_path / e / "features").glob("*.h5")) for e in ("local", "ray"))
    assert a.name == b.name
    assert_same_store(a, b)
    for name in ("results.md", "results.csv", "per_sequence.csv"):
        assert (tmp_path / "local" / name).read_text() == (tmp_path / "ray" / name).read_text()


def _processes(title: str) -> list[int]:
    """PIDs of the processes whose command line (Ray's process title) starts with `title`."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(title.encode()):
                pids.append(int(pid))
    return pids


def test_worker_killed_mid_shard(cluster, photos, tmp_path):
    """SIGKILL a worker while it runs a shard (Ray titles it `ray::ShardWorker.run`): Ray restarts it, the
    shard is computed again, nothing is lost or duplicated."""
    localfeat.extract(photos, tmp_path / "local.h5", model="sift", conf=CONF)
    killed = []

    def kill_one():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            running = _processes("ray::ShardWorker.run")
            if running:
                os.kill(running[0], signal.SIGKILL)
                killed.append(running[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    report = localfeat.extract(photos, tmp_path / "ray.h5", model="sift", conf=CONF, engine="ray",
                               engine_options={"shard_images": 3})
    killer.join()
    assert killed, "no worker was seen running a shard"
    assert report.retries >= 1
    assert len(report.done) == 8 and [n for n, _ in report.failed] == ["broken.jpg"]
    assert_same_store(tmp_path / "local.h5", tmp_path / "ray.h5")


def test_driver_killed_then_rerun_resumes(cluster, photos, tmp_path):
    """SIGKILL the `localfeat extract --engine ray` command once a shard is complete; the same command again
    reuses the complete shards (not computed again) and ends with the local engine's file."""
    localfeat.extract(photos, tmp_path / "local.h5", model="sift", conf=CONF)
    out = tmp_path / "ray.h5"
    command = [sys.executable, "-m", "localfeat.cli", "extract", str(photos), "-o", str(out), "--model", "sift",
               "--conf", "max_keypoints=256", "resize_max=640", "--engine", "ray", "--ray-address",
               cluster.address, "--shard-size", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shards = Path(str(out) + ".shards")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None and len(list(shards.glob("*.json"))) < 2:
        time.sleep(0.05)
    assert driver.poll() is None, driver.communicate()[0].decode()[-2000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done_before = {p.stem for p in shards.glob("*.json")}
    assert len(done_before) >= 2
    report = localfeat.extract(photos, out, model="sift", conf=CONF, engine="ray",
                               engine_options={"shard_images": 1})
    # Shards finished before the kill are merged from their files (or were merged already), never recomputed.
    assert report.reused_shards + len(report.skipped) >= 2
    assert sorted(report.done + report.skipped) == sorted(n for n in os.listdir(photos) if n != "broken.jpg")
    assert [n for n, _ in report.failed] == ["broken.jpg"]
    assert_same_store(tmp_path / "local.h5", out)


def test_missing_ray_is_a_clear_error(monkeypatch, photos, tmp_path):
    import localfeat.engines.ray as engine
    from localfeat.engines import EngineError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(EngineError, match=r"needs the package `ray`, which is not installed: pip install "
                                          r"'localfeat\[ray\]'"):
        localfeat.extract(photos, tmp_path / "f.h5", model="sift", engine="ray")
    assert not (tmp_path / "f.h5").exists()
    from localfeat.cli import main

    assert main(["extract", str(photos), "-o", str(tmp_path / "f.h5"), "--model", "sift", "--engine", "ray"]) == 2
    assert engine.RAY_MISSING.startswith("the Ray engine needs the package `ray`")
    with pytest.raises(ValueError, match=r"engine must be one of \['local', 'ray'\], got 'spark'"):
        localfeat.extract(photos, tmp_path / "f.h5", model="sift", engine="spark")
    with pytest.raises(ValueError, match=r"unknown Ray engine option\(s\) \['shards'\]"):
        engine.RayOptions.make({"shards": 3})


def test_cli_engine_options():
    """--engine ray and its settings reach the engine as RayOptions fields (shard size in the verb's unit)."""
    from localfeat.cli.args import engine_options
    from localfeat.cli.main import build_parser
    from localfeat.engines.ray import RayOptions

    parser = build_parser()
    args = parser.parse_args(["match", "f.h5", "-o", "m.h5", "--exhaustive", "--engine", "ray", "--ray-address",
                              "head:6379", "--shard-size", "7", "--ray-gpus", "0.5", "--ray-workers", "3"])
    options = RayOptions.make(engine_options(args, "pairs"))
    assert (options.address, options.shard_pairs, options.shard_images, options.num_gpus, options.workers,
            options.num_cpus) == ("head:6379", 7, 32, 0.5, 3, 1.0)
    args = parser.parse_args(["eval", "hpatches", "--root", "r", "--model", "sift", "-o", "o", "--engine", "ray",
                              "--shard-size", "5"])
    assert RayOptions.make(engine_options(args)).shard_images == 5
    assert engine_options(parser.parse_args(["extract", "photos", "-o", "f.h5"])) is None  # --engine local
    with pytest.raises(ValueError, match="shard_images must be >= 1, got 0"):
        RayOptions(shard_images=0)
