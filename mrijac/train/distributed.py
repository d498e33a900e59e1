"""Data parallelism across processes (``torchrun``): setup, mean of tensors, gradient averaging.

Why not ``torch.nn.parallel.DistributedDataParallel``: a penalised step runs the network more
than once per backward pass — the forward-mode (dual) pass of the penalty, the pool's scoring
and the reference σ's Lanczos passes in validation — and hold mode runs two backward passes
over one graph.  DDP's reducer hooks expect one forward per backward on the wrapped module and
would all-reduce at the wrong time (or fail on the dual tensors).  Averaging the gradients once,
after the step's backward passes, is equivalent for synchronous SGD/Adam and works with every
penalty; ``check_replicas`` verifies at the end that the weights stayed equal.
"""

from __future__ import annotations

import os

import torch


def world() -> tuple[int, int]:
    """``(world_size, rank)`` from ``torchrun``'s environment (``(1, 0)`` without it)."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def init(device: torch.device) -> torch.device:
    """Join the process group (gloo on CPU, NCCL on CUDA); the local CUDA device."""
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def broadcast_module(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    for p in model.state_dict().values():
        torch.distributed.broadcast(p, 0)


def all_mean(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """Mean of ``t`` over the processes (``t`` itself in a single process)."""
    if world_size == 1:
        return t
    t = t.detach().clone()
    torch.distributed.all_reduce(t)
    return t / world_size


def average_gradients(model: torch.nn.Module, world_size: int) -> None:
    """Replace every gradient by its mean over the processes (one flat all-reduce)."""
    if world_size == 1:
        return
    params = list(model.parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size
    i = 0
    for p, g in zip(params, grads):
        p.grad = flat[i : i + g.numel()].view_as(p).clone()
        i += g.numel()


def leave(world_size: int) -> None:
    """End of a run: wait for every rank, then leave the process group (a no-op in a single
    process). Without it a rank that finishes first exits with gloo's threads still running,
    which can abort it ("terminate called without an active exception", SIGABRT) although the
    run completed."""
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def check_replicas(model: torch.nn.Module, world_size: int) -> dict:
    """The largest difference between any rank's weights and rank 0's."""
    if world_size == 1:
        return {"world_size": 1, "max_param_diff": 0.0}
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ref = flat.clone()
    torch.distributed.broadcast(ref, 0)
    diff = (flat - ref).abs().max().reshape(1)
    torch.distributed.all_reduce(diff, op=torch.distributed.ReduceOp.MAX)
    return {"world_size": world_size, "max_param_diff": float(diff)}
