"""What a training run is configured with (:class:`TrainConfig`) and how it fails (:class:`TrainingDivergedError`)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from ..layers.memory import LEAN_MODES

__all__ = ["TrainConfig", "TrainingDivergedError"]


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
    save_best: bool = True  # also keep out_dir/best (highest val_acc; needs a validation set)
    tune_threads: bool = True  # CPU, one process, not deterministic: time 1 vs all threads per epoch, keep the faster
    # memory-lean training layers (layers.memory.lean_layers): "auto" on large maps only, "on" every layer, "off"
    memory_lean: str = "auto"
    large_tensor_heap: bool = True  # CPU: glibc keeps freed large tensors for reuse during fit (train/heap.py)
    native_kernels: bool = True  # CPU: the native kernels where built (layers/native.py): BN + act, depthwise
    # torch.compile the training step (inductor, on CPU with its C++ wrapper; the depthwise kernels as graph
    # operators, layers/compiled.py): faster steps after a compile of one to two minutes (seconds on a rerun:
    # inductor's cache), for long runs of small-map 2-D nets (docs/bench/depthwise.md; 1-D nets train faster
    # eager, their maps channels-last); a ragged last batch (drop_last=False) compiles a second graph once
    compile: bool = False

    def __post_init__(self) -> None:
        if self.progress not in ("auto", "tqdm", "plain", "none"):
            raise ValueError(f"progress must be 'auto', 'tqdm', 'plain' or 'none', not {self.progress!r}")
        if not isinstance(self.memory_lean, str) or self.memory_lean not in LEAN_MODES:
            raise ValueError(f"memory_lean must be 'auto', 'on' or 'off', not {self.memory_lean!r}")
        if not isinstance(self.optimizer, str) or self.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        for name in ("epochs", "batch_size"):
            check_int(name, getattr(self, name), low=1)
        for name in ("ckpt_every_steps", "max_steps", "num_workers", "eval_batch_size"):
            check_int(name, getattr(self, name), low=0)
        check_int("seed", self.seed)
        check_real("lr", self.lr, positive=True)
        for name in ("weight_decay", "warmup_epochs", "min_lr", "grad_clip"):
            check_real(name, getattr(self, name))
        for name in ("momentum", "ema_decay", "label_smoothing"):
            check_real(name, getattr(self, name), below_one=True)
        for name in ("bf16", "deterministic", "resume", "drop_last", "save_best", "tune_threads",
                     "large_tensor_heap", "native_kernels", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, not {getattr(self, name)!r}")


OPTIMIZERS = ("sgd", "adamw", "rmsprop")


def check_int(name: str, value: object, low: int | None = None) -> None:
    """A one-line error naming the field unless `value` is an int (not a bool) of at least `low`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        raise ValueError(f"{name} must be an integer{'' if low is None else f' >= {low}'}, not {value!r}")


def check_real(name: str, value: object, positive: bool = False, below_one: bool = False) -> None:
    """A one-line error naming the field unless `value` is a finite number >= 0 (> 0 if `positive`, < 1 if
    `below_one`)."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (value > 0 if positive else value >= 0) and (not below_one or value < 1))
    if not ok:
        rng = "> 0" if positive else ("in [0, 1)" if below_one else ">= 0")
        raise ValueError(f"{name} must be a finite number {rng}, not {value!r}")
