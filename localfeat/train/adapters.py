"""How each dense model of the registry is trained: its network, its dense maps, its checkpoint.

An `Adapter` names a registered extractor and gives
  build(conf)        -> the network (nn.Module), from scratch (conf['weights'] None), from a weights
                        file (a path), or from the official weights (conf['weights'] = 'official');
  dense(net, images) -> the dense outputs the losses read (see `localfeat.train.losses._base`):
                        images (B, 3, H, W) float RGB in [0, 1];
  save(net, conf, path) -> a weights file that `localfeat.load_extractor(name, weights=path, **extractor_conf)`
                        loads;
  extractor_conf(conf) -> the extractor config that matches the trained network (e.g. the variant).
Supported: r2d2 (R2D2 / Fast-R2D2, any width), alike, disk, d2net. Adding a model = one `register` call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .. import hub
from ..io.atomic import torch_save_atomic
from ..ops import IMAGENET_MEAN, IMAGENET_STD, l2_normalize
from ..registry import ConfigError, merge_conf


@dataclass
class Adapter:
    name: str
    default_conf: dict
    build: Callable
    dense: Callable
    save: Callable
    extractor_conf: Callable = field(default=lambda conf: {})

    def resolve(self, conf: dict) -> dict:
        """The full model config (strict): `default_conf` updated with `conf` (without 'name')."""
        return merge_conf(self.default_conf, {k: v for k, v in conf.items() if k != "name"},
                          where=f"model {self.name!r} (training)")


ADAPTERS: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    ADAPTERS[adapter.name] = adapter
    return adapter


# Adapters defined beside their model's own training code; imported on first use (no import cycle).
ADAPTER_MODULES = ("localfeat.train.multilevel_attention",)


def get_adapter(name: str) -> Adapter:
    import importlib

    from ..registry import model_classes

    for module in ADAPTER_MODULES:
        importlib.import_module(module)
    if name not in ADAPTERS:
        known = sorted(model_classes("extractor"))
        raise ConfigError(f"model {name!r} cannot be trained: trainable models are {sorted(ADAPTERS)} "
                          f"(registered extractors: {known})")
    return ADAPTERS[name]


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _weights_path(conf: dict, spec: hub.WeightSpec):
    """conf['weights']: None (no file), 'official' (the file of `spec`, found and verified) or a path."""
    w = conf["weights"]
    if w is None:
        return None
    if w == "official":
        return hub.find_weights(spec)
    return hub.find_weights(spec, override=w)


# ------------------------------------------------------------------------------------------ R2D2
def _r2d2_net_string(conf: dict) -> str:
    args = f"dim={int(conf['dim'])}, mchan={int(conf['mchan'])}, relu22={bool(conf['relu22'])}"
    return f"{conf['arch']}({args})"


def _r2d2_build(conf: dict):
    from ..extractors._r2d2_nets import R2D2Net, load_network, parse_net_string
    from ..extractors.r2d2 import WEIGHTS

    arch, kwargs = parse_net_string(_r2d2_net_string(conf))  # validates arch and widths
    path = _weights_path(conf, WEIGHTS[conf["variant"]]) if conf["weights"] is not None else None
    if path is not None:
        from ..extractors._r2d2_nets import ARCHITECTURES

        net, net_string = load_network(path)
        file_arch, file_kwargs = parse_net_string(net_string)
        wanted = {"arch": conf["arch"], "dim": conf["dim"], "mchan": conf["mchan"], "relu22": conf["relu22"]}
        found = {"arch": file_arch, **{k: file_kwargs.get(k, d) for k, (_, d) in ARCHITECTURES[file_arch].items()
                                      if k in wanted}}
        if any(found[k] != wanted[k] for k in wanted):
            raise ConfigError(f"model weights {path} hold {net_string}, but the model config asks for {wanted}; "
                              f"set model.arch/dim/mchan/relu22 to {found}")
        net.train()
        return net
    return R2D2Net(arch, **kwargs)


def _r2d2_dense(net, images: torch.Tensor) -> dict:
    out = net(_normalise(images))
    return {"descriptors": l2_normalize(out["features"], dim=1), "reliability": out["reliability"],
            "repeatability": out["repeatability"], "stride": 1}


def _r2d2_save(net, conf: dict, path) -> None:
    # The release's layout, so that the r2d2 extractor (and the original code) reads it.
    torch_save_atomic({"net": _r2d2_net_string(conf), "state_dict": net.state_dict()}, path)


register(Adapter(
    "r2d2",
    {"arch": "Fast_Quad_L2Net_ConfCFS", "dim": 128, "mchan": 4, "relu22": False, "weights": None,
     "variant": "faster2d2_WASF_N16"},
    _r2d2_build, _r2d2_dense, _r2d2_save))


# ------------------------------------------------------------------------------------------ ALIKE
def _alike_build(conf: dict):
    from ..extractors.alike import ALIKE_CONFIGS, WEIGHTS, ALNet

    if conf["variant"] not in ALIKE_CONFIGS:
        raise ConfigError(f"model.variant {conf['variant']!r} is not one of {sorted(ALIKE_CONFIGS)}")
    net = ALNet(**ALIKE_CONFIGS[conf["variant"]])
    path = _weights_path(conf, WEIGHTS[conf["variant"]])
    if path is not None:
        net.load_state_dict(hub.load_torch_checkpoint(path), strict=True)
    return net


def _alike_dense(net, images: torch.Tensor) -> dict:
    from ..extractors.alike import pad_to_multiple

    h, w = images.shape[-2:]
    scores, desc = net(pad_to_multiple(images, 32))
    return {"descriptors": l2_normalize(desc[..., :h, :w], dim=1), "scores": scores[..., :h, :w], "stride": 1}


register(Adapter("alike", {"variant": "alike-t", "weights": None}, _alike_build, _alike_dense,
                 lambda net, conf, path: torch_save_atomic(net.state_dict(), path),
                 lambda conf: {"variant": conf["variant"]}))


# ------------------------------------------------------------------------------------------ DISK
def _disk_build(conf: dict):
    from ..checkpoints import load_strict, state_dict_from_file
    from ..extractors.disk import WEIGHTS, DiskNet

    net = DiskNet()
    if conf["weights"] is not None:
        path = _weights_path(conf, WEIGHTS["depth"])
        load_strict(net, state_dict_from_file(path, entries=("extractor", "disk")), path, "DISK")
    return net


def _disk_dense(net, images: torch.Tensor) -> dict:
    from ..extractors.disk import pad_to_multiple

    h, w = images.shape[-2:]
    desc, logits = net(pad_to_multiple(images))
    return {"descriptors": l2_normalize(desc[..., :h, :w], dim=1), "logits": logits[..., :h, :w], "stride": 1}


register(Adapter("disk", {"weights": None}, _disk_build, _disk_dense,
                 lambda net, conf, path: torch_save_atomic({"extractor": net.state_dict()}, path)))


# ------------------------------------------------------------------------------------------ D2-Net
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _d2net_build(conf: dict):
    import argparse

    from ..checkpoints import load_strict, state_dict_from_file
    from ..extractors.d2net import WEIGHTS, D2NetModel

    net = D2NetModel("train", use_relu=False)  # D2-Net trains with the stride-8 trunk, no final ReLU
    if conf["weights"] is not None:
        path = _weights_path(conf, WEIGHTS["d2_tf"])
        load_strict(net, state_dict_from_file(path, entries=("model",), allowed_globals=[argparse.Namespace]),
                    path, "D2-Net")
    return net


def _d2net_dense(net, images: torch.Tensor) -> dict:
    x = images.flip(1) * 255.0 - images.new_tensor(_CAFFE_MEAN_BGR).view(1, 3, 1, 1)  # caffe preprocessing
    feats = net(x)
    return {"descriptors": l2_normalize(feats, dim=1), "features": feats, "stride": 8}


register(Adapter("d2net", {"weights": None}, _d2net_build, _d2net_dense,
                 lambda net, conf, path: torch_save_atomic({"model": net.state_dict()}, path)))


# ------------------------------------------------------------------------------------------ lite
def _lite_adapter() -> Adapter:
    from ..extractors import lite

    return Adapter("lite", lite.TRAIN_DEFAULTS, lite.train_build, lite.train_dense, lite.train_save,
                   lambda conf: {})


register(_lite_adapter())


# ------------------------------------------------------------------------------------------ helpers
def detection_and_descriptors(out: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A keypoint-score map (B, 1, h, w) and the descriptors (B, D, h, w) of dense outputs, for
    validation: R2D2 reliability x repeatability; else scores / sigmoid(logits) / D2-Net soft scores."""
    if "reliability" in out and "repeatability" in out:
        return out["reliability"] * out["repeatability"], out["descriptors"]
    if "scores" in out:
        return out["scores"], out["descriptors"]
    if "logits" in out:
        return torch.sigmoid(out["logits"]), out["descriptors"]
    from ..extractors.d2net import soft_detection_scores

    return soft_detection_scores(out["features"])[:, None], out["descriptors"]


def freeze(net: torch.nn.Module, prefixes) -> list[str]:
    """Set requires_grad=False on the parameters whose name starts with one of `prefixes`; returns
    the frozen names. A prefix matching no parameter is an error naming the parameter groups."""
    names = [n for n, _ in net.named_parameters()]
    frozen = []
    for prefix in prefixes or []:
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            tops = sorted({n.split(".")[0] for n in names} | {".".join(n.split(".")[:2]) for n in names})
            raise ConfigError(f"freeze: {prefix!r} matches no parameter; parameter groups: {tops[:30]}")
        frozen += hits
    for n, p in net.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    return sorted(set(frozen))


def upsample_like(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
