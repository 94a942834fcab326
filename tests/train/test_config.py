"""TrainConfig refuses bad values at construction with a one-line error that names the field and the value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mbconv.train import TrainConfig

BAD = [
    ("lr", 0), ("lr", -0.1), ("lr", math.nan), ("lr", math.inf), ("lr", "0.1"), ("lr", True),
    ("epochs", 0), ("epochs", 2.5), ("batch_size", -3), ("batch_size", False),
    ("weight_decay", -1e-4), ("warmup_epochs", -1), ("min_lr", math.nan), ("grad_clip", -1),
    ("momentum", 1.0), ("momentum", -0.1), ("ema_decay", 1.0), ("label_smoothing", 1.5),
    ("max_steps", -1), ("num_workers", 1.5), ("eval_batch_size", -2), ("ckpt_every_steps", None),
    ("seed", 1.5), ("optimizer", "lamb"), ("optimizer", None),
    ("bf16", 1), ("deterministic", "yes"), ("large_tensor_heap", "no"), ("native_kernels", 0), ("tune_threads", None),
    ("compile", "yes"),
    ("progress", "loud"), ("memory_lean", "maybe"),
]


@pytest.mark.parametrize("field, value", BAD)
def test_bad_values_are_named(field, value):
    with pytest.raises(ValueError) as e:
        TrainConfig(**{field: value})
    msg = str(e.value)
    assert field in msg and repr(value) in msg and "\n" not in msg


def test_good_values_pass_including_numpy_numbers():
    cfg = TrainConfig(lr=np.float32(0.01), epochs=np.int64(3), optimizer="AdamW", momentum=0.0, min_lr=0,
                      weight_decay=0, seed=-1, large_tensor_heap=False)
    assert cfg.epochs == 3 and cfg.optimizer == "AdamW"
