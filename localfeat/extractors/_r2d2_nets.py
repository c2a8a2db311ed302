"""The two networks of the R2D2 release and the safe reading of its checkpoints.

Networks (written from the architecture description of naver/r2d2, ``nets/patchnet.py``):

- ``Quad_L2Net_ConfCFS`` (r2d2_WAF_N16, r2d2_WASF_N16, r2d2_WASF_N8_big): nine convolutions,
  all stride 1; where the L2-Net design strides, the following layers dilate instead, so the
  output maps have the size of the input. BatchNorm without affine parameters.
- ``Fast_Quad_L2Net_ConfCFS`` (faster2d2_*): the same, but a 2x2 max-pool after the third
  convolution replaces the first dilation, and a bilinear x2 upsample ends the trunk; an input of
  h x w gives maps of 2*floor(h/2) x 2*floor(w/2).

Both end with two 1x1 heads applied to the squared 128-D features: reliability = channel 1 of a
2-way softmax, repeatability = softplus(u) / (1 + softplus(u)).

Checkpoints of the release are legacy torch pickles ``{'net': "<Class>(<kwargs>)", 'state_dict': ...}``.
The 'net' string is parsed (never evaluated) against an allow-list of classes and arguments.
"""
from __future__ import annotations

import ast
import collections
import copy
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..hub import CheckpointError

logger = logging.getLogger(__name__)


# Allowed architectures: class name -> {argument: (type, default)}.
ARCHITECTURES = {
    "Quad_L2Net_ConfCFS": {"dim": (int, 128), "mchan": (int, 4), "relu22": (bool, False)},
    "Fast_Quad_L2Net_ConfCFS": {"dim": (int, 128), "mchan": (int, 4), "relu22": (bool, False),
                                "downsample_factor": (int, 2)},
}
# Upper bounds of the integer arguments: the official nets use dim 128, mchan <= 6, downsample 2; a
# forged string must not make the constructor allocate tens of GB (mchan=4096 asks for 38.6 GB).
ARGUMENT_LIMITS = {"dim": 1024, "mchan": 16, "downsample_factor": 8}


def parse_net_string(text: str) -> tuple[str, dict]:
    """Parse the checkpoint's 'net' string, e.g. ``"Quad_L2Net_ConfCFS(mchan=6)"`` -> (class, kwargs).

    Only a call of an allowed class with keyword arguments holding literals of the allowed types
    is accepted; anything else raises `CheckpointError`. Nothing is evaluated.
    """
    if not isinstance(text, str) or len(text) > 500:
        raise CheckpointError(f"'net' entry {text!r:.80} is not an architecture string")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise CheckpointError(f"'net' string {text!r} is not a call of a known architecture") from exc
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise CheckpointError(f"'net' string {text!r} is not a call of a known architecture; "
                              f"allowed: {sorted(ARCHITECTURES)}")
    name = call.func.id
    if name not in ARCHITECTURES:
        raise CheckpointError(f"'net' string {text!r} names {name!r}, which is not an allowed "
                              f"architecture; allowed: {sorted(ARCHITECTURES)}")
    if call.args:
        raise CheckpointError(f"'net' string {text!r}: positional arguments are not allowed")
    allowed = ARCHITECTURES[name]
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None or kw.arg not in allowed:
            raise CheckpointError(f"'net' string {text!r}: argument {kw.arg!r} is not allowed for {name}; "
                                  f"allowed: {sorted(allowed)}")
        try:
            value = ast.literal_eval(kw.value)
        except ValueError as exc:
            raise CheckpointError(f"'net' string {text!r}: {kw.arg} is not a literal") from exc
        kind = allowed[kw.arg][0]
        if type(value) is not kind or (kind is int and not 1 <= value <= ARGUMENT_LIMITS[kw.arg]):
            raise CheckpointError(f"'net' string {text!r}: {kw.arg}={value!r} is not a valid {kind.__name__}"
                                  + (f" in [1, {ARGUMENT_LIMITS[kw.arg]}]" if kind is int else ""))
        kwargs[kw.arg] = value
    return name, kwargs


@dataclass(frozen=True)
class _Conv:
    out: int
    k: int = 3
    dilation: int = 1
    bn: bool = True
    relu: bool = True
    pool: int = 1


def _layer_plan(name: str, mchan: int, dim: int, relu22: bool, downsample_factor: int = 2) -> list[_Conv]:
    """The convolutions of the trunk. Dilation grows by 2 where L2-Net strides by 2 (applied from
    the next layer on); Fast-R2D2 pools once instead of its first dilation."""
    m = mchan
    if name == "Quad_L2Net_ConfCFS":
        return [_Conv(8 * m), _Conv(8 * m), _Conv(16 * m), _Conv(16 * m, dilation=2), _Conv(32 * m, dilation=2),
                _Conv(32 * m, dilation=4), _Conv(32 * m, k=2, dilation=4, relu=relu22),
                _Conv(32 * m, k=2, dilation=8, relu=relu22), _Conv(dim, k=2, dilation=16, bn=False, relu=False)]
    return [_Conv(8 * m), _Conv(8 * m), _Conv(16 * m, pool=downsample_factor), _Conv(16 * m), _Conv(32 * m),
            _Conv(32 * m, dilation=2), _Conv(32 * m, k=2, dilation=2, relu=relu22),
            _Conv(32 * m, k=2, dilation=4, relu=relu22), _Conv(dim, k=2, dilation=8, bn=False, relu=False)]


class _ToBFloat16(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


class R2D2Net(nn.Module):
    """R2D2 / Fast-R2D2 network.

    forward(x): x float32 (B, 3, H, W), ImageNet-normalised RGB ->
      dict 'features' (B, D, h, w) raw (NOT normalised) descriptor map, 'reliability' (B, 1, h, w),
      'repeatability' (B, 1, h, w), both in [0, 1]; (h, w) = (H, W), or 2*floor((H, W)/2) for Fast-R2D2.
    The descriptors are the L2-normalised 'features' (normalise after sampling: it is per pixel).
    """

    def __init__(self, arch: str = "Quad_L2Net_ConfCFS", dim: int = 128, mchan: int = 4, relu22: bool = False,
                 downsample_factor: int = 2):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise CheckpointError(f"unknown architecture {arch!r}; allowed: {sorted(ARCHITECTURES)}")
        self.arch = arch
        self.fast = arch.startswith("Fast")
        self.upsample = downsample_factor if self.fast else 1
        ops: list[nn.Module] = []
        chan = 3
        radius = 0.0  # receptive half-width, in input pixels
        stride = 1
        for c in _layer_plan(arch, mchan, dim, relu22, downsample_factor):
            ops.append(nn.Conv2d(chan, c.out, kernel_size=c.k, dilation=c.dilation,
                                 padding=((c.k - 1) * c.dilation) // 2))
            radius += stride * (c.k - 1) * c.dilation / 2  # taps at +-(k-1)*d/2 (symmetric padding)
            if c.bn:
                ops.append(nn.BatchNorm2d(c.out, affine=False))
            if c.relu:
                ops.append(nn.ReLU(inplace=True))
            if c.pool > 1:
                ops.append(nn.MaxPool2d(kernel_size=c.pool))
                radius += (c.pool - 1) * stride
                stride *= c.pool
            chan = c.out
        radius += stride  # the final bilinear upsample reads one neighbour (Fast-R2D2)
        self.ops = nn.ModuleList(ops)
        self.clf = nn.Conv2d(dim, 2, kernel_size=1)
        self.sal = nn.Conv2d(dim, 1, kernel_size=1)
        self.dim = dim
        # An output pixel depends on input pixels at most this far away (L-infinity), used for tiling.
        self.receptive_radius = int(radius) + 1
        # Tiles must start on multiples of this so that pooling sees the same 2x2 cells.
        self.alignment = downsample_factor if self.fast else 1

    def bf16_trunk(self, fp32_convs: int = 2) -> nn.ModuleList:
        """A copy of the trunk for the bfloat16 mode: BatchNorm folded into the preceding convolution,
        convolutions from the (fp32_convs + 1)-th on in bfloat16 (channels-last), the first ones in
        float32 (they are 2% of the work but bfloat16 there costs the most keypoints).
        Input float32 (B, 3, H, W); output bfloat16 features before the upsample of Fast-R2D2."""
        layers, ops, n_conv = [], list(self.ops), 0
        for i, op in enumerate(ops):
            if isinstance(op, nn.BatchNorm2d):
                continue  # folded into the convolution before it
            op = copy.deepcopy(op)
            if isinstance(op, nn.Conv2d):
                nxt = ops[i + 1] if i + 1 < len(ops) else None
                if isinstance(nxt, nn.BatchNorm2d):
                    inv = (nxt.running_var + nxt.eps).rsqrt()
                    op.weight.data = op.weight.data * inv[:, None, None, None]
                    op.bias.data = (op.bias.data - nxt.running_mean) * inv
                if n_conv == fp32_convs:
                    layers.append(_ToBFloat16())
                if n_conv >= fp32_convs:
                    op = op.to(torch.bfloat16).to(memory_format=torch.channels_last)
                n_conv += 1
            layers.append(op)
        return nn.ModuleList(layers).eval()

    def forward(self, x: torch.Tensor) -> dict:
        for op in self.ops:
            x = op(x)
        if self.fast:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        sq = x * x
        ureliability = self.clf(sq)
        urepeatability = self.sal(sq)
        del sq
        reliability = F.softmax(ureliability, dim=1)[:, 1:2]
        sp = F.softplus(urepeatability)
        repeatability = sp / (1 + sp)
        return {"features": x, "reliability": reliability, "repeatability": repeatability}


# ---------------------------------------------------------------------------------------------
# Checkpoint reading
# ---------------------------------------------------------------------------------------------

# Globals a released R2D2 checkpoint may name. torch maps '*Storage' names itself before asking.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,  # training_losses = defaultdict(list)
    ("builtins", "list"): list,
    ("__builtin__", "list"): list,  # protocol-2 pickles name the builtins module "__builtin__"
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        obj = _SAFE_GLOBALS.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in an R2D2 checkpoint")
        return obj


class _RestrictedPickleModule:
    """A `pickle_module` for `torch.load` that only resolves the globals of `_SAFE_GLOBALS`."""

    Unpickler = _RestrictedUnpickler
    __name__ = "localfeat_restricted_pickle"

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict of a released R2D2 file, on the CPU, without executing anything.

    Tries `hub.load_torch_checkpoint` (torch ``weights_only=True``) first; the Fast-R2D2 files
    hold a ``defaultdict`` of training losses that torch's weights-only reader rejects, so those
    are read with an allow-list unpickler (collections.OrderedDict/defaultdict, list, tensors).
    """
    from .. import hub

    path = Path(path)
    try:
        return hub.load_torch_checkpoint(path)
    except ValueError as first:
        try:
            return torch.load(path, map_location="cpu", weights_only=False,
                              pickle_module=_RestrictedPickleModule)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            raise CheckpointError(f"cannot read R2D2 checkpoint {path}: {exc}") from first


def load_network(path: str | os.PathLike, device: Optional[torch.device] = None) -> tuple[R2D2Net, str]:
    """Build the network named by the checkpoint's 'net' string and load its weights (eval mode).

    Returns (net, net_string). Raises `CheckpointError` when 'net' is not an allowed architecture
    (before any layer is built) or when the weights do not fit it.
    """
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "net" not in ckpt or "state_dict" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected a dict with 'net' and 'state_dict' (an R2D2 release file), "
                              f"got {keys}")
    arch, kwargs = parse_net_string(ckpt["net"])
    net = R2D2Net(arch, **kwargs)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt["state_dict"].items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {ckpt['net']}: {exc}") from exc
    net.eval()
    if device is not None:
        net = net.to(device)
    return net, ckpt["net"]
