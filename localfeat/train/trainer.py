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
time-limited run is only resumable, not repeatable to the step).
Resume is exact: the data stream is a pure function of (seed, sample index), so the loader restarts
at sample step x batch_size, and every random state is restored; the loss curve after a resume is
the one of an uninterrupted run (on the same device and thread count).
"""
from __future__ import annotations

import copy
import csv
import logging
import os
import random
import time
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml

from ..io.atomic import atomic_path, torch_save_atomic, write_text_atomic
from ..registry import ConfigError, parse_conf_items
from .adapters import detection_and_descriptors, freeze, get_adapter
from .losses import build_loss
from .pairs import HomographyConf, HomographyPairs, make_loader

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = {
    "model": "r2d2",
    "freeze": [],
    "seed": 0,
    "steps": 1000,
    "batch_size": 4,
    "data": {
        "source": "homography",
        "images": None,
        "scenes": None,
        "occlusion_tolerance": 0.05,
        "crop_size": 192,
        "base_size": 384,
        "scale_range": [0.6, 1.2],
        "rotation_deg": 30.0,
        "zoom": 0.4,
        "perspective": 0.3,
        "shear": 0.1,
        "photometric": 0.7,
        "pool": None,
        "num_workers": 2,
    },
    "losses": {"reliability": 1.0, "repeatability": 1.0},
    "optimizer": {"name": "adam", "lr": 1e-4, "weight_decay": 5e-4},
    "scheduler": {"name": "constant", "warmup_steps": 0, "min_lr": 0.0},
    "checkpoint_every": 100,
    "log_every": 10,
    "validation": {"every": 0, "root": None, "synth_sequences": 6, "synth_size": 320, "synth_seed": 1,
                   "top_k": 1000, "nms": 3, "resize_max": None},
    "time_limit_minutes": None,
    "device": None,
    "amp": True,
    "threads": None,
    "tensorboard": True,
}


class TrainError(RuntimeError):
    """A run directory that cannot be (re)started: existing run, missing checkpoint."""


# ------------------------------------------------------------------------------------------ config
def list_presets() -> dict[str, str]:
    """{preset name: first comment line} of the presets shipped in localfeat/train/presets."""
    out = {}
    for entry in sorted(resources.files("localfeat.train").joinpath("presets").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            first = entry.read_text().splitlines()[0] if entry.read_text() else ""
            out[entry.name[:-5]] = first.lstrip("# ").strip()
    return out


def read_config_source(source: str | os.PathLike) -> dict:
    """A preset name (see `list_presets`) or a YAML file -> dict."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"--config {source}: no such file")
        text = path.read_text()
    else:
        entry = resources.files("localfeat.train").joinpath("presets", f"{source}.yaml")
        if not entry.is_file():
            raise ConfigError(f"--config {source!r} is neither a YAML file nor a preset; "
                              f"presets: {sorted(list_presets())}")
        text = entry.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping, got {type(data).__name__}")
    return data


def _merge_strict(defaults: dict, conf: dict, where: str) -> dict:
    """Nested strict merge: unknown keys are errors; 'losses' and 'model' are free-form (checked later)."""
    unknown = sorted(set(conf) - set(defaults))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(defaults)}")
    out = copy.deepcopy(defaults)
    for key, value in conf.items():
        if isinstance(defaults.get(key), dict) and key not in ("losses",):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} must be a mapping, got {value!r}")
            out[key] = _merge_strict(defaults[key], value, f"{where}.{key}")
        elif key == "losses":
            out[key] = copy.deepcopy(value)
        else:
            out[key] = value
    return out


def apply_overrides(conf: dict, overrides: dict) -> dict:
    """Set dotted keys ('data.crop_size': 64, 'model.mchan': 2, 'losses': {...}) in a nested config."""
    conf = copy.deepcopy(conf)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = conf
        for p in parts[:-1]:
            if p == "model" and isinstance(node.get("model"), str):
                node["model"] = {"name": node["model"]}
            if p not in node or not isinstance(node[p], dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return conf


def resolve_config(source: str | os.PathLike | dict, overrides: Optional[dict] = None) -> dict:
    """The full strict config: defaults <- preset/file/dict <- overrides; model and losses validated."""
    raw = dict(source) if isinstance(source, dict) else read_config_source(source)
    raw = apply_overrides(raw, overrides or {})
    conf = _merge_strict(DEFAULT_CONFIG, raw, "config")
    model = conf["model"]
    if isinstance(model, str):
        model = {"name": model}
    if not isinstance(model, dict) or "name" not in model:
        raise ConfigError(f"config.model must be NAME or {{name: NAME, ...}}, got {conf['model']!r}")
    adapter = get_adapter(model["name"])
    conf["model"] = {"name": model["name"], **adapter.resolve(model)}
    build_loss(conf["losses"])  # validates names and keys
    for key in ("steps", "batch_size", "checkpoint_every", "log_every"):
        v = conf[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"config.{key} must be a positive integer, got {v!r}")
    if conf["data"]["source"] not in ("homography", "colmap_scenes"):
        raise ConfigError(f"config.data.source {conf['data']['source']!r} is not 'homography' (data.images: a folder "
                          "of photos) or 'colmap_scenes' (data.scenes: a dataset of `localfeat dataset from-colmap`)")
    if conf["data"]["source"] == "colmap_scenes" and not conf["data"]["scenes"]:
        raise ConfigError("config.data.source is 'colmap_scenes': set data.scenes to the dataset folder")
    return conf


# ------------------------------------------------------------------------------------------ helpers
def _rng_state() -> dict:
    """Every random state, as tensors and plain containers (readable with torch's weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_factor(conf: dict, step: int) -> float:
    s = conf["scheduler"]
    warm = int(s.get("warmup_steps") or 0)
    if warm and step < warm:
        return (step + 1) / warm
    if s["name"] == "constant":
        return 1.0
    if s["name"] == "cosine":
        base, lo = conf["optimizer"]["lr"], s.get("min_lr", 0.0)
        t = min(1.0, (step - warm) / max(1, conf["steps"] - warm))
        return (lo + (base - lo) * 0.5 * (1 + np.cos(np.pi * t))) / base
    if s["name"] == "linear":
        return max(0.0, 1 - (step - warm) / max(1, conf["steps"] - warm))
    raise ConfigError(f"config.scheduler.name {s['name']!r} is not one of constant, cosine, linear")


def _build_optimizer(conf: dict, params):
    o = conf["optimizer"]
    if o["name"] == "adam":
        return torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
    if o["name"] == "adamw":
        return torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], weight_decay=o["weight_decay"], momentum=0.9)
    raise ConfigError(f"config.optimizer.name {o['name']!r} is not one of adam, adamw, sgd")


def _truncate_csv(path: Path, before_step: int) -> None:
    """Keep the header and the rows with step < before_step (rows of steps that will be redone go)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < before_step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(keep)


class _CsvLog:
    def __init__(self, path: Path, columns: Optional[list] = None):
        self.path, self.columns = path, columns
        if path.exists() and path.stat().st_size:
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            self.columns = header or columns

    def write(self, row: dict) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        if self.columns is None:
            self.columns = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self.columns)
            w.writerow([_fmt(row.get(c, "")) for c in self.columns])
            f.flush()


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


# ------------------------------------------------------------------------------------------ validation
@torch.no_grad()
def extract_dense(adapter, net, image: np.ndarray, device, top_k: Optional[int] = 1000, nms: int = 3):
    """Keypoints of one uint8 RGB image with the network being trained (single scale): NMS on the
    score map, the top_k best, descriptors at those pixels. Returns `Features` in image pixels."""
    from ..ops import image_to_tensor, max_filter_nms, top_k_indices
    from ..types import Features

    h, w = image.shape[:2]
    x = image_to_tensor(image, device)
    out = adapter.dense(net, x)
    score, desc = detection_and_descriptors(out)
    stride = int(out.get("stride", 1))
    mask = max_filter_nms(score, nms)[0, 0]
    ys, xs = mask.nonzero(as_tuple=True)
    sc = score[0, 0, ys, xs]
    keep = top_k_indices(sc, top_k)
    ys, xs, sc = ys[keep], xs[keep], sc[keep]
    d = torch.nn.functional.normalize(desc[0][:, ys, xs].t().float(), dim=1)
    kp = torch.stack([xs, ys], -1).float() * stride + (stride - 1) / 2
    inside = (kp[:, 0] <= w - 1) & (kp[:, 1] <= h - 1)
    return Features(kp[inside].cpu().numpy(), sc[inside].float().cpu().numpy(), d[inside].cpu().numpy(), (w, h))


def _extract_resized(adapter, net, image: np.ndarray, device, top_k, nms, resize_max):
    """`extract_dense` on the image downscaled to `resize_max` (None = as is), keypoints in original pixels."""
    from ..io.images import map_keypoints_to_original, resize_max as resize

    small, factors = resize(image, resize_max)
    f = extract_dense(adapter, net, small, device, top_k, nms)
    if factors != (1.0, 1.0):
        f.keypoints = map_keypoints_to_original(f.keypoints, factors).astype(np.float32)
    f.image_size = (image.shape[1], image.shape[0])
    return f


def validation_set(conf: dict, run_dir: Path) -> Path:
    """The HPatches-format folder validated on: `validation.root`, or a synthetic set generated once
    (from the scikit-image photos) in RUN_DIR/val_hpatches."""
    v = conf["validation"]
    if v["root"]:
        return Path(v["root"])
    root = run_dir / "val_hpatches"
    if not (root / "synth.json").exists():
        from ..datasets.synth import generate

        generate(root, n_sequences=int(v["synth_sequences"]), seed=int(v["synth_seed"]),
                 image_max_size=int(v["synth_size"]))
    return root


def evaluate_mma(adapter, net, root: Path, device, top_k: Optional[int] = 1000, nms: int = 3,
                 resize_max: Optional[int] = None) -> dict:
    """MMA at 1, 3, 5 px (D2-Net protocol: mutual NN, all pairs 1-k of every sequence) of the network
    on an HPatches-format folder, MMA@3 of the i_ and v_ sequences apart ('mma@3_i', 'mma@3_v'; NaN
    when there are none), mean features per image and matches per pair. resize_max: images are first
    downscaled so that their longer side is at most this (keypoints mapped back to full resolution)."""
    from ..datasets.hpatches import HPatchesSequences
    from ..eval import metrics
    from ..io.images import read_image

    ds = HPatchesSequences(root, exclude=())
    was_training = net.training
    net.eval()
    acc, nfeat, nmatch, kinds = [], [], [], []
    try:
        for seq in ds.sequences:
            f1 = _extract_resized(adapter, net, read_image(ds.image_path(seq, 1), "rgb"), device, top_k, nms,
                                  resize_max)
            nfeat.append(len(f1))
            for k in range(2, 7):
                fk = _extract_resized(adapter, net, read_image(ds.image_path(seq, k), "rgb"), device, top_k, nms,
                                      resize_max)
                nfeat.append(len(fk))
                m = metrics.mutual_nn_matches(f1.descriptors, fk.descriptors) if len(f1) and len(fk) \
                    else np.zeros((0, 2), np.int64)
                d = metrics.reprojection_distances(f1.keypoints, fk.keypoints, m, ds.homography(seq, k))
                acc.append(metrics.matching_accuracy(d, (1, 3, 5)))
                kinds.append(seq[0])
                nmatch.append(len(m))
    finally:
        net.train(was_training)
    a = np.mean(acc, axis=0)
    out = {"mma@1": float(a[0]), "mma@3": float(a[1]), "mma@5": float(a[2])}
    for kind in ("i", "v"):
        sel = [x[1] for x, k in zip(acc, kinds) if k == kind]
        out[f"mma@3_{kind}"] = float(np.mean(sel)) if sel else float("nan")
    return {**out, "features": float(np.mean(nfeat)), "matches": float(np.mean(nmatch))}


# ------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Train `conf['model']` with `conf['losses']` into `run_dir` (see module docstring).

    dataset: optional torch Dataset of pair dicts (see `localfeat.train.pairs`), e.g. `PosedPairs`;
    default: `HomographyPairs` built from conf['data'].
    """

    def __init__(self, conf: dict, run_dir, dataset=None):
        self.conf = conf
        self.run_dir = Path(run_dir)
        self.adapter = get_adapter(conf["model"]["name"])
        from ..ops import resolve_device

        self.device = resolve_device(conf["device"])
        if conf["threads"]:
            torch.set_num_threads(int(conf["threads"]))
        d = conf["data"]
        if dataset is None and d["source"] == "colmap_scenes":
            from ..datasets.colmap_scenes import ColmapScenes

            dataset = ColmapScenes(d["scenes"]).posed_pairs(crop_size=int(d["crop_size"]), seed=int(conf["seed"]),
                                                            occlusion_tolerance=float(d["occlusion_tolerance"]))
        self.dataset = dataset if dataset is not None else HomographyPairs(
            d["images"], HomographyConf(crop_size=int(d["crop_size"]), base_size=int(d["base_size"]),
                                        scale_range=tuple(d["scale_range"]), rotation_deg=float(d["rotation_deg"]),
                                        zoom=float(d["zoom"]), perspective=float(d["perspective"]),
                                        shear=float(d["shear"]), photometric=float(d["photometric"])),
            seed=int(conf["seed"]), **({"length": int(d["pool"]), "repeat": True} if d["pool"] else {}))
        _seed_all(int(conf["seed"]))
        self.net = self.adapter.build(conf["model"]).to(self.device)
        self.net.train()
        self.frozen = freeze(self.net, conf["freeze"])
        params = [p for p in self.net.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("config.freeze froze every parameter: nothing to train")
        self.optimizer = _build_optimizer(conf, params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: _lr_factor(conf, s))
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
        torch_save_atomic({"step": self.step, "model": self.net.state_dict(),
                           "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                           "scaler": self.scaler.state_dict(), "rng": _rng_state(), "format": "localfeat-train-1"},
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
        _set_rng_state(ck["rng"])
        self.step = int(ck["step"])

    # -------------------------------------------------------------- loop
    def _tensorboard(self):
        if self._tb is None and self.conf["tensorboard"]:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb = False
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tb or None

    def validate(self) -> Optional[dict]:
        v = self.conf["validation"]
        if not v["every"]:
            return None
        root = validation_set(self.conf, self.run_dir)
        res = evaluate_mma(self.adapter, self.net, root, self.device, v["top_k"], int(v["nms"]), v["resize_max"])
        _CsvLog(self.run_dir / "validation.csv", ["step", "mma@1", "mma@3", "mma@5", "mma@3_i", "mma@3_v",
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
            out0 = self.adapter.dense(self.net, batch["image0"])
            out1 = self.adapter.dense(self.net, batch["image1"])
        # Losses in float32 (quantised AP and softmaxes are not float16-safe).
        cast = (lambda o: {k: v.float() if torch.is_tensor(v) else v for k, v in o.items()})
        terms = self.loss(cast(out0), cast(out1), batch, self.step)
        if not torch.isfinite(terms["total"]):
            raise FloatingPointError(f"step {self.step}: the loss is {float(terms['total'])}; "
                                     "lower optimizer.lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}

    def run(self) -> Path:
        from tqdm import tqdm

        c = self.conf
        total = int(c["steps"])
        metrics_log = _CsvLog(self.run_dir / "metrics.csv")
        if self.step == 0 and c["validation"]["every"] and not (self.run_dir / "validation.csv").exists():
            self.validate()
        loader = make_loader(self.dataset, int(c["batch_size"]), self.step, total, int(c["data"]["num_workers"]))
        t_start, s_start = time.perf_counter(), self.step
        limit = None if c["time_limit_minutes"] is None else 60.0 * float(c["time_limit_minutes"])
        out_of_time = False
        bar = tqdm(total=total, initial=self.step, desc="train", unit="step", disable=None)
        try:
            for batch in loader:
                t0 = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                terms = self.train_step(batch)
                self.step += 1
                names = ["total"] + sorted(k for k in terms if k != "total")
                row = {"step": self.step - 1, **{k: terms[k] for k in names}, "lr": lr,
                       "seconds": round(time.perf_counter() - t0, 4)}
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
                out_of_time = limit is not None and time.perf_counter() - t_start > limit
                if out_of_time and not (c["validation"]["every"] and self.step % c["validation"]["every"] == 0):
                    self.validate()
                if self.step % c["checkpoint_every"] == 0 or self.step == total or out_of_time:
                    self.save_checkpoint()
                if out_of_time:
                    logger.info("time limit of %s min reached at step %d: stopping (resume to continue)",
                                c["time_limit_minutes"], self.step)
                    break
        finally:
            bar.close()
        if self.step >= total or out_of_time:
            try:
                plot_curves(self.run_dir)
            except Exception as exc:  # a plotting problem must not lose a finished run
                logger.warning("could not draw %s: %s", self.run_dir / "curve.png", exc)
        return self.run_dir


def plot_curves(run_dir) -> Path:
    """RUN_DIR/curve.png: total loss per step (and a moving average), validation MMA@3 when logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = np.array([int(r["step"]) for r in rows])
    total = np.array([float(r["total"]) for r in rows])
    val = run_dir / "validation.csv"
    fig, ax = plt.subplots(1, 2 if val.exists() else 1, figsize=(11 if val.exists() else 6, 4), squeeze=False)
    ax[0, 0].plot(steps, total, lw=0.5, alpha=0.5, label="total")
    k = max(1, len(total) // 15)
    if len(total) > k:
        ma = np.convolve(total, np.ones(k) / k, mode="valid")
        ax[0, 0].plot(steps[k - 1:], ma, lw=1.5, label=f"moving average ({k})")
    ax[0, 0].set_xlabel("step")
    ax[0, 0].set_ylabel("loss")
    ax[0, 0].legend()
    if val.exists():
        with open(val, newline="") as f:
            vr = list(csv.DictReader(f))
        for key in ("mma@1", "mma@3", "mma@5"):
            ax[0, 1].plot([int(r["step"]) for r in vr], [float(r[key]) for r in vr], marker="o", label=key)
        ax[0, 1].set_xlabel("step")
        ax[0, 1].set_ylabel("validation MMA")
        ax[0, 1].set_ylim(0, 1)
        ax[0, 1].legend()
    fig.tight_layout()
    out = run_dir / "curve.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------ API
def train(config: str | os.PathLike | dict, run_dir, overrides: Optional[dict] = None, dataset=None,
          overwrite: bool = False) -> Path:
    """Start a run: resolve the config (preset name, YAML file or dict, then dotted overrides), write
    RUN_DIR/config.yaml, train. An existing run is an error (resume it, or pass overwrite=True)."""
    run_dir = Path(run_dir)
    conf = resolve_config(config, overrides)
    if (run_dir / "checkpoints" / "last.pt").exists() or (run_dir / "metrics.csv").exists():
        if not overwrite:
            raise TrainError(f"{run_dir} already holds a run: resume it with `localfeat train --resume {run_dir}` "
                             "or choose another output folder")
        for name in ("metrics.csv", "validation.csv", "checkpoints/last.pt", "weights.pt", "curve.png"):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(conf, sort_keys=False))
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
    if steps:
        write_text_atomic(path, yaml.safe_dump(conf, sort_keys=False))
    trainer = Trainer(conf, run_dir, dataset=dataset)
    trainer.load_checkpoint()
    _truncate_csv(run_dir / "metrics.csv", trainer.step)
    _truncate_csv(run_dir / "validation.csv", trainer.step + 1)
    logger.info("resuming %s at step %d of %d", run_dir, trainer.step, conf["steps"])
    return trainer.run()


def parse_overrides(items) -> dict:
    """['a.b=1', 'losses={ap: 1}'] -> {'a.b': 1, 'losses': {'ap': 1}} (values parsed as YAML)."""
    return parse_conf_items(items)
