"""One training epoch and one evaluation pass over a loader: the loops under :class:`mbconv.train.Trainer`, usable on
their own."""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import TrainingDivergedError
from .distributed import dist_active, dist_rank
from .heap import large_tensor_heap
from .optim import ModelEma
from .sampling import make_shard_loader
from .seeding import derive_seed, seed_everything
from .threads import ThreadTuner

__all__ = ["EpochMeter", "evaluate", "model_device", "train_one_epoch"]


class EpochMeter:
    """Running loss/accuracy sums of an epoch, kept on-device (no per-step host sync beyond the NaN check);
    `reduced()` sums them over ranks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n

    @torch.no_grad()
    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[0]
        correct = (logits.argmax(1) == y).sum()
        self.sums += torch.stack([loss.detach().double() * n, correct.double(),
                                  torch.tensor(n, dtype=torch.float64, device=self.device)])

    def reduced(self) -> list[float]:
        s = self.sums.clone()
        if dist_active():
            dist.all_reduce(s)
        return s.tolist()

    def load(self, values: list[float]) -> None:
        self.sums = torch.tensor(values, dtype=torch.float64, device=self.device)


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a stateless module): where its inputs go."""
    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if t is None else t.device


def _to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch[0], batch[1]
    nb = device.type == "cuda"
    return x.to(device, non_blocking=nb), y.to(device, non_blocking=nb)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    scheduler: Any | None = None,
    ema: ModelEma | None = None,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    grad_clip: float = 0.0,
    epoch: int = 0,
    step: int = 0,
    seed: int | None = None,
    start_batch: int = 0,
    meter: EpochMeter | None = None,
    on_step: Callable[[int, int, EpochMeter], bool] | None = None,
    progress: bool = False,
    tuner: ThreadTuner | None = None,
) -> dict:
    """One pass over `loader`: forward (optionally bf16 autocast), loss, NaN guard, backward, clip, step.

    Args:
        step: global optimizer steps done before this epoch (advanced and returned).
        seed: if given, RNGs are reseeded from ``(seed, step, rank)`` before every batch (exact resume).
        start_batch: batches of this epoch already done (the loader must already skip them); bookkeeping.
        meter: running sums to continue (resume mid-epoch); a fresh one if None.
        on_step: called as ``on_step(step, batches_done_in_epoch, meter)`` after each step; a true return
            value stops the epoch early.
        tuner: a started :class:`ThreadTuner`: sets each step's thread count and is given its wall time.

    Returns:
        ``{"train_loss", "train_acc", "step", "lr", "stopped"}``; loss/acc are over the whole epoch
        (all ranks under DDP).

    Raises:
        TrainingDivergedError: the loss is NaN/Inf on any rank; raised before the optimizer steps.
    """
    device = torch.device(device)
    criterion = criterion or nn.CrossEntropyLoss()
    meter = meter or EpochMeter(device)
    rank, dist_on = dist_rank(), dist_active()
    model.train()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=start_batch + len(loader), initial=start_batch, desc=f"epoch {epoch}",
                   leave=False, file=sys.stderr, dynamic_ncols=True)
    lr, stopped = optimizer.param_groups[0]["lr"], False
    it = iter(loader)
    for i in range(len(loader)):
        t0 = time.perf_counter()
        if tuner is not None:
            tuner.before_step()
        if seed is not None:
            seed_everything(derive_seed(seed, "step", step, rank))  # before fetching: covers augmentation
        x, y = _to_device(next(it), device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = criterion(logits.float(), y)
        finite = torch.isfinite(loss.detach()).float()
        if dist_on:  # every rank must agree to stop, or the others hang in the next all-reduce
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() == 0.0:
            if bar is not None:
                bar.close()
            value = loss.item()
            where = f"loss is {value}"
            if math.isfinite(value):
                where += " here but non-finite on another rank"
            raise TrainingDivergedError(
                f"training diverged at epoch {epoch}, step {step} (batch {start_batch + i} of the epoch): "
                f"{where}; stopped before the optimizer step, no checkpoint written for this state",
                epoch=epoch, step=step, loss=value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)
        meter.add(loss, logits, y)
        step += 1
        if tuner is not None:
            tuner.after_step(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.3g}", refresh=False)
        if on_step is not None and on_step(step, start_batch + i + 1, meter):
            stopped = True
            break
    if bar is not None:
        bar.close()
    loss_sum, correct, n = meter.reduced()
    return {"train_loss": loss_sum / max(n, 1), "train_acc": correct / max(n, 1), "step": step, "lr": lr,
            "stopped": stopped}


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, *, batch_size: int = 256,
             device: str | torch.device | None = None, bf16: bool = False, num_workers: int = 0,
             heap: bool = True) -> dict:
    """Mean cross-entropy and accuracy of `model` (in eval mode) over `data`, on `device` (default: the
    model's own device). On CPU, `heap` keeps freed large activations in glibc's heap for the next batch
    (`train.heap.large_tensor_heap`: 224 px batches at 256 have activations far over the 32 MiB glibc would map
    afresh each time).

    Given a Dataset while torch.distributed is initialised, each rank evaluates a disjoint shard and
    the sums are all-reduced, so every rank returns the full-dataset numbers. Returns
    ``{"loss", "acc", "count"}``.
    """
    device = model_device(model) if device is None else torch.device(device)
    if isinstance(data, DataLoader):
        loader = data
    else:
        world = dist.get_world_size() if dist_active() else 1
        loader = make_shard_loader(data, batch_size, train=False, rank=dist_rank(), world_size=world,
                             num_workers=num_workers)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    try:
        with large_tensor_heap(heap and device.type == "cpu"):
            for batch in loader:
                x, y = _to_device(batch, device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(x)
                logits = logits.float()
                sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                     (logits.argmax(1) == y).sum().double(),
                                     torch.tensor(y.shape[0], dtype=torch.float64, device=device)])
    finally:
        model.train(was_training)
    if dist_active() and not isinstance(data, DataLoader):
        dist.all_reduce(sums)
    loss_sum, correct, n = sums.tolist()
    return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1), "count": int(n)}
