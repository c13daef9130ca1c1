"""DDP collectives of the plugin's methods: rows gathered for memory banks and queues, batch statistics
reduced over every rank. Outside an initialised process group each is the identity, so single-process training
and tests call them unchanged; under DDP every rank must call them in the same order."""
from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_world_size() -> int:
    """The DDP world size, 1 without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """The rows of ``t`` (N, ...) of every DDP rank, concatenated in rank order; ``t`` itself outside DDP.

    Ranks may hold different N: the sizes are gathered first and the rows padded to the largest.
    The result is not connected to the graph (all-gather carries no gradient). With NCCL, ``t``
    must be on the rank's GPU.
    """
    world = distributed_world_size()
    if world == 1:
        return t
    is_bool = t.dtype == torch.bool
    rows = t.to(torch.uint8) if is_bool else t.detach()
    size = torch.tensor([rows.shape[0]], dtype=torch.long, device=rows.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = rows.new_zeros((max(sizes),) + tuple(rows.shape[1:]))
    padded[:rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    out = torch.cat([g[:n] for g, n in zip(gathered, sizes)])
    return out.bool() if is_bool else out


def all_reduced(t: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """``t`` reduced element-wise over every DDP rank (a copy; ``t`` itself outside DDP). No gradient."""
    if distributed_world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op)
    return out


def broadcast_parameters(*modules: torch.nn.Module) -> None:
    """Every parameter and buffer of ``modules`` set to rank 0's, as DDP does when it wraps a module."""
    if distributed_world_size() == 1:
        return
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            dist.broadcast(tensor.data, 0)


def average_gradients(parameters) -> None:
    """The ``.grad`` of each of ``parameters`` replaced by its mean over the DDP ranks, in one all-reduce: what DDP
    does during backward, for networks that are not called through a DDP wrapper's forward. Parameters without a
    gradient are skipped (every rank must skip the same ones)."""
    world = distributed_world_size()
    if world == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
