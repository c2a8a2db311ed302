"""Training on several processes (torchrun + DistributedDataParallel, gloo on CPU): the curve of one process
with the same global batch, rank 0 alone writing the run, exact resume; the per-rank data shards."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO

from localfeat.train.pairs import IndexRange, PairsError, StepShard

# DISK: instance norm only, so the ranks' shards are normalised as in one process (BatchNorm would need
# SyncBatchNorm, which PyTorch has on CUDA only).
ARGS = ["--config", "smoke", "model={name: disk}", "losses={disk: {cell: 4}}", "steps=4", "batch_size=2",
        "data.crop_size=32", "data.num_workers=0", "tensorboard=false", "threads=1", "checkpoint_every=2",
        "device=cpu", "optimizer.lr=0.001"]


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_step_shards_split_each_global_batch_by_rank():
    # global batch 4 on 2 ranks, steps 1..2: rank 0 gets samples 4, 5 then 8, 9; rank 1 gets 6, 7 then 10, 11
    assert list(StepShard(1, 3, 4, rank=0, world_size=2)) == [4, 5, 8, 9]
    assert list(StepShard(1, 3, 4, rank=1, world_size=2)) == [6, 7, 10, 11]
    assert len(StepShard(1, 3, 4, rank=1, world_size=2)) == 4
    assert list(StepShard(1, 3, 4)) == list(IndexRange(4, 12))   # one process: the whole batches
    with pytest.raises(PairsError, match="batch_size 3 is not a multiple of the 2 processes"):
        StepShard(0, 1, 3, rank=0, world_size=2)


def test_two_gloo_processes_train_the_one_process_curve_and_resume_exactly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    one = subprocess.Popen([sys.executable, "-m", "localfeat.train", *ARGS, "-o", str(tmp_path / "one")], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "localfeat.train"]
    two = tmp_path / "two"
    first = subprocess.run(torchrun + ARGS + ["stop_at_step=2", "-o", str(two)], env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [r["step"] for r in _rows(two / "metrics.csv")] == ["0", "1"]   # rank 0 alone writes the log
    conf = yaml.safe_load((two / "config.yaml").read_text())
    conf["stop_at_step"] = None
    (two / "config.yaml").write_text(yaml.safe_dump(conf))
    again = subprocess.run(torchrun + ["--resume", str(two)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    _, err = one.communicate(timeout=600)
    assert one.returncode == 0, err[-3000:]

    a, b = _rows(tmp_path / "one" / "metrics.csv"), _rows(two / "metrics.csv")
    assert [r["step"] for r in b] == ["0", "1", "2", "3"]
    assert len({r["total"] for r in a}) == 4          # the loss moves: the curves compared are not flat
    for ra, rb in zip(a, b):
        # same samples, same random draws: equal up to the order of float sums (convolutions of 1 vs 2 images)
        assert float(rb["total"]) == pytest.approx(float(ra["total"]), rel=1e-4, abs=1e-5), (ra, rb)
        assert rb["disk/keypoints"] == ra["disk/keypoints"]
    w1 = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)
    w2 = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
    assert w1["step"] == w2["step"] == 4
    # Adam turns tiny gradient differences of near-zero gradients into lr-sized steps: compare the weights
    # as a whole, against how far training moved them.
    from localfeat.registry import trainable
    from localfeat.train import resolve_config

    torch.manual_seed(conf["seed"])
    init = trainable("disk").build(resolve_config(conf)["model"]).state_dict()
    diff = sum(float((w1["model"][k] - w2["model"][k]).pow(2).sum()) for k in init) ** 0.5
    update = sum(float((w1["model"][k] - init[k]).pow(2).sum()) for k in init) ** 0.5
    assert update > 0.05 and diff < 0.01 * update, (diff, update)
