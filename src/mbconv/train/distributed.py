"""torch.distributed as the trainer uses it: set up from torchrun's environment, and rank/barrier helpers that
are no-ops in a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["barrier", "dist_active", "dist_rank", "init_distributed"]


def dist_active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def dist_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist_active() else 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if dist_active():
        dist.barrier()


def init_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """Set up torch.distributed when launched by torchrun (``WORLD_SIZE`` > 1); returns (rank, world, device).

    Uses nccl with one GPU per ``LOCAL_RANK`` when CUDA is available, gloo on CPU otherwise. Without
    torchrun it returns ``(0, 1, device)`` and initialises nothing. Safe to call twice.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        dev = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    if world <= 1:
        return 0, 1, dev
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev
