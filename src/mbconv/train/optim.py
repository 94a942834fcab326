"""Optimizers (SGD, AdamW, TF-style RMSprop) with weight decay on weights only, the warmup + cosine schedule, and the
exponential moving average of a model's weights and buffers."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from ..checkpoint import unwrap_model
from .config import TrainConfig

__all__ = ["ModelEma", "cosine_warmup_lambda", "fused_step_ok", "make_optimizer", "make_scheduler",
           "param_groups_weight_decay"]


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two param groups: conv/linear weights (ndim > 1) get `weight_decay`; norms and biases get 0."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def fused_step_ok(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused (one kernel for all parameters) SGD/AdamW step can run on `params`: floating point,
    all on CPU or all on CUDA."""
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum), AdamW or RMSprop (TF-style hyperparameters) over :func:`param_groups_weight_decay`.

    SGD and AdamW take torch's fused step where it can run (:func:`fused_step_ok`), RMSprop the multi-tensor one:
    on CPU the default per-parameter loop costs 3-4x as much (tour model, 213 tensors, one thread: AdamW 6.9 ms
    per step vs 1.9 ms fused, about 6 % of its training step; benchmarks/profile.py --only tour).
    """
    groups = param_groups_weight_decay(model, cfg.weight_decay)
    name = cfg.optimizer.lower()
    fused = fused_step_ok([p for g in groups for p in g["params"]]) or None  # None: torch's default
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)
    if name == "rmsprop":
        # EfficientNet's TF recipe: decay 0.9, eps 1e-3, momentum 0.9 (torch adds eps outside the sqrt)
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=1e-3, momentum=cfg.momentum, foreach=True)
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
