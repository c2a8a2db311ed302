"""The trainer: strict configs, presets, every loss family for a few steps, SIGKILL + exact resume,
trained weights loaded by the registered extractor, validation MMA."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO

import localfeat
from localfeat.registry import ConfigError, trainable
from localfeat.train import list_presets, resolve_config, resume, train
from localfeat.train.trainer import Trainer, TrainError, evaluate_mma

TINY = {"steps": 2, "batch_size": 1, "checkpoint_every": 2, "log_every": 1, "data.crop_size": 32,
        "data.base_size": 64, "data.num_workers": 0, "tensorboard": False}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_presets_are_listed_and_resolve():
    presets = list_presets()
    assert {"smoke", "fast_r2d2_cpu", "r2d2", "disk", "d2net", "alike_distinctiveness"} <= set(presets)
    conf = resolve_config("smoke")
    assert conf["model"]["name"] == "r2d2" and conf["model"]["arch"] == "Fast_Quad_L2Net_ConfCFS"
    assert conf["data"]["crop_size"] == 64 and conf["steps"] == 12
    assert resolve_config("fast_r2d2_cpu")["data"]["crop_size"] == 192
    for name in presets:   # every shipped preset is a valid strict config
        resolve_config(name)


def test_config_is_strict():
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_config("smoke", {"stepz": 3})
    with pytest.raises(ConfigError, match=r"config\.data: unknown key"):
        resolve_config("smoke", {"data.crop": 3})
    with pytest.raises(ConfigError, match="mchannels"):
        resolve_config("smoke", {"model.mchannels": 3})
    with pytest.raises(ConfigError, match="unknown loss 'triplet'"):
        resolve_config("smoke", {"losses": {"triplet": 1.0}})
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_config("smoke", {"losses": {"ap": {"weight": 1, "bins": 3}}})
    with pytest.raises(ConfigError, match="cannot be trained"):
        resolve_config("smoke", {"model": "sift"})
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset"):
        resolve_config("no_such_preset")


def test_base_config_is_merged_key_by_key(tmp_path):
    lite = resolve_config("lite")
    child = tmp_path / "child.yaml"
    child.write_text("base: lite\nseed: 9\ndata: {pool: 800}\nlosses:\n  nre: {weight: 0.5}\n  ap: {subq: 8}\n")
    conf = resolve_config(str(child))
    assert conf["seed"] == 9 and conf["data"]["pool"] == 800
    assert conf["data"]["crop_size"] == lite["data"]["crop_size"] == 192           # kept from the base
    assert conf["losses"]["nre"] == {"weight": 0.5}                                # added
    assert conf["losses"]["ap"] == {**lite["losses"]["ap"], "subq": 8}             # one key changed
    assert conf["losses"]["distill"] == lite["losses"]["distill"]                  # untouched
    grandchild = tmp_path / "sub" / "grandchild.yaml"                              # a file base, relative
    grandchild.parent.mkdir()
    grandchild.write_text("base: ../child.yaml\nsteps: 7\n")
    assert resolve_config(str(grandchild)) == {**conf, "steps": 7}
    # the stage presets derive from `lite`: stage 11 is lite with its own changes and nothing else
    nre3 = resolve_config("lite_nre3")
    assert nre3["data"] == lite["data"] and nre3["losses"]["ap"] == lite["losses"]["ap"]
    assert nre3["model"]["dim"] == 96 and nre3["optimizer"]["lr"] == 0.00025 and nre3["scheduler"]["name"] == "cosine"


def test_base_config_errors(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        resolve_config(str(a))
    a.write_text("base: [lite]\n")
    with pytest.raises(ConfigError, match="base must be a preset name"):
        resolve_config(str(a))
    a.write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: no such file"):
        resolve_config(str(a))


def test_cli_list_and_unknown_key(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "localfeat.cli", "train", "--list"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "smoke" in out.stdout and "fast_r2d2_cpu" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "localfeat.cli", "train", "--config", "smoke", "-o",
                          str(tmp_path / "run"), "data.cropsize=32"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 2 and "cropsize" in bad.stderr and "valid keys" in bad.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()


FAMILIES = [
    ("r2d2", {"model": {"name": "r2d2", "mchan": 1}, "losses": {"ap": {"weight": 1.0, "similarity": "jaccard"}}}),
    ("r2d2", {"model": {"name": "r2d2", "mchan": 1}, "losses": {"reliability": 1.0, "repeatability": {"N": 8}}}),
    ("r2d2", {"model": {"name": "r2d2", "mchan": 1}, "losses": {"hardest_triplet": 1.0}}),
    ("r2d2", {"model": {"name": "r2d2", "mchan": 1}, "losses": {"distinctiveness": {"N": 8}, "d2net": 0.5}}),
    ("r2d2", {"model": {"name": "r2d2", "mchan": 1}, "losses": {"disk": 1.0}}),
    ("alike", {"model": {"name": "alike", "variant": "alike-t"}, "losses": {"ap": 1.0, "repeatability": {"N": 8}}}),
    ("disk", {"model": {"name": "disk"}, "losses": {"disk": {"cell": 4}}}),
    ("d2net", {"model": {"name": "d2net"}, "losses": {"d2net": {"safe_radius": 1}}}),
]


@pytest.mark.parametrize("model,conf", FAMILIES, ids=[f"{m}-{'+'.join(c['losses'])}" for m, c in FAMILIES])
def test_each_loss_family_trains_a_few_steps(tmp_path, model, conf):
    overrides = dict(TINY)
    if model in ("d2net", "alike"):
        overrides["data.crop_size"] = 64   # D2-Net: stride 8, an 8 x 8 map; ALIKE: its BatchNorm at 1/32 needs 2 x 2
    run = train({**conf, "seed": 1}, tmp_path / "run", overrides)
    rows = _rows(run / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1"]
    for r in rows:
        assert np.isfinite(float(r["total"]))
        # total = sum of weight x term totals
        weights = {k: (v["weight"] if isinstance(v, dict) and "weight" in v else (1.0 if isinstance(v, dict) else v))
                   for k, v in conf["losses"].items()}
        assert float(r["total"]) == pytest.approx(sum(w * float(r[f"{k}/total"]) for k, w in weights.items()),
                                                  rel=1e-5, abs=1e-6)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name"] == model
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 2
    # the trained weights differ from the initial ones
    adapter = trainable(model)
    torch.manual_seed(1)
    init = adapter.build(resolve_config({**conf}, overrides)["model"]).state_dict()
    assert any(not torch.equal(init[k], ck["model"][k]) for k in init if init[k].dtype.is_floating_point)


def test_sigkill_and_resume_gives_the_uninterrupted_curve(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = ["steps=5", "checkpoint_every=2", "data.crop_size=32", "tensorboard=false"]
    cmd = [sys.executable, "-m", "localfeat.cli", "train", "--config", "smoke"]
    full = subprocess.Popen(cmd + ["-o", str(tmp_path / "full")] + args + ["data.num_workers=0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = subprocess.Popen(cmd + ["-o", str(tmp_path / "killed")] + args, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 600
    while not ckpt.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    done = [r["step"] for r in _rows(tmp_path / "killed" / "metrics.csv")]
    assert len(done) < 5
    _, err = full.communicate(timeout=600)
    assert full.returncode == 0, err
    # resume in-process, with two loader workers (the uninterrupted run used none)
    resume(tmp_path / "killed")
    a = [(r["step"], r["total"]) for r in _rows(tmp_path / "full" / "metrics.csv")]
    b = [(r["step"], r["total"]) for r in _rows(tmp_path / "killed" / "metrics.csv")]
    assert [s for s, _ in a] == ["0", "1", "2", "3", "4"] == [s for s, _ in b]
    # The same curve to float32 rounding (1e-6 relative; on the machines tried, digit for digit): a resume that
    # drops the optimiser state moves step 3 by 1.5e-4 relative, one that drops the RNG states moves step 2 by 3e-2.
    assert [float(t) for _, t in b] == pytest.approx([float(t) for _, t in a], rel=1e-6, abs=0)
    with pytest.raises(TrainError, match="resume it"):
        train("smoke", tmp_path / "killed")


def test_trained_weights_load_in_the_extractor_and_validate(tmp_path):
    from localfeat.datasets.synth import generate

    run = train("smoke", tmp_path / "run", {**TINY, "model.mchan": 1})
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    extractor = localfeat.load_extractor("r2d2", weights=str(run / "weights.pt"), top_k=100, min_size=None,
                                         min_scale=0.7,
                                         max_size=None, reliability_thr=0.0, repeatability_thr=0.0)
    state = extractor.net.state_dict()
    assert state.keys() == ck["model"].keys()
    assert all(torch.equal(state[k], ck["model"][k]) for k in state)
    img = (np.random.default_rng(0).uniform(size=(64, 80, 3)) * 255).astype(np.uint8)
    feats = extractor.extract(img)
    assert len(feats) == 100 and feats.descriptors.shape == (100, 128)
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)
    # validation MMA on a tiny synthetic HPatches set
    root = tmp_path / "hp"
    generate(root, n_sequences=2, seed=0, image_max_size=96)
    trainer = Trainer(resolve_config("smoke", {"model.mchan": 1}), tmp_path / "val")
    res = evaluate_mma(trainer.adapter, trainer.net, root, torch.device("cpu"), top_k=200)
    assert 0.0 <= res["mma@1"] <= res["mma@3"] <= res["mma@5"] <= 1.0
    assert res["features"] > 10 and res["matches"] > 0
    # one i_ and one v_ sequence, 5 pairs each: the overall MMA is the mean of the two
    assert res["mma@3"] == pytest.approx((res["mma@3_i"] + res["mma@3_v"]) / 2)


def test_freeze_named_parts(tmp_path):
    conf = {"model": {"name": "r2d2", "mchan": 1}, "losses": {"ap": 1.0}, "freeze": ["ops.0", "ops.3"]}
    run = train(conf, tmp_path / "run", TINY)
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    torch.manual_seed(0)
    init = trainable("r2d2").build(resolve_config(conf, TINY)["model"]).state_dict()
    assert torch.equal(ck["model"]["ops.0.weight"], init["ops.0.weight"])
    assert not torch.equal(ck["model"]["ops.6.weight"], init["ops.6.weight"])
    with pytest.raises(ConfigError, match="matches no parameter"):
        train({**conf, "freeze": ["trunk.conv9"]}, tmp_path / "bad", TINY)


def test_models_start_from_official_weights():
    """model.weights: official loads the released file (found through the weights lookup)."""
    from localfeat import hub
    from localfeat.extractors._r2d2_nets import load_network

    conf = resolve_config({"model": {"name": "r2d2", "weights": "official", "mchan": 4}})
    net = trainable("r2d2").build(conf["model"])
    from localfeat.extractors.alike import WEIGHTS as ALIKE_WEIGHTS
    from localfeat.extractors.r2d2 import WEIGHTS as R2D2_WEIGHTS

    ref, _ = load_network(hub.find_weights(R2D2_WEIGHTS["faster2d2_WASF_N16"]))
    ours, theirs = net.state_dict(), ref.state_dict()
    assert list(ours) == list(theirs)
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    assert net.training
    with pytest.raises(ConfigError, match="hold Fast_Quad_L2Net_ConfCFS"):
        trainable("r2d2").build(resolve_config({"model": {"name": "r2d2", "weights": "official",
                                                            "arch": "Quad_L2Net_ConfCFS"}})["model"])
    alike = trainable("alike").build(resolve_config({"model": {"name": "alike", "variant": "alike-t",
                                                                 "weights": "official"}})["model"])
    ref_state = hub.load_torch_checkpoint(hub.find_weights(ALIKE_WEIGHTS["alike-t"]))
    assert set(alike.state_dict()) == set(ref_state)
    assert [k for k, v in ref_state.items() if not torch.equal(alike.state_dict()[k], v)] == []


def test_every_trainable_model_is_known_without_extra_imports():
    import subprocess
    import sys

    code = ("from localfeat.registry import trainable; "
            "print(sorted(n for n in ('r2d2', 'alike', 'disk', 'd2net', 'multilevel_attention') "
            "if trainable(n).name == n))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['alike', 'd2net', 'disk', 'multilevel_attention', 'r2d2']"


def test_stop_at_step_keeps_the_schedule_and_resumes_to_the_uninterrupted_curve(tmp_path):
    conf = {**TINY, "steps": 4, "checkpoint_every": 4, "scheduler.name": "cosine", "optimizer.lr": 0.001}
    train("smoke", tmp_path / "full", conf)
    run = train("smoke", tmp_path / "stopped", {**conf, "stop_at_step": 2})
    rows = _rows(run / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1"] and (run / "weights.pt").exists()
    full = _rows(tmp_path / "full" / "metrics.csv")
    assert [r["lr"] for r in rows] == [r["lr"] for r in full[:2]]           # the schedule runs over `steps`
    assert float(full[1]["lr"]) < 0.001 and "np." not in full[1]["lr"]     # plain floats in the CSV
    import yaml
    path = run / "config.yaml"
    c = yaml.safe_load(path.read_text())
    c["stop_at_step"] = None
    path.write_text(yaml.safe_dump(c))
    resume(run)
    assert [(r["step"], r["total"], r["lr"]) for r in _rows(run / "metrics.csv")] == \
        [(r["step"], r["total"], r["lr"]) for r in full]
    with pytest.raises(ConfigError, match="stop_at_step"):
        resolve_config("smoke", {"stop_at_step": 0})
