"""Training loop for image classifiers: SGD/AdamW/RMSprop, warmup+cosine, EMA, bf16, DDP, exact resume.

Plain usage::

    cfg = TrainConfig(epochs=10, batch_size=64, lr=0.05, out_dir="runs/x", resume=True)
    metrics = Trainer(model, train_ds, test_ds, cfg, spec=spec_dict).fit()

Datasets yield ``(x: float tensor, y: int64)``. ``out_dir`` receives ``last/`` (every epoch and every
``ckpt_every_steps`` steps), ``best/`` (best test accuracy) and ``metrics.jsonl``; see
:mod:`mbconv.checkpoint` for the on-disk format.

Exact resume. Everything random is a function of ``(seed, epoch)`` or ``(seed, step, rank)``:

* the sample order of epoch ``e`` is ``DistributedSampler(seed=seed).set_epoch(e)`` (also with one
  process), and resuming mid-epoch skips the ``epoch_step * batch_size`` samples already consumed;
* before each batch is fetched, torch/numpy/python RNGs are reseeded from ``(seed, step, rank)``, so
  dropout, drop-path and in-process augmentation do not depend on what ran before;
* model, optimizer, LR scheduler, EMA and the epoch's running loss/accuracy sums are checkpointed exactly.

Hence a run stopped at any checkpoint and resumed (same config, world size and thread count; use
``deterministic=True``) ends with bit-identical weights to an uninterrupted run. Augmentation in
DataLoader worker processes (``num_workers > 0``) is seeded per epoch only, so mid-epoch resume is
exact only when workers draw no random numbers.

Distributed. Launch with ``torchrun --nproc_per_node=N script.py``: :func:`init_distributed` reads
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and sets up gloo (CPU) or nccl (CUDA); the model is wrapped in
DDP, each rank reads its own ``DistributedSampler`` shard, so ``batch_size`` is per rank and the
global batch is ``batch_size * world_size`` (scale ``lr`` yourself). Rank 0 alone logs and writes
checkpoints while the other ranks wait at a barrier; all ranks resume from the same checkpoint. A
Trainer that created the process group destroys it when ``fit`` returns.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mbconv.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, unwrap_model

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "ModelEma",
    "init_distributed",
    "param_groups_weight_decay",
    "make_optimizer",
    "cosine_warmup_lambda",
    "make_scheduler",
    "make_loader",
    "ResumableSampler",
    "train_one_epoch",
    "evaluate",
    "seed_everything",
]


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; no checkpoint was written for the diverged state."""

    def __init__(self, message: str, *, epoch: int, step: int, loss: float):
        super().__init__(message)
        self.epoch, self.step, self.loss = epoch, step, loss


@dataclass
class TrainConfig:
    """Hyperparameters and run options. ``batch_size`` is per process (global = batch_size * world_size)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"  # "sgd" | "adamw" | "rmsprop" (TF-style: alpha=0.9, eps=1e-3)
    momentum: float = 0.9  # SGD and RMSprop momentum
    weight_decay: float = 5e-5  # conv/linear weights only (ndim > 1)
    warmup_epochs: float = 0.0  # linear warmup, may be fractional
    min_lr: float = 0.0  # cosine decays lr -> min_lr over the run
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0 = no EMA; else EMA of weights and buffers, updated every step
    bf16: bool = False  # torch.autocast(bfloat16) for forward passes (CPU or CUDA)
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms during fit/evaluate
    out_dir: str | None = None  # checkpoints + metrics.jsonl; None = keep nothing on disk
    ckpt_every_steps: int = 0  # extra mid-epoch checkpoints; 0 = only at epoch ends
    resume: bool = False  # continue from out_dir's latest checkpoint (fresh start if there is none)
    max_steps: int = 0  # stop (after checkpointing) once this many steps are done; schedule still uses epochs
    progress: str = "auto"  # "auto" (tqdm on a TTY, else a line per epoch) | "tqdm" | "plain" | "none"
    num_workers: int = 0
    drop_last: bool = True  # drop the ragged last train batch (BatchNorm dislikes tiny batches)
    eval_batch_size: int = 0  # 0 = 2 * batch_size
    device: str = "auto"  # "auto" = cuda:LOCAL_RANK if available, else cpu
    save_best: bool = True  # also keep out_dir/best (highest test_acc)

    def __post_init__(self) -> None:
        if self.progress not in ("auto", "tqdm", "plain", "none"):
            raise ValueError(f"progress must be 'auto', 'tqdm', 'plain' or 'none', not {self.progress!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("ema_decay and label_smoothing must be in [0, 1)")


# ----------------------------------------------------------------------------- seeding, distributed


def _derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of `parts` (stable across processes, unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if _dist_on() else 0


def _barrier() -> None:
    if _dist_on():
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


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Turn on deterministic algorithms for the block and restore the previous global settings after."""
    if not enabled:
        yield
        return
    prev = (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev[2], prev[3]


# ----------------------------------------------------------------------------- optimizer, schedule, EMA


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two param groups: conv/linear weights (ndim > 1) get `weight_decay`; norms and biases get 0."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum), AdamW or RMSprop (TF-style hyperparameters) over :func:`param_groups_weight_decay`."""
    groups = param_groups_weight_decay(model, cfg.weight_decay)
    name = cfg.optimizer.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if name == "rmsprop":
        # EfficientNet's TF recipe: decay 0.9, eps 1e-3, momentum 0.9 (torch adds eps outside the sqrt)
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=1e-3, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose 'sgd', 'adamw' or 'rmsprop'")


def cosine_warmup_lambda(total_steps: int, warmup_steps: int,
                         min_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier for optimizer step `s` (0-based): linear warmup then cosine to `min_ratio`.

    ``f(s) = (s + 1) / warmup_steps`` for ``s < warmup_steps``; afterwards
    ``min_ratio + (1 - min_ratio) * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps))) / 2``,
    which is 1 at the end of warmup and reaches `min_ratio` at ``s = total_steps``.
    """
    def f(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        t = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return f  # a plain function, so LambdaLR.state_dict() stays JSON-able


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step LambdaLR implementing warmup + cosine for ``cfg.epochs * steps_per_epoch`` steps."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    min_ratio = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_warmup_lambda(total, warmup, min_ratio))


class ModelEma:
    """Exponential moving average of a model's parameters AND floating-point buffers.

    ``ema = decay * ema + (1 - decay) * current`` after every optimizer step; integer buffers (e.g.
    BatchNorm's ``num_batches_tracked``) are copied. ``.module`` is the averaged copy, used for evaluation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = unwrap_model(model).state_dict()
        for k, e in self.module.state_dict().items():
            v = current[k].detach()
            if e.dtype.is_floating_point:
                e.mul_(self.decay).add_(v.to(e.dtype), alpha=1.0 - self.decay)
            else:
                e.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state_dict)


# ----------------------------------------------------------------------------- data


class ResumableSampler(DistributedSampler):
    """DistributedSampler (order = f(seed, epoch)) whose current epoch can skip its first `skip` samples.

    Used with ``num_replicas=1`` too, so a 1-process run and an N-process run see the same permutation:
    the union of the ranks' k-th batches is the 1-process k-th batch of size ``batch_size * N``.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


class _ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ... without padding, so sharded evaluation counts every sample once."""

    def __init__(self, n: int, rank: int, world: int):
        self.idx = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, drop_last: bool = True, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """Seeded DataLoader: train = this rank's :class:`ResumableSampler` shard; eval = in-order shard."""
    if train:
        sampler = ResumableSampler(dataset, world_size, rank, shuffle=True, seed=seed)
    else:
        sampler, drop_last = _ShardSampler(len(dataset), rank, world_size), False
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, pin_memory=pin_memory, generator=g)


# ----------------------------------------------------------------------------- loops


class _Meter:
    """Running loss/accuracy sums, kept on-device (no per-step host sync beyond the NaN check)."""

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
        if _dist_on():
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
    meter: _Meter | None = None,
    on_step: Callable[[int, int, _Meter], bool] | None = None,
    progress: bool = False,
) -> dict:
    """One pass over `loader`: forward (optionally bf16 autocast), loss, NaN guard, backward, clip, step.

    Args:
        step: global optimizer steps done before this epoch (advanced and returned).
        seed: if given, RNGs are reseeded from ``(seed, step, rank)`` before every batch (exact resume).
        start_batch: batches of this epoch already done (the loader must already skip them); bookkeeping.
        meter: running sums to continue (resume mid-epoch); a fresh one if None.
        on_step: called as ``on_step(step, batches_done_in_epoch, meter)`` after each step; a true return
            value stops the epoch early.

    Returns:
        ``{"train_loss", "train_acc", "step", "lr", "stopped"}``; loss/acc are over the whole epoch
        (all ranks under DDP).

    Raises:
        TrainingDivergedError: the loss is NaN/Inf on any rank; raised before the optimizer steps.
    """
    device = torch.device(device)
    criterion = criterion or nn.CrossEntropyLoss()
    meter = meter or _Meter(device)
    rank, dist_on = _rank(), _dist_on()
    model.train()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=start_batch + len(loader), initial=start_batch, desc=f"epoch {epoch}",
                   leave=False, file=sys.stderr, dynamic_ncols=True)
    lr, stopped = optimizer.param_groups[0]["lr"], False
    it = iter(loader)
    for i in range(len(loader)):
        if seed is not None:
            seed_everything(_derive_seed(seed, "step", step, rank))  # before fetching: covers augmentation
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
             device: str | torch.device | None = None, bf16: bool = False, num_workers: int = 0) -> dict:
    """Mean cross-entropy and accuracy of `model` (in eval mode) over `data`, on `device` (default: the
    model's own device).

    Given a Dataset while torch.distributed is initialised, each rank evaluates a disjoint shard and
    the sums are all-reduced, so every rank returns the full-dataset numbers. Returns
    ``{"loss", "acc", "count"}``.
    """
    device = model_device(model) if device is None else torch.device(device)
    if isinstance(data, DataLoader):
        loader = data
    else:
        world = dist.get_world_size() if _dist_on() else 1
        loader = make_loader(data, batch_size, train=False, rank=_rank(), world_size=world,
                             num_workers=num_workers)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    try:
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
    if _dist_on() and not isinstance(data, DataLoader):
        dist.all_reduce(sums)
    loss_sum, correct, n = sums.tolist()
    return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1), "count": int(n)}


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Trains `model` on `train_ds`, evaluates on `test_ds` each epoch, checkpoints to ``config.out_dir``.

    Args:
        model: any ``nn.Module`` mapping a float batch to logits.
        train_ds, test_ds: Datasets yielding ``(x, y)``; `test_ds` may be None.
        config: a :class:`TrainConfig`.
        spec: JSON-able network spec, stored in every checkpoint's meta.json.
        on_epoch_end: ``fn(trainer, row) -> bool | None`` after each epoch's log/checkpoint; True stops.
    """

    METRICS = "metrics.jsonl"

    def __init__(self, model: nn.Module, train_ds: Dataset, test_ds: Dataset | None = None,
                 config: TrainConfig | None = None, spec: dict | None = None,
                 on_epoch_end: Callable[[Trainer, dict], bool | None] | None = None):
        cfg = self.cfg = config or TrainConfig()
        self.spec, self.test_ds, self.on_epoch_end = spec, test_ds, on_epoch_end
        self._owns_pg = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (
            dist.is_available() and dist.is_initialized())
        if cfg.deterministic and torch.cuda.is_available():
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        self.rank, self.world_size, self.device = init_distributed(cfg.device)

        self.model = unwrap_model(model).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.train_loader = make_loader(
            train_ds, cfg.batch_size, train=True, seed=cfg.seed, rank=self.rank, world_size=self.world_size,
            drop_last=cfg.drop_last, num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda")
        self.sampler: ResumableSampler = self.train_loader.sampler
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"no full training batch: {len(train_ds)} samples, batch_size {cfg.batch_size} "
                             f"x {self.world_size} processes (set drop_last=False or a smaller batch)")
        self.scheduler = make_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.meter = _Meter(self.device)
        self.epoch, self.epoch_step, self.step = 0, 0, 0  # epoch in progress, its batches done, global steps
        self.best_test_acc: float | None = None
        self.resumed_from: Path | None = None
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        if cfg.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir")

        if self.out_dir is not None:
            if self.rank == 0:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            _barrier()
            if cfg.resume:
                self._resume()
            elif self.rank == 0:
                self._start_fresh()
            _barrier()  # nobody writes before every rank has read the checkpoint
        self.net = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    # -- public -----------------------------------------------------------------------------------------

    def fit(self) -> dict:
        """Train from the current epoch/step to ``config.epochs``; returns the last epoch's metrics row.

        If ``max_steps`` stops the run mid-epoch, the (checkpointed) partial row has ``"stopped": True``.
        Raises :class:`TrainingDivergedError` on a NaN/Inf loss, leaving the last good checkpoint as is.
        """
        ok = False
        try:
            with _deterministic(self.cfg.deterministic):
                row = self._fit()
            ok = True
            return row
        finally:
            if self._owns_pg and dist.is_initialized():
                if ok:  # no rank tears down its connections while a peer still uses them
                    dist.barrier()
                dist.destroy_process_group()
                self._owns_pg = False

    def evaluate(self, ds: Dataset, use_ema: bool = False) -> dict:
        """``{"loss", "acc", "count"}`` of the model (or its EMA) on `ds`; sharded over ranks under DDP."""
        if use_ema and self.ema is None:
            raise ValueError("this Trainer has no EMA (ema_decay=0)")
        module = self.ema.module if use_ema else self.model
        if _dist_on():  # BN running stats differ per rank after the last local forward; use rank 0's
            for t in itertools.chain(module.parameters(), module.buffers()) if use_ema else module.buffers():
                dist.broadcast(t.data, 0)
        with _deterministic(self.cfg.deterministic):
            return evaluate(module, ds, batch_size=self.cfg.eval_batch_size or 2 * self.cfg.batch_size,
                            device=self.device, bf16=self.cfg.bf16, num_workers=self.cfg.num_workers)

    # -- internals --------------------------------------------------------------------------------------

    def _fit(self) -> dict:
        cfg = self.cfg
        tty = sys.stderr.isatty()
        show_bar = self.rank == 0 and (cfg.progress == "tqdm" or (cfg.progress == "auto" and tty))
        plain = self.rank == 0 and (cfg.progress == "plain" or (cfg.progress == "auto" and not show_bar))
        row: dict = {}
        if self.epoch >= cfg.epochs or (cfg.max_steps and self.step >= cfg.max_steps):
            return self._final_row()
        for epoch in range(self.epoch, cfg.epochs):
            t0 = time.time()
            self.epoch = epoch
            self.sampler.set_epoch(epoch)
            ds = self.train_loader.dataset
            if hasattr(ds, "set_epoch"):  # per-epoch augmentation streams (mbconv.data.ArrayDataset)
                ds.set_epoch(epoch)
            self.sampler.skip = self.epoch_step * cfg.batch_size
            self.train_loader.generator.manual_seed(_derive_seed(cfg.seed, "loader", epoch))
            stats = train_one_epoch(
                self.net, self.train_loader, self.optimizer, criterion=self.criterion,
                scheduler=self.scheduler, ema=self.ema, device=self.device, bf16=cfg.bf16,
                grad_clip=cfg.grad_clip, epoch=epoch, step=self.step, seed=cfg.seed,
                start_batch=self.epoch_step, meter=self.meter, on_step=self._on_step, progress=show_bar)
            self.sampler.skip = 0
            self.step = stats["step"]
            if stats["stopped"]:  # max_steps reached mid-epoch; _on_step has checkpointed
                return {"epoch": epoch, "step": self.step, "train_loss": stats["train_loss"],
                        "train_acc": stats["train_acc"], "stopped": True}
            row = {"epoch": epoch, "step": self.step, "train_loss": stats["train_loss"],
                   "train_acc": stats["train_acc"]}
            row.update(self._test_metrics())
            row["lr"] = stats["lr"]
            row["seconds"] = round(time.time() - t0, 3)
            self.epoch, self.epoch_step = epoch + 1, 0
            self.meter.reset()
            improved = row["test_acc"] is not None and (
                self.best_test_acc is None or row["test_acc"] > self.best_test_acc)
            if improved:
                self.best_test_acc = row["test_acc"]
            row["best_test_acc"] = self.best_test_acc
            if self.rank == 0:
                self._log(row, plain)
            # best before last: if killed in between, resume redoes this epoch and saves best again
            if improved and cfg.save_best:
                self._save("best")
            self._save("last")
            stop = self.on_epoch_end(self, row) if self.on_epoch_end is not None else False
            if stop or (cfg.max_steps and self.step >= cfg.max_steps):
                break
        return row

    def _final_row(self) -> dict:
        row = {"epoch": self.epoch - 1, "step": self.step}
        row.update(self._test_metrics())
        row["best_test_acc"] = self.best_test_acc
        return row

    def _test_metrics(self) -> dict:
        out = {"test_loss": None, "test_acc": None, "ema_test_acc": None}
        if self.test_ds is not None:
            m = self.evaluate(self.test_ds)
            out["test_loss"], out["test_acc"] = m["loss"], m["acc"]
            if self.ema is not None:
                out["ema_test_acc"] = self.evaluate(self.test_ds, use_ema=True)["acc"]
        return out

    def _on_step(self, step: int, batches_done: int, meter: _Meter) -> bool:
        self.step, self.epoch_step = step, batches_done
        if batches_done == self.steps_per_epoch:
            return False  # the epoch-end checkpoint follows (after evaluation)
        cfg = self.cfg
        stop = bool(cfg.max_steps) and step >= cfg.max_steps
        if stop or (cfg.ckpt_every_steps and step % cfg.ckpt_every_steps == 0):
            self._save("last")
        return stop

    def _save(self, name: str) -> None:
        if self.out_dir is None:
            return
        sums = self.meter.reduced()  # collective: every rank takes part
        if self.rank == 0:
            extra = {"epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step,
                     "steps_per_epoch": self.steps_per_epoch, "world_size": self.world_size,
                     "best_test_acc": self.best_test_acc, "train_sums": sums, "config": asdict(self.cfg)}
            save_checkpoint(self.out_dir / name, self.model, optimizer=self.optimizer,
                            scheduler=self.scheduler, ema=self.ema, extra=extra, spec=self.spec,
                            keep_prev=name == "last")
        _barrier()

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is None:
            if self.rank == 0:
                print(f"resume: no checkpoint in {self.out_dir}, starting from scratch", file=sys.stderr)
                self._trim_metrics(0)
            return
        meta = load_checkpoint(ckpt, self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                               ema=self.ema, map_location=self.device)
        self.epoch, self.epoch_step, self.step = meta["epoch"], meta["epoch_step"], meta["step"]
        self.best_test_acc = meta.get("best_test_acc")
        if self.epoch_step and (meta.get("steps_per_epoch") != self.steps_per_epoch
                                or meta.get("world_size") != self.world_size):
            print("resume: batch size / world size changed mid-epoch; the data order will not match",
                  file=sys.stderr)
        if self.rank == 0:  # the other ranks' partial sums were already folded in at save time
            self.meter.load(meta["train_sums"])
            self._trim_metrics(self.epoch)
        self.resumed_from = ckpt

    def _start_fresh(self) -> None:
        """A new run owns out_dir's checkpoints: drop a previous run's so resume can never mix runs."""
        import shutil

        for name in ("last", "last.prev", "best", "best.prev"):
            p = self.out_dir / name
            if p.is_dir():
                shutil.rmtree(p)
        self._trim_metrics(0)

    def _trim_metrics(self, epochs_done: int) -> None:
        """Keep only rows of epochs the checkpoint covers (a kill may leave a row without its checkpoint)."""
        path = self.out_dir / self.METRICS
        rows = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if isinstance(r, dict) and isinstance(r.get("epoch"), int) and r["epoch"] < epochs_done:
                    rows.append(line)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(r + "\n" for r in rows))
        os.replace(tmp, path)

    def _log(self, row: dict, plain: bool) -> None:
        if self.out_dir is not None:
            with open(self.out_dir / self.METRICS, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        if plain:
            def fmt(v: Any) -> str:
                return "-" if v is None else f"{v:.4f}"
            print(f"epoch {row['epoch'] + 1}/{self.cfg.epochs} step {row['step']} "
                  f"train_loss {fmt(row['train_loss'])} train_acc {fmt(row['train_acc'])} "
                  f"test_loss {fmt(row['test_loss'])} test_acc {fmt(row['test_acc'])} "
                  f"ema_test_acc {fmt(row['ema_test_acc'])} lr {row['lr']:.3g} {row['seconds']:.1f}s",
                  flush=True)
