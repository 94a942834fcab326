"""Run under torchrun with 2 processes: DDP training, then a stop-and-resume run; saves each rank's weights.

    torchrun --standalone --nproc_per_node=2 ddp_train.py OUT_DIR

Writes OUT_DIR/{straight,resumed}_rank{R}.safetensors and OUT_DIR/metrics_rank0.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from tinytrain import TinyMLP, make_data  # noqa: E402

from mbconv.train import TrainConfig, Trainer, init_distributed  # noqa: E402


def ddp_config(out_dir: str | None, batch_size: int) -> TrainConfig:
    """Shared by this script (batch_size per rank) and the 1-process reference in the test."""
    return TrainConfig(epochs=2, batch_size=batch_size, lr=0.05, optimizer="sgd", weight_decay=1e-3,
                       warmup_epochs=0.5, label_smoothing=0.1, seed=3, deterministic=True,
                       out_dir=out_dir, progress="none")


def model(seed: int) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP()


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    train, test = make_data(64), make_data(30, seed=1)
    # Several Trainers in one process: create the group once ourselves (a Trainer then leaves it alone);
    # re-creating a destroyed default group under torchrun can race on stale rendezvous keys.
    rank, world, _ = init_distributed()
    assert world == 2

    t = Trainer(model(0), train, test, ddp_config(str(out / "straight"), batch_size=4))
    row = t.fit()
    assert torch.distributed.is_initialized() and (t.rank, t.world_size) == (rank, world)
    sd = {k: v.contiguous() for k, v in t.model.state_dict().items()}
    safetensors.torch.save_file(sd, str(out / f"straight_rank{t.rank}.safetensors"))
    if t.rank == 0:
        (out / "metrics_rank0.json").write_text(json.dumps({**row, "world_size": t.world_size}))

    # stop mid-epoch (step 5 of 8 per epoch), then resume under torchrun into a differently initialised model
    cfg = ddp_config(str(out / "resumed"), batch_size=4)
    Trainer(model(0), train, test, dataclasses.replace(cfg, max_steps=5)).fit()
    t = Trainer(model(2), train, test, dataclasses.replace(cfg, resume=True))
    assert t.step == 5 and t.resumed_from is not None, (t.step, t.resumed_from)
    t.fit()
    sd = {k: v.contiguous() for k, v in t.model.state_dict().items()}
    safetensors.torch.save_file(sd, str(out / f"resumed_rank{t.rank}.safetensors"))
    torch.distributed.barrier()  # nobody tears down connections while a peer still uses them
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
