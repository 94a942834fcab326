"""Training loop for image classifiers: SGD/AdamW/RMSprop, warmup+cosine, EMA, bf16, DDP, exact resume.

Plain usage::

    cfg = TrainConfig(epochs=10, batch_size=64, lr=0.05, out_dir="runs/x", resume=True)
    metrics = Trainer(model, train_ds, test_ds, cfg, spec=spec_dict, val_ds=val_ds).fit()

Datasets yield ``(x: float tensor, y: int64)``. ``out_dir`` receives ``last/`` (every epoch and every
``ckpt_every_steps`` steps), ``best/`` (best *validation* accuracy; the test split is never used to choose) and
``metrics.jsonl`` (train, validation and test metrics per epoch); see :mod:`mbconv.checkpoint` for the on-disk
format.

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

Modules: `config`, `seeding`, `distributed`, `optim` (optimizers, schedule, EMA), `sampling` (seeded shard
samplers and loaders), `loops` (`train_one_epoch`, `evaluate`), `threads` (the per-epoch
thread-count choice), `trainer`. This package re-exports their public
API.
"""

from __future__ import annotations

from .config import TrainConfig, TrainingDivergedError
from .distributed import init_distributed
from .loops import evaluate, model_device, train_one_epoch
from .optim import ModelEma, cosine_warmup_lambda, make_optimizer, make_scheduler, param_groups_weight_decay
from .sampling import ResumableSampler, make_shard_loader
from .seeding import derive_seed, seed_everything
from .threads import ThreadTuner
from .trainer import Trainer

__all__ = [
    "TrainConfig",
    "Trainer",
    "ThreadTuner",
    "TrainingDivergedError",
    "ModelEma",
    "init_distributed",
    "param_groups_weight_decay",
    "make_optimizer",
    "cosine_warmup_lambda",
    "make_scheduler",
    "make_shard_loader",
    "ResumableSampler",
    "train_one_epoch",
    "evaluate",
    "model_device",
    "seed_everything",
    "derive_seed",
]
