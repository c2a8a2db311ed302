"""ResNet (v1.5, as torchvision builds it) in plain PyTorch, with torchvision's state_dict keys and shapes.

Users who hold torchvision's ImageNet files (`resnet50-0676ba61.pth`, `resnet50-11ad3fa6.pth`, ...; see the
weights table in `localfeat.hub`) load them unchanged with `load_state_dict(..., strict=True)`.

Keys: conv1, bn1, layer1..layer4 (Bottleneck/BasicBlock: conv1, bn1, conv2, bn2[, conv3, bn3][, downsample.0,
downsample.1]), fc. Strides: conv1 2, maxpool 2, layer2..4 2 each (on the 3x3 conv of the first block:
"v1.5"), so layer1..4 outputs have strides 4, 8, 16, 32 and 256/512/1024/2048 channels (ResNet-50).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

# name -> (block type, blocks per layer)
RESNET_CONFIGS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
LAYER_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
LAYER_STRIDES = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride here: torchvision's v1.5
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (buffers, not parameters); same keys as BatchNorm2d."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        for name in ("weight", "bias"):
            self.register_buffer(name, getattr(bn, name).detach().clone())
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name).detach().clone())
        self.eps = bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d inside `module` by a `FrozenBatchNorm2d` (in place); returns `module`."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child))
        else:
            freeze_batchnorm(child)
    return module


class ResNet(nn.Module):
    """ResNet with torchvision's parameter names.

    arch: one of RESNET_CONFIGS; num_classes: size of `fc` (1000 for ImageNet files; None = no `fc`);
    frozen_bn: batch norms with fixed statistics (fine-tuning with small batches).
    `forward(x, outputs=('layer3',))` returns {name: (B, C, H/stride, W/stride)} for the requested names
    among 'stem', 'layer1'..'layer4', 'logits'; the network stops at the deepest one requested.
    """

    def __init__(self, arch: str = "resnet50", num_classes: Optional[int] = 1000, frozen_bn: bool = False):
        super().__init__()
        if arch not in RESNET_CONFIGS:
            raise ValueError(f"unknown ResNet {arch!r}; choose one of {sorted(RESNET_CONFIGS)}")
        kind, blocks = RESNET_CONFIGS[arch]
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        self.arch = arch
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, blocks[3], 2)
        self.channels = {"stem": 64, **{f"layer{i + 1}": c * block.expansion for i, c in enumerate((64, 128, 256, 512))}}
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes) if num_classes else None
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if frozen_bn:
            freeze_batchnorm(self)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, outputs: Sequence[str] = ("layer3",)) -> dict:
        """x (B, 3, H, W) ImageNet-normalised RGB -> {name: feature map} for `outputs`."""
        valid = LAYER_NAMES + ("logits",)
        bad = [o for o in outputs if o not in valid]
        if bad:
            raise ValueError(f"unknown ResNet outputs {bad}; choose among {list(valid)}")
        if "logits" in outputs and self.fc is None:
            raise ValueError("ResNet built with num_classes=None has no 'logits' output")
        order = list(valid)
        last = max(order.index(o) for o in outputs)
        res = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        if "stem" in outputs:
            res["stem"] = x
        for i, name in enumerate(LAYER_NAMES[1:], start=1):
            if i > last:
                break
            x = getattr(self, name)(x)
            if name in outputs:
                res[name] = x
        if "logits" in outputs:
            res["logits"] = self.fc(torch.flatten(self.avgpool(x), 1))
        return res


def truncate(net: ResNet, last: str) -> ResNet:
    """Drop the layers after `last` (e.g. 'layer3' for DeLF's conv4) and the classifier, to save memory;
    the kept keys are unchanged, so ImageNet files still load with strict=False (the dropped keys ignored)."""
    idx = LAYER_NAMES.index(last)
    for name in LAYER_NAMES[idx + 1:]:
        setattr(net, name, None)
    net.fc = None
    return net
