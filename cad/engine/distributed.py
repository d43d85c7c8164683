"""Helpers for state that DistributedDataParallel does not keep identical across processes."""
import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch import nn


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """All-reduce-average the floating-point buffers of `module` over all processes, in place.

    cad's DDP runs with `broadcast_buffers=False`, so a plain BatchNorm's running statistics
    drift apart per process (each sees its own batch). Averaging them (timm's `distribute_bn`
    with reduce) keeps every rank's copy identical; the running mean is then exactly the one of
    the union of the batches, the running variance misses only the between-process spread.
    Buffers already equal on all ranks (constants) are unchanged. No-op in one process.
    """
    if comm.get_world_size() == 1:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat)
    flat /= comm.get_world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset: offset + b.numel()].view_as(b))
        offset += b.numel()


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy every buffer of `module` from rank `src` to all processes, in place.

    `DistributedDataParallel(broadcast_buffers=False)` (Detectron2's choice) syncs only the
    parameters at construction in torch >= 2.13, so a buffer initialised at random (e.g. the
    slot-attention initial slots of DIOD/xMOD, drawn with the per-rank seed SEED + rank) would
    differ per rank. No-op in one process.
    """
    if comm.get_world_size() == 1:
        return
    for b in module.buffers():
        dist.broadcast(b, src)
