"""DeLF's two training stages on an image folder laid out one class per sub-folder.

    from localfeat.train.delf import DelfTrainConf, train_delf
    result = train_delf("landmarks/", "runs/delf", DelfTrainConf(arch="resnet50", steps1=200, steps2=200))
    localfeat.load_extractor("delf", weights="runs/delf/delf.pt")

Stage 1 ("fine-tune"): the whole ResNet with a new `fc` (num_classes) trained with cross-entropy on global
average pooling (DeLF fine-tunes its ImageNet ResNet-50 on landmark classes).
Stage 2 ("keypoint"): the backbone up to conv4 (`layer3`) copied from stage 1 and frozen; the attention head
and a linear classifier are trained with cross-entropy through DeLF's attention-weighted pooling
(mean over cells of attention x L2-normalised conv4 features).
Augmentation (`augment=True`): random scale of the whole image (scale_range), random crop, random gamma
(gamma_range), random horizontal flip. Evaluation (the reported loss): every image, centre crop, no
augmentation, eval mode, before and after each stage.

RUN_DIR receives stage1.csv / stage2.csv (step, loss, accuracy of the batch), stage1_backbone.pt (torchvision
keys), delf.pt (the extractor's checkpoint), attention.png (attention maps of a few images), summary.json.
"""
from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..extractors._resnet import ResNet
from ..extractors.delf import CHECKPOINT_FORMAT, DelfNet
from ..io.atomic import torch_save_atomic, write_text_atomic
from ..io.images import list_images, read_image
from ..ops import IMAGENET_MEAN, IMAGENET_STD, resolve_device

logger = logging.getLogger(__name__)


@dataclass
class DelfTrainConf:
    arch: str = "resnet50"
    backbone_weights: Optional[str] = None   # torchvision ImageNet file (or a stage1_backbone.pt) to start from
    steps1: int = 100                        # stage 1 steps (0 = skip: the backbone as loaded)
    steps2: int = 100                        # stage 2 steps
    batch_size: int = 8
    crop_size: int = 160
    base_size: int = 224                     # images are first resized so that max(H, W) = base_size
    lr1: float = 1e-3
    lr2: float = 1e-3
    augment: bool = True
    scale_range: tuple = (0.7, 1.3)
    gamma_range: tuple = (0.7, 1.4)
    seed: int = 0
    device: Optional[str] = None
    frozen_bn: bool = True                   # stage 1 with frozen batch norms (tiny batches; False = update them)
    time_limit_minutes: Optional[float] = None   # per stage


class ClassFolder:
    """Images of ROOT/<class>/**/<image>: class names sorted, images decoded once and resized to base_size."""

    def __init__(self, root, base_size: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"training folder {self.root} does not exist (expected ROOT/<class>/<images>)")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if len(self.classes) < 2:
            raise ValueError(f"{self.root} holds {len(self.classes)} class sub-folder(s); DeLF training needs >= 2")
        self.images, self.labels, self.names = [], [], []
        for label, cls in enumerate(self.classes):
            base, names = list_images(self.root / cls)
            if not names:
                raise ValueError(f"class folder {self.root / cls} holds no image")
            for n in names:
                img = read_image(base / n, "rgb")
                s = base_size / max(img.shape[:2])
                img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                                 interpolation=cv2.INTER_AREA)
                self.images.append(img)
                self.labels.append(label)
                self.names.append(f"{cls}/{n}")

    def __len__(self) -> int:
        return len(self.images)


def _crop(img: np.ndarray, size: int, rng: Optional[np.random.Generator]) -> np.ndarray:
    """A size x size crop (padded by reflection when the image is smaller); centre when rng is None."""
    h, w = img.shape[:2]
    if h < size or w < size:
        img = cv2.copyMakeBorder(img, 0, max(0, size - h), 0, max(0, size - w), cv2.BORDER_REFLECT)
        h, w = img.shape[:2]
    y = (h - size) // 2 if rng is None else int(rng.integers(0, h - size + 1))
    x = (w - size) // 2 if rng is None else int(rng.integers(0, w - size + 1))
    return img[y:y + size, x:x + size]


def _augment(img: np.ndarray, conf: DelfTrainConf, rng: np.random.Generator) -> np.ndarray:
    if conf.augment:
        s = rng.uniform(*conf.scale_range)
        img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                         interpolation=cv2.INTER_LINEAR)
    img = _crop(img, conf.crop_size, rng)
    if conf.augment:
        gamma = rng.uniform(*conf.gamma_range)
        img = np.clip(255.0 * (img / 255.0) ** gamma, 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            img = img[:, ::-1]
    return np.ascontiguousarray(img)


def _to_batch(images: list, device) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0)
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - m) / s).to(device)


@torch.no_grad()
def evaluate(logits_fn, data: ClassFolder, conf: DelfTrainConf, device, modules) -> dict:
    """Mean cross-entropy and accuracy over every image (centre crop, eval mode)."""
    states = [m.training for m in modules]
    for m in modules:
        m.eval()
    losses, correct = [], 0
    try:
        for i in range(0, len(data), conf.batch_size):
            imgs = [_crop(im, conf.crop_size, None) for im in data.images[i:i + conf.batch_size]]
            y = torch.tensor(data.labels[i:i + conf.batch_size], device=device)
            logits = logits_fn(_to_batch(imgs, device))
            losses.append(F.cross_entropy(logits, y, reduction="sum").item())
            correct += int((logits.argmax(1) == y).sum())
    finally:
        for m, st in zip(modules, states):
            m.train(st)
    return {"loss": float(np.sum(losses) / len(data)), "accuracy": correct / len(data)}


def _run_stage(name: str, logits_fn, params, data: ClassFolder, conf: DelfTrainConf, steps: int, lr: float,
               device, run_dir: Path, rng: np.random.Generator, deadline: Optional[float]) -> int:
    from tqdm import tqdm

    opt = torch.optim.Adam(params, lr=lr)
    done = 0
    with open(run_dir / f"{name}.csv", "w", newline="") as fh:
        log = csv.writer(fh)
        log.writerow(["step", "loss", "accuracy"])
        for step in tqdm(range(steps), desc=f"delf {name}", disable=None):
            idx = rng.integers(0, len(data), conf.batch_size)
            x = _to_batch([_augment(data.images[i], conf, rng) for i in idx], device)
            y = torch.tensor([data.labels[i] for i in idx], device=device)
            logits = logits_fn(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.writerow([step, f"{loss.item():.6f}", f"{float((logits.argmax(1) == y).float().mean()):.4f}"])
            done += 1
            if deadline is not None and time.monotonic() > deadline:
                logger.info("delf %s: time limit reached after %d steps", name, done)
                break
    return done


def save_delf_checkpoint(net: DelfNet, arch: str, path) -> Path:
    """The extractor's checkpoint: {'format', 'arch', 'model': state_dict (backbone.*, attention.*, classifier.*)}."""
    return torch_save_atomic({"format": CHECKPOINT_FORMAT, "arch": arch, "model": net.state_dict()}, path)


def attention_picture(net: DelfNet, images: list, path, device) -> Path:
    """Each image beside its attention map (one row per image), written as PNG."""
    from ..viz import draw_heatmaps, save_png

    rows = []
    net.eval()
    with torch.no_grad():
        for img in images:
            att = net(_to_batch([img], device))["attention"][0, 0].cpu().numpy()
            rows.append(draw_heatmaps(img, {"attention": att}))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return save_png(path, np.concatenate(rows, 0))


def train_delf(images_root, run_dir, conf: DelfTrainConf = DelfTrainConf()) -> dict:
    """Run stage 1 then stage 2 (see module docstring); returns the summary (also RUN_DIR/summary.json):
    loss/accuracy before and after each stage, steps done, seconds, output paths."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(conf.seed)
    rng = np.random.default_rng(conf.seed)
    device = resolve_device(conf.device)

    def deadline():
        return None if conf.time_limit_minutes is None else time.monotonic() + 60 * conf.time_limit_minutes
    data = ClassFolder(images_root, conf.base_size)
    n_cls = len(data.classes)
    logger.info("delf training: %d images in %d classes from %s", len(data), n_cls, images_root)
    summary: dict = {"conf": asdict(conf), "classes": data.classes, "images": len(data)}
    t0 = time.monotonic()

    # ---- stage 1: classification fine-tuning of the whole backbone
    resnet = ResNet(conf.arch, num_classes=1000, frozen_bn=conf.frozen_bn)
    if conf.backbone_weights:
        from ..hub import load_torch_checkpoint

        sd = load_torch_checkpoint(conf.backbone_weights)
        missing, unexpected = resnet.load_state_dict(sd, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc.")]:
            raise ValueError(f"{conf.backbone_weights} is not a {conf.arch} state_dict (torchvision keys): "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    resnet.fc = torch.nn.Linear(resnet.fc.in_features, n_cls)
    resnet.to(device).train()
    stage1 = lambda x: resnet(x, outputs=("logits",))["logits"]  # noqa: E731
    summary["stage1_before"] = evaluate(stage1, data, conf, device, [resnet])
    params = [p for p in resnet.parameters() if p.requires_grad]
    summary["stage1_steps"] = _run_stage("stage1", stage1, params, data, conf, conf.steps1, conf.lr1, device,
                                         run_dir, rng, deadline()) if conf.steps1 else 0
    summary["stage1_after"] = evaluate(stage1, data, conf, device, [resnet])
    torch_save_atomic({k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")},
                      run_dir / "stage1_backbone.pt")

    # ---- stage 2: attention through attention-weighted pooling, backbone frozen
    net = DelfNet(conf.arch, num_classes=n_cls, frozen_bn=True)
    backbone_sd = {k: v for k, v in resnet.state_dict().items() if k in net.backbone.state_dict()}
    net.backbone.load_state_dict(backbone_sd, strict=True)
    for p in net.backbone.parameters():
        p.requires_grad_(False)
    net.to(device).train()
    net.backbone.eval()
    stage2 = lambda x: net(x)["logits"]  # noqa: E731
    summary["stage2_before"] = evaluate(stage2, data, conf, device, [net])
    net.backbone.eval()
    params = list(net.attention.parameters()) + list(net.classifier.parameters())
    summary["stage2_steps"] = _run_stage("stage2", stage2, params, data, conf, conf.steps2, conf.lr2, device,
                                         run_dir, rng, deadline()) if conf.steps2 else 0
    summary["stage2_after"] = evaluate(stage2, data, conf, device, [net])
    summary["seconds"] = time.monotonic() - t0
    summary["checkpoint"] = str(save_delf_checkpoint(net, conf.arch, run_dir / "delf.pt"))
    picks = [data.images[i] for i in np.linspace(0, len(data) - 1, min(4, len(data))).round().astype(int)]
    summary["attention_png"] = str(attention_picture(net, picks, run_dir / "attention.png", device))
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    logger.info("delf stage 1 loss %.4f -> %.4f, stage 2 loss %.4f -> %.4f (%.0f s)",
                summary["stage1_before"]["loss"], summary["stage1_after"]["loss"],
                summary["stage2_before"]["loss"], summary["stage2_after"]["loss"], summary["seconds"])
    return summary


def build_class_folders(sources: dict, out_dir, mode: str = "symlink") -> Path:
    """A class-per-folder set: OUT_DIR/<class>/<file> for {class: folder of images}; symlinks by default
    ('copy' copies). Returns OUT_DIR."""
    import shutil

    out_dir = Path(out_dir)
    for cls, folder in sources.items():
        base, names = list_images(folder)
        (out_dir / cls).mkdir(parents=True, exist_ok=True)
        for n in names:
            dst = out_dir / cls / Path(n).name
            if dst.exists() or dst.is_symlink():
                continue
            if mode == "copy":
                shutil.copy2(base / n, dst)
            else:
                dst.symlink_to((base / n).resolve())
    return out_dir
