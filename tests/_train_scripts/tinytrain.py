"""Tiny stand-in models/data for the checkpoint and trainer tests, and a CLI used as a subprocess.

    python tinytrain.py OUT_DIR [--resume] [--epochs N] [--ckpt-every K] [--step-sleep S]

trains TinyNet (conv + BatchNorm + dropout) deterministically on a fixed synthetic dataset, single
thread, printing "ready PID STEP" once the Trainer is built (STEP = resumed step) and "done STEP" at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


class TinyNet(nn.Module):
    """conv-BN-SiLU-pool-dropout-linear: has params with ndim 1 and 4, BN buffers and randomness."""

    def __init__(self, in_ch: int = 3, classes: int = 4, width: int = 8, p: float = 0.2):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x))).mean((2, 3))
        return self.fc(self.drop(x))


class TinyMLP(nn.Module):
    """No BatchNorm, no dropout: DDP and 1-process runs are exactly comparable."""

    def __init__(self, in_ch: int = 3, classes: int = 4, width: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, width, 3, padding=1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def make_data(n: int = 64, classes: int = 4, size: int = 8, seed: int = 0) -> TensorDataset:
    """Learnable synthetic images: the class shifts the mean of one channel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) + (y.float() / classes)[:, None, None, None]
    return TensorDataset(x, y)


class SlowDataset(Dataset):
    """Wraps a dataset and sleeps per item, to stretch a run so that kills land mid-training."""

    def __init__(self, ds: Dataset, sleep: float):
        self.ds, self.sleep = ds, sleep

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        if self.sleep:
            time.sleep(self.sleep)
        return self.ds[i]


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from mbconv.train import TrainConfig, Trainer

    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--ckpt-every", type=int, default=3)
    ap.add_argument("--item-sleep", type=float, default=0.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # bit-identical results need the same thread count in every process
    torch.manual_seed(0)
    model = TinyNet()
    cfg = TrainConfig(epochs=args.epochs, batch_size=8, lr=0.1, optimizer="sgd", weight_decay=1e-4,
                      warmup_epochs=1, label_smoothing=0.1, ema_decay=0.9, seed=1, deterministic=True,
                      out_dir=args.out_dir, ckpt_every_steps=args.ckpt_every, resume=args.resume,
                      progress="none")
    trainer = Trainer(model, SlowDataset(make_data(64), args.item_sleep), make_data(32, seed=1), cfg,
                      spec={"name": "tinynet"})
    print("ready", os.getpid(), trainer.step, flush=True)
    trainer.fit()
    print("done", trainer.step, flush=True)


if __name__ == "__main__":
    main()
