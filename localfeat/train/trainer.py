"""The trainer: one loop for every trainable dense model and every loss family.

    from localfeat.train import train, resume
    run_dir = train("smoke", "runs/smoke", overrides={"steps": 20})   # a preset name or a YAML file
    resume("runs/smoke")                                               # continue an interrupted run

RUN_DIR holds:
  config.yaml           the resolved, strict config (its `model` entry names the registered extractor);
  metrics.csv           one row per step: step, total, every loss term, lr, seconds;
  validation.csv        step, mma@1, mma@3, mma@5, features, matches (when validation is on);
  checkpoints/last.pt   model, optimiser, scheduler, AMP scaler, RNG states (python, numpy, torch,
                        CUDA) and the step; written atomically every `checkpoint_every` steps and at the end;
  weights.pt            the trained network in the format its extractor loads:
                        ``localfeat.load_extractor(name, weights="RUN_DIR/weights.pt")``;
  curve.png             the loss (and validation) curve.
`time_limit_minutes` (None = no limit) stops a run cleanly (validation, checkpoint, curve) once the
time is spent; `steps` is then an upper bound (the time a step takes is not reproducible, so a
time-limited run is only resumable, not repeatable to the step). `stop_at_step` (None = none) stops
the same way at a given step without changing the schedule (which runs over `steps`): the way to
repeat, on another machine, a run that its time limit stopped at that step.
Resume is exact: the data stream is a pure function of (seed, sample index), so the loader restarts
at sample step x batch_size, and every random state is restored; the loss curve after a resume is
the one of an uninterrupted run (on the same device and thread count).
Several processes (GPUs): ``torchrun --nproc_per_node N -m localfeat.train ...`` trains the same run with
DistributedDataParallel, `batch_size` being the global batch (see train/distributed.py).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

from ..config import ConfigError
from ..io.atomic import torch_save_atomic, write_text_atomic
from ..registry import trainable
from . import distributed
from .config import DEFAULT_CONFIG, TrainError, list_presets, parse_overrides, resolve_config  # noqa: F401
from .helpers import build_optimizer, freeze, lr_factor, rng_state, seed_all, set_rng_state
from .losses import build_loss
from .pairs import HomographyConf, HomographyPairs, make_loader
from .runlog import CsvLog, plot_curves, truncate_csv
from .validation import evaluate_mma, validation_set

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Train `conf['model']` with `conf['losses']` into `run_dir` (see module docstring).

    dataset: optional torch Dataset of pair dicts (see `localfeat.train.pairs`), e.g. `PosedPairs`;
    default: `HomographyPairs` built from conf['data'].
    """

    def __init__(self, conf: dict, run_dir, dataset=None):
        self.conf = conf
        self.run_dir = Path(run_dir)
        self.adapter = trainable(conf["model"]["name"])  # the model module's training hooks
        from ..ops import resolve_device

        self.dist = distributed.current()  # rank and world size under torchrun (see train/distributed.py)
        self.device = distributed.rank_device(resolve_device(conf["device"]), self.dist)
        if conf["threads"]:
            torch.set_num_threads(int(conf["threads"]))
        d = conf["data"]
        if dataset is None and d["source"] == "colmap_scenes":
            from ..datasets.colmap_scenes import ColmapScenes

            dataset = ColmapScenes(d["scenes"]).posed_pairs(crop_size=int(d["crop_size"]), seed=int(conf["seed"]),
                                                            occlusion_tolerance=float(d["occlusion_tolerance"]))
        elif dataset is None and d["source"] == "megadepth":
            from ..datasets.megadepth import MegaDepthScenes

            dataset = MegaDepthScenes(d["root"], d["scenes"], d["min_overlap"], d["max_overlap"]).posed_pairs(
                crop_size=int(d["crop_size"]), seed=int(conf["seed"]),
                occlusion_tolerance=float(d["occlusion_tolerance"]))
        self.dataset = dataset if dataset is not None else HomographyPairs(
            d["images"], HomographyConf(crop_size=int(d["crop_size"]), base_size=int(d["base_size"]),
                                        scale_range=tuple(d["scale_range"]), rotation_deg=float(d["rotation_deg"]),
                                        zoom=float(d["zoom"]), perspective=float(d["perspective"]),
                                        shear=float(d["shear"]), photometric=float(d["photometric"])),
            seed=int(conf["seed"]), **({"length": int(d["pool"]), "repeat": True} if d["pool"] else {}))
        seed_all(int(conf["seed"]))
        self.net = self.adapter.build(conf["model"]).to(self.device)
        self.net.train()
        self.frozen = freeze(self.net, conf["freeze"])
        self.forward_pair = distributed.PairForward(self.adapter, self.net)
        if self.dist.enabled:
            if int(conf["batch_size"]) % self.dist.world_size:
                raise ConfigError(f"config.batch_size {conf['batch_size']} (the global batch) must be a multiple of "
                                  f"the {self.dist.world_size} processes")
            self.forward_pair = distributed.wrap(self.forward_pair, self.device, self.dist)
            self.net = self.forward_pair.module.net
        params = [p for p in self.net.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("config.freeze froze every parameter: nothing to train")
        self.optimizer = build_optimizer(conf, params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(conf, s))
        self.loss = build_loss(conf["losses"]).to(self.device)
        self.use_amp = bool(conf["amp"]) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self._tb = None

    # -------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:  # the ranks hold the same state; rank 0 writes it
            return
        torch_save_atomic({"step": self.step, "model": self.net.state_dict(),
                           "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                           "scaler": self.scaler.state_dict(), "rng": rng_state(), "format": "localfeat-train-1"},
                          self.checkpoint_path)
        self.adapter.save(self.net, self.conf["model"], self.run_dir / "weights.pt")

    def load_checkpoint(self) -> None:
        if not self.checkpoint_path.is_file():
            raise TrainError(f"{self.checkpoint_path} does not exist: nothing to resume (start with --config)")
        from ..hub import load_torch_checkpoint

        ck = load_torch_checkpoint(self.checkpoint_path)
        if not isinstance(ck, dict) or ck.get("format") != "localfeat-train-1":
            raise TrainError(f"{self.checkpoint_path} is not a localfeat training checkpoint")
        self.net.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        self.step = int(ck["step"])

    # -------------------------------------------------------------- loop
    def _tensorboard(self):
        if self._tb is None and self.conf["tensorboard"] and self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb = False
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tb or None

    def validate(self) -> Optional[dict]:
        v = self.conf["validation"]
        if not v["every"] or not self.dist.is_main:
            return None
        root = validation_set(self.conf, self.run_dir)
        res = evaluate_mma(self.adapter, self.net, root, self.device, v["top_k"], int(v["nms"]), v["resize_max"])
        CsvLog(self.run_dir / "validation.csv", ["step", "mma@1", "mma@3", "mma@5", "mma@3_i", "mma@3_v",
                                                 "features", "matches"]).write(
            {"step": self.step, **res})
        logger.info("step %d: validation MMA@3 %.4f (MMA@1 %.4f, MMA@5 %.4f, %.0f features, %.0f matches)",
                    self.step, res["mma@3"], res["mma@1"], res["mma@5"], res["features"], res["matches"])
        tb = self._tensorboard()
        if tb:
            for k, val in res.items():
                tb.add_scalar(f"val/{k}", val, self.step)
        return res

    def train_step(self, batch: dict) -> dict:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            out0, out1 = self.forward_pair(batch["image0"], batch["image1"])
        if self.dist.enabled:  # every rank computes the loss of the global batch (train/distributed.py)
            out0, out1, batch = distributed.gather_global_batch(out0, out1, batch, self.dist)
        # Losses in float32 (quantised AP and softmaxes are not float16-safe).
        cast = (lambda o: {k: v.float() if torch.is_tensor(v) else v for k, v in o.items()})
        terms = self.loss(cast(out0), cast(out1), batch, self.step)
        if not torch.isfinite(terms["total"]):
            raise FloatingPointError(f"step {self.step}: the loss is {float(terms['total'])}; "
                                     "lower optimizer.lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        # With W ranks, W x loss: DDP averages the ranks' gradients, each of which holds its own samples' part.
        total = terms["total"] * self.dist.world_size if self.dist.enabled else terms["total"]
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}

    def run(self) -> Path:
        from tqdm import tqdm

        c = self.conf
        total = int(c["steps"])
        metrics_log = CsvLog(self.run_dir / "metrics.csv")
        if self.step == 0 and c["validation"]["every"] and not (self.run_dir / "validation.csv").exists():
            self.validate()
        loader = make_loader(self.dataset, int(c["batch_size"]), self.step, total, int(c["data"]["num_workers"]),
                             rank=self.dist.rank, world_size=self.dist.world_size)
        t_start, s_start = time.perf_counter(), self.step
        limit = None if c["time_limit_minutes"] is None else 60.0 * float(c["time_limit_minutes"])
        out_of_time = False
        bar = tqdm(total=total, initial=self.step, desc="train", unit="step",
                   disable=None if self.dist.is_main else True)
        try:
            for batch in loader:
                t0 = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                terms = self.train_step(batch)
                self.step += 1
                names = ["total"] + sorted(k for k in terms if k != "total")
                row = {"step": self.step - 1, **{k: terms[k] for k in names}, "lr": lr,
                       "seconds": round(time.perf_counter() - t0, 4)}
                if self.dist.is_main:
                    metrics_log.write(row)
                tb = self._tensorboard()
                if tb:
                    for k, v in terms.items():
                        tb.add_scalar(f"train/{k}", v, self.step - 1)
                bar.update(1)
                bar.set_postfix(loss=f"{terms['total']:.4f}")
                if self.step % c["log_every"] == 0:
                    rate = (time.perf_counter() - t_start) / max(1, self.step - s_start)
                    logger.info("step %d/%d loss %.4f (%.2f s/step, ETA %.1f min)", self.step, total,
                                terms["total"], rate, rate * (total - self.step) / 60)
                # Validation first: a run killed between the two redoes both from the previous checkpoint.
                if c["validation"]["every"] and (self.step % c["validation"]["every"] == 0 or self.step == total):
                    self.validate()
                out_of_time = (limit is not None and distributed.any_rank(  # all ranks stop at the same step
                    time.perf_counter() - t_start > limit, self.dist, self.device)) or (
                    c["stop_at_step"] is not None and self.step >= int(c["stop_at_step"]))
                if out_of_time and not (c["validation"]["every"] and self.step % c["validation"]["every"] == 0):
                    self.validate()
                if self.step % c["checkpoint_every"] == 0 or self.step == total or out_of_time:
                    self.save_checkpoint()
                if out_of_time:
                    logger.info("time limit of %s min or stop_at_step %s reached at step %d: stopping "
                                "(resume to continue)", c["time_limit_minutes"], c["stop_at_step"], self.step)
                    break
        finally:
            bar.close()
        distributed.barrier(self.dist)  # the other ranks return once rank 0 has written the run
        if (self.step >= total or out_of_time) and self.dist.is_main:
            try:
                plot_curves(self.run_dir)
            except Exception as exc:  # a plotting problem must not lose a finished run
                logger.warning("could not draw %s: %s", self.run_dir / "curve.png", exc)
        return self.run_dir


# ------------------------------------------------------------------------------------------ API
def train(config: str | os.PathLike | dict, run_dir, overrides: Optional[dict] = None, dataset=None,
          overwrite: bool = False) -> Path:
    """Start a run: resolve the config (preset name, YAML file or dict, then dotted overrides), write
    RUN_DIR/config.yaml, train. An existing run is an error (resume it, or pass overwrite=True)."""
    run_dir = Path(run_dir)
    conf = resolve_config(config, overrides)
    ctx = distributed.setup(conf["device"])  # under torchrun: join the process group
    existing = (run_dir / "checkpoints" / "last.pt").exists() or (run_dir / "metrics.csv").exists()
    if existing and not overwrite:
        raise TrainError(f"{run_dir} already holds a run: resume it with `localfeat train --resume {run_dir}` "
                         "or choose another output folder")
    distributed.barrier(ctx)  # every rank has looked before rank 0 writes
    if ctx.is_main:
        for name in ("metrics.csv", "validation.csv", "checkpoints/last.pt", "weights.pt", "curve.png"):
            (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(conf, sort_keys=False))
    distributed.barrier(ctx)
    trainer = Trainer(conf, run_dir, dataset=dataset)
    logger.info("training %s (%d parameters trainable, frozen: %d) into %s", conf["model"]["name"],
                sum(p.numel() for p in trainer.net.parameters() if p.requires_grad), len(trainer.frozen), run_dir)
    return trainer.run()


def resume(run_dir, steps: Optional[int] = None, dataset=None) -> Path:
    """Continue the run in RUN_DIR from checkpoints/last.pt (optionally to a new total of `steps`)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise TrainError(f"{path} does not exist: {run_dir} is not a training run directory")
    conf = resolve_config(yaml.safe_load(path.read_text()), {"steps": steps} if steps else None)
    ctx = distributed.setup(conf["device"])  # under torchrun: join the process group
    if steps and ctx.is_main:
        write_text_atomic(path, yaml.safe_dump(conf, sort_keys=False))
    trainer = Trainer(conf, run_dir, dataset=dataset)
    trainer.load_checkpoint()
    if ctx.is_main:
        truncate_csv(run_dir / "metrics.csv", trainer.step)
        truncate_csv(run_dir / "validation.csv", trainer.step + 1)
    logger.info("resuming %s at step %d of %d", run_dir, trainer.step, conf["steps"])
    return trainer.run()
