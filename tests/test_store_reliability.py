"""Reliability of the stores (issue 19): concurrent writers, full disks, malformed and corrupt files,
out-of-range match indices, hloc files whose N equals D."""
import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from localfeat.io.h5 import FeatureStore, MatchStore, StoreError
from localfeat.types import ContractError, Features, Matches


def features_for(name: str, n: int = 6, d: int = 8) -> Features:
    """Deterministic features of an image name (so that any process can check any entry)."""
    rng = np.random.default_rng(sum(name.encode()) * 7919 + len(name))
    desc = rng.normal(size=(n, d))
    return Features(rng.uniform(0, 60, (n, 2)), rng.uniform(size=n), desc / np.linalg.norm(desc, axis=1)[:, None],
                    (64, 48))


WRITER = textwrap.dedent("""
    import sys, time, random
    sys.path.insert(0, {tests!r})
    from test_store_reliability import features_for
    from localfeat.io.h5 import FeatureStore
    path, names = sys.argv[1], sys.argv[2:]
    random.seed(hash(tuple(names)))
    with FeatureStore(path, "a", model="m", conf={{}}, conf_hash="h", flush_every=2) as store:
        for name in names:
            if name not in store:
                store.put(name, features_for(name))
                time.sleep(random.uniform(0, 0.004))
    print("ok", len(names))
""")


def run_writers(path, name_lists):
    script = WRITER.format(tests=os.path.dirname(__file__))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), *names], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for names in name_lists]
    return [(p.wait(timeout=120), *p.communicate()) for p in procs]


@pytest.mark.parametrize("writers,overlap", [(2, False), (4, False), (4, True)])
def test_concurrent_writers_lose_nothing(tmp_path, writers, overlap):
    for trial in range(3):
        path = tmp_path / f"t{trial}" / "features.h5"
        if overlap:  # every writer does half of its list in common with the next one
            name_lists = [[f"img{(w * 10 + i) % (writers * 10):03d}.png" for i in range(20)] for w in range(writers)]
        else:
            name_lists = [[f"w{w}/img{i:03d}.png" for i in range(20)] for w in range(writers)]
        results = run_writers(path, name_lists)
        for rc, out, err in results:
            assert rc == 0 and err == "", err
        expected = sorted({n for names in name_lists for n in names})
        store = FeatureStore(path, "r")
        assert store.names() == expected
        for name in expected:
            assert store.get(name).equals(features_for(name))
        assert not path.with_name("features.h5.journal").exists()  # every chunk merged, none left behind
        with h5py.File(path, "r") as f:  # the main file alone holds everything
            found = []
            f.visititems(lambda key, obj: found.append(key) if key.endswith("/keypoints") else None)
            assert sorted(k[: -len("/keypoints")] for k in found) == expected
