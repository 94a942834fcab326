"""Quantization-aware training: fine-tune a calibrated fake-quantized model (BN already folded).

Gradients pass the quantizers by the straight-through estimator. Activation ranges stay at their calibrated
values (or, with `QuantConfig(learn_step=True)`, their steps are learned by LSQ); weight ranges follow the
weights (min/max recomputed every step) unless their steps are learned too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..train import evaluate, make_shard_loader, model_device, seed_everything
from ..train.config import check_int, check_real
from .insert import quantizers, set_mode


def qat(qmodel: nn.Module, train_ds: Any, epochs: int = 1, lr: float = 2e-4, batch_size: int = 64,
        weight_decay: float = 0.0, label_smoothing: float = 0.1, seed: int = 0, max_steps: int = 0,
        test_ds: Any = None, log: Any = None) -> dict[str, Any]:
    """Fine-tune `qmodel` in place with AdamW + cosine decay for `epochs` over `train_ds` ((x, y) pairs).

    Returns {"steps", "train_loss", "test_acc" (if `test_ds`)}; the model is left in eval mode, quantized.
    """
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        check_int(name, v, low=1)
    check_int("max_steps", max_steps, low=0)
    check_int("seed", seed)
    check_real("lr", lr, positive=True)
    check_real("weight_decay", weight_decay)
    check_real("label_smoothing", label_smoothing, below_one=True)
    qs = quantizers(qmodel)
    if not qs or not all(bool(q.calibrated) or q.spec.fixed_range is not None for q in qs.values()):
        raise ValueError("qat needs a calibrated quantized model: run mbconv.quant.ptq.ptq (or calibrate) first")
    seed_everything(seed)
    set_mode(qmodel, "quant")
    for q in qs.values():
        q.dynamic = q.kind == "weight" and not q.spec.learn and q.spec.calib == "minmax"
    params = [p for p in qmodel.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    loader = make_shard_loader(train_ds, batch_size, train=True, seed=seed)
    if len(loader) == 0:  # the train loader drops a ragged last batch: nothing would be trained
        raise ValueError(f"train_ds has {len(train_ds)} samples, fewer than batch_size={batch_size}: no full batch")
    total = epochs * len(loader) if not max_steps else min(max_steps, epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    crit = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    dev = model_device(qmodel)
    step, loss_sum, n = 0, 0.0, 0
    qmodel.train()
    try:
        for epoch in range(epochs):
            for obj in (train_ds, loader.sampler):  # new augmentation draws and a new order each epoch
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(epoch)
            for x, y in loader:
                x, y = x.to(dev), y.to(dev)
                loss = crit(qmodel(x), y)
                if not torch.isfinite(loss):
                    raise ValueError(f"QAT diverged at step {step} (loss {loss.item()}); try a smaller lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_sum += loss.item() * x.shape[0]
                n += x.shape[0]
                if max_steps and step >= max_steps:
                    break
            if log is not None:
                log(f"QAT epoch {epoch + 1}/{epochs}: loss {loss_sum / max(n, 1):.4f}")
            if max_steps and step >= max_steps:
                break
    finally:
        for q in qs.values():
            q.dynamic = False
        qmodel.eval()
    out: dict[str, Any] = {"steps": step, "train_loss": loss_sum / max(n, 1)}
    if test_ds is not None:
        out["test_acc"] = evaluate(qmodel, test_ds)["acc"]
    return out
