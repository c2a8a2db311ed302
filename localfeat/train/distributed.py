"""Training on several processes (GPUs) with DistributedDataParallel, launched by torchrun:

    torchrun --nproc_per_node N -m localfeat.train --config CONFIG -o RUN_DIR [KEY=VALUE ...]
    torchrun --nproc_per_node N -m localfeat.train --resume RUN_DIR

`python -m localfeat.train` takes the arguments of `localfeat train`. torchrun sets RANK, WORLD_SIZE and
LOCAL_RANK; without them (WORLD_SIZE unset or 1) everything runs in one process as before.

What N processes compute is the run of ONE process with the same config:
- `batch_size` is the global batch B (a multiple of N): at step s, rank r loads only its shard, samples
  s*B + r*B/N ... s*B + (r+1)*B/N - 1 of the deterministic stream (`pairs.make_loader`), and runs the
  network (forward and backward, the expensive part) on it alone.
- The network outputs and the batch are then gathered, and every rank computes the loss of the whole
  global batch. The losses are not per-sample means (their negatives come from every image of the batch,
  their means are over the valid pixels of the batch, their sampling grids are random draws shared by
  the batch), so a per-rank loss would train another objective. Each rank back-propagates W x loss into
  its own samples' outputs; DDP's average of the ranks' gradients is then the gradient of the global loss.
- Every rank starts from the same seed and draws the same random numbers, so the models stay identical
  and any rank could write the checkpoint; rank 0 writes checkpoints, metrics.csv, validation.csv,
  weights.pt and the curve; the others write nothing.
- BatchNorm: on CUDA the layers become SyncBatchNorm (statistics over the global batch). On CPU (gloo)
  PyTorch has no SyncBatchNorm, so models with BatchNorm (R2D2, ALIKE) normalise over each rank's shard
  and the run differs from one process by that; models without it (DISK: instance norm; D2-Net) match.
- Resume is exact as in one process (all ranks load rank 0's checkpoint; the loader restarts at step s),
  and a run may be resumed with another number of processes.
- `time_limit_minutes`: rank 0's clock decides, and every rank stops at the same step.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..config import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank, world_size (1 = no distribution), local_rank (its GPU)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def setup(device) -> DistContext:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1), once per process:
    backend NCCL when `device` (config.device: None = CUDA when available) is CUDA, gloo otherwise.
    Returns this process's context (world_size 1 when not launched by torchrun). Ranks other than 0 log
    warnings only."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        from ..ops import resolve_device

        backend = "nccl" if resolve_device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
        dist.init_process_group(backend)
    ctx = current()
    if not ctx.is_main:
        logging.getLogger("localfeat").setLevel(logging.WARNING)
    return ctx


def current() -> DistContext:
    """The context of the initialised process group, or the single-process one."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK when training on CUDA with several processes."""
    if ctx.enabled and device.type == "cuda":
        if device.index not in (None, ctx.local_rank):
            raise ConfigError(f"device={device}: with torchrun each process uses cuda:LOCAL_RANK; use device=cuda")
        return torch.device("cuda", ctx.local_rank)
    return device


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank when `flag` is True on at least one (a decision all ranks must share)."""
    if not ctx.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class PairForward(torch.nn.Module):
    """The network on both images of a batch in one module call (so that DDP sees one forward per step):
    (image0 (B, 3, H, W), image1) -> (adapter.dense(net, image0), adapter.dense(net, image1))."""

    def __init__(self, adapter, net: torch.nn.Module):
        super().__init__()
        self.adapter = adapter
        self.net = net

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[dict, dict]:
        return self.adapter.dense(self.net, image0), self.adapter.dense(self.net, image1)


def wrap(module: PairForward, device: torch.device, ctx: DistContext) -> torch.nn.Module:
    """DDP around `module` (its network's BatchNorm layers made SyncBatchNorm on CUDA; in place)."""
    if device.type == "cuda":
        module.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module.net)
    elif any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.net.modules()):
        logger.warning("%d processes on %s: BatchNorm statistics are computed over each rank's shard of the batch "
                       "(no SyncBatchNorm off CUDA), so the run differs from a one-process run", ctx.world_size,
                       device.type)
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=False)  # every trainable model uses all its trainable parameters


def _gather(value, ctx: DistContext):
    """Concatenate a (b, ...) tensor of every rank in rank order; this rank's part keeps its autograd graph."""
    if not torch.is_tensor(value) or value.dim() == 0:
        return value
    sent = value.detach().contiguous()
    if sent.dtype == torch.bool:  # not every backend gathers bool tensors
        sent = sent.to(torch.uint8)
    parts = [torch.empty_like(sent) for _ in range(ctx.world_size)]
    dist.all_gather(parts, sent)
    parts = [p.to(value.dtype) for p in parts]
    parts[ctx.rank] = value
    return torch.cat(parts)


def gather_global_batch(out0: dict, out1: dict, batch: dict, ctx: DistContext) -> tuple[dict, dict, dict]:
    """The network outputs and batch of the global batch (see the module docstring), from every rank's shard."""
    return ({k: _gather(v, ctx) for k, v in out0.items()}, {k: _gather(v, ctx) for k, v in out1.items()},
            {k: _gather(v, ctx) for k, v in batch.items()})
