"""The :class:`Trainer`: epochs of `train_one_epoch`, evaluation, checkpoints and exact resume, under DDP or not
(see :mod:`mbconv.train` for the guarantees)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint import latest_checkpoint, load_checkpoint, read_meta, save_checkpoint, unwrap_model
from ..layers.memory import LEAN_MODES, lean_layers
from ..layers.native import native_enabled, native_status, use_native
from ..layers.pointwise import fast_pointwise
from .config import TrainConfig
from .distributed import barrier, dist_active, init_distributed
from .heap import large_tensor_heap
from .loops import EpochMeter, evaluate, train_one_epoch
from .optim import ModelEma, make_optimizer, make_scheduler
from .sampling import ResumableSampler, make_shard_loader
from .seeding import derive_seed, deterministic_algorithms
from .threads import ThreadTuner

__all__ = ["COMPILE_OPTIONS_CPU", "Trainer"]

# `TrainConfig.compile` on CPU: inductor's options (the C++ wrapper; see Trainer.__init__)
COMPILE_OPTIONS_CPU: dict[str, Any] = {"cpp_wrapper": True}


class Trainer:
    """Trains `model` on `train_ds`, evaluates on `val_ds` and `test_ds` each epoch, checkpoints to
    ``config.out_dir``.

    Model selection reads the validation split only: ``best/`` is the epoch of the highest validation accuracy
    (kept only when `val_ds` is given), and every checkpoint's meta records how it was chosen under
    ``"selection"``. With an EMA (``ema_decay > 0``) each epoch's candidate is the better of the raw and the EMA
    weights on validation (a tie keeps raw), and ``best/`` stores the chosen ones as its model weights, so
    everything that loads a run uses them; ``selection["weights"]`` says which. The test split is evaluated for
    reporting (``test_acc``; ``test_acc_at_best`` is the test accuracy of the weights the validation split
    chose), never for a choice.

    Args:
        model: any ``nn.Module`` mapping a float batch to logits.
        train_ds, test_ds: Datasets yielding ``(x, y)``; `test_ds` may be None.
        config: a :class:`TrainConfig`.
        spec: JSON-able network spec, stored in every checkpoint's meta.json.
        on_epoch_end: ``fn(trainer, row) -> bool | None`` after each epoch's log/checkpoint; True stops.
        val_ds: the validation Dataset that selects ``best/``, or None (then no ``best/`` is kept).
    """

    METRICS = "metrics.jsonl"

    def __init__(self, model: nn.Module, train_ds: Dataset, test_ds: Dataset | None = None,
                 config: TrainConfig | None = None, spec: dict | None = None,
                 on_epoch_end: Callable[[Trainer, dict], bool | None] | None = None, *,
                 val_ds: Dataset | None = None):
        cfg = self.cfg = config or TrainConfig()
        self.spec, self.test_ds, self.val_ds, self.on_epoch_end = spec, test_ds, val_ds, on_epoch_end
        self._owns_pg = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (
            dist.is_available() and dist.is_initialized())
        if cfg.deterministic and torch.cuda.is_available():
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        self.rank, self.world_size, self.device = init_distributed(cfg.device)

        self.model = unwrap_model(model).to(self.device)
        # small-map 1x1 convs (SE, late stages) train as matrix products on CPU: same parameters, ~1.2x faster
        # tour step (mbconv.layers.pointwise; docs/bench/depthwise.md)
        fast_pointwise(self.model)
        # large-map BN + activation and SE products recomputed in backward instead of stored (by class only: the
        # structure stays for surgery and export; small maps keep the plain ops, layers.memory.lean_layers)
        lean_layers(self.model, LEAN_MODES[cfg.memory_lean])
        self.optimizer = make_optimizer(self.model, cfg)
        self.train_loader = make_shard_loader(
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
        self.meter = EpochMeter(self.device)
        self.epoch, self.epoch_step, self.step = 0, 0, 0  # epoch in progress, its batches done, global steps
        # the validation-selected epoch: its validation accuracy, index and (reported, never used) test accuracy
        self.best_val_acc: float | None = None
        self.best_epoch: int | None = None
        self.test_acc_at_best: float | None = None
        self.best_weights = "raw"  # which weights best/ holds: "raw" or "ema"
        self.resumed_from: Path | None = None
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        if cfg.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir")

        if self.out_dir is not None:
            if self.rank == 0:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            barrier()
            if cfg.resume:
                self._resume()
            elif self.rank == 0:
                self._start_fresh()
            barrier()  # nobody writes before every rank has read the checkpoint
        # CPU thread count timed per epoch (1 vs all): a loaded machine makes 2 threads up to 15x slower
        # (not with compile: inductor's kernels keep the thread count they were compiled with)
        self.tuner = ThreadTuner() if cfg.tune_threads and not cfg.compile and ThreadTuner.wanted(
            self.device, self.world_size, cfg.deterministic) else None
        self.heap_active = False  # whether fit() runs with large tensors from the heap (train/heap.py)
        self.native_active = False  # whether fit() runs the fused native BN + activation kernels (layers/native.py)
        self.net = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:  # compiled on the first step; evaluation and checkpoints use the plain self.model
            if self.device.type == "cpu" and not (os.environ.get("CXX") or shutil.which("g++")
                                                  or shutil.which("clang++")):
                # inductor would fail deep inside its first compile instead
                raise ValueError("compile=True on CPU needs a C++ compiler for torch.compile (g++, clang++ or $CXX); "
                                 "none found")
            # on CPU with inductor's C++ wrapper: the graphs' kernels called from generated C++, not Python (the
            # tour's step x0.91-0.95 of the default compile's time, for about 25 s more compile on a fresh cache;
            # BENCHMARKS.md, "The compiled step's depthwise layers")
            self.net = torch.compile(self.net, options=COMPILE_OPTIONS_CPU if self.device.type == "cpu" else None)

    # -- public -----------------------------------------------------------------------------------------

    def fit(self) -> dict:
        """Train from the current epoch/step to ``config.epochs``; returns the last epoch's metrics row.

        If ``max_steps`` stops the run mid-epoch, the (checkpointed) partial row has ``"stopped": True``.
        Raises :class:`TrainingDivergedError` on a NaN/Inf loss, leaving the last good checkpoint as is.
        """
        ok = False
        threads = torch.get_num_threads()
        try:
            # large tensors reused from the heap instead of mmapped afresh each step (train/heap.py); CPU only
            with deterministic_algorithms(self.cfg.deterministic), large_tensor_heap(
                    self.cfg.large_tensor_heap and self.device.type == "cpu") as self.heap_active, \
                    use_native(self.cfg.native_kernels):
                # the BN kernels run inside the lean layers (not with memory_lean="off"), the depthwise ones in
                # the depthwise layers themselves: with the library on, some layer can take them
                wanted = self.cfg.native_kernels and self.device.type == "cpu"
                self.native_active = wanted and native_enabled()
                if wanted and not self.native_active and self.rank == 0 and self.cfg.progress != "none":
                    print(f"note: native kernels (BN + activation, depthwise) {native_status()}; using PyTorch's "
                          "ops", file=sys.stderr)
                if self.cfg.compile and self.rank == 0 and self.cfg.progress != "none" and self.epoch < self.cfg.epochs:
                    print("note: torch.compile compiles the training step on its first call (one to two minutes on "
                          "a fresh cache, seconds from torch's cache of an earlier run)", file=sys.stderr)
                row = self._fit()
            ok = True
            return row
        finally:
            torch.set_num_threads(threads)  # the tuner's choice ends with the run
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
        if dist_active():  # BN running stats differ per rank after the last local forward; use rank 0's
            for t in itertools.chain(module.parameters(), module.buffers()) if use_ema else module.buffers():
                dist.broadcast(t.data, 0)
        with deterministic_algorithms(self.cfg.deterministic):
            return evaluate(module, ds, batch_size=self.cfg.eval_batch_size or 2 * self.cfg.batch_size,
                            device=self.device, bf16=self.cfg.bf16, num_workers=self.cfg.num_workers,
                            heap=self.cfg.large_tensor_heap)

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
            self.train_loader.generator.manual_seed(derive_seed(cfg.seed, "loader", epoch))
            if self.tuner is not None:
                self.tuner.start_epoch(epoch)
            stats = train_one_epoch(
                self.net, self.train_loader, self.optimizer, criterion=self.criterion,
                scheduler=self.scheduler, ema=self.ema, device=self.device, bf16=cfg.bf16,
                grad_clip=cfg.grad_clip, epoch=epoch, step=self.step, seed=cfg.seed,
                start_batch=self.epoch_step, meter=self.meter, on_step=self._on_step, progress=show_bar,
                tuner=self.tuner)
            self.sampler.skip = 0
            self.step = stats["step"]
            if stats["stopped"]:  # max_steps reached mid-epoch; _on_step has checkpointed
                return {"epoch": epoch, "step": self.step, "train_loss": stats["train_loss"],
                        "train_acc": stats["train_acc"], "stopped": True}
            row = {"epoch": epoch, "step": self.step, "train_loss": stats["train_loss"],
                   "train_acc": stats["train_acc"]}
            row.update(self._eval_metrics())
            row["lr"] = stats["lr"]
            row["threads"] = torch.get_num_threads()
            row["large_tensor_heap"] = self.heap_active
            row["native_kernels"] = self.native_active
            row["compiled"] = self.cfg.compile
            row["seconds"] = round(time.time() - t0, 3)
            self.epoch, self.epoch_step = epoch + 1, 0
            self.meter.reset()
            weights, val_acc, test_acc = self.candidate(row)
            improved = val_acc is not None and (self.best_val_acc is None or val_acc > self.best_val_acc)
            if improved:
                self.best_val_acc, self.best_epoch, self.test_acc_at_best = val_acc, epoch, test_acc
                self.best_weights = weights
            row.update(self._best_fields())
            if self.rank == 0:
                self._log(row, plain)
            # best before last: if killed in between, resume redoes this epoch and saves best again
            if improved and cfg.save_best and self.val_ds is not None:
                self._save("best", weights=weights)
            self._save("last")
            stop = self.on_epoch_end(self, row) if self.on_epoch_end is not None else False
            if stop or (cfg.max_steps and self.step >= cfg.max_steps):
                break
        return row

    def _final_row(self) -> dict:
        row = {"epoch": self.epoch - 1, "step": self.step}
        row.update(self._eval_metrics())
        row.update(self._best_fields())
        return row

    def _best_fields(self) -> dict:
        return {"best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                "test_acc_at_best": self.test_acc_at_best}

    @staticmethod
    def candidate(row: dict) -> tuple[str, float | None, float | None]:
        """This epoch's ``best/`` candidate from its metrics row: ``(weights, val_acc, test_acc)``, weights "ema"
        when the EMA's validation accuracy beats the raw weights' (a tie keeps "raw"); test only reports."""
        ema_val = row.get("ema_val_acc")
        if ema_val is not None and row["val_acc"] is not None and ema_val > row["val_acc"]:
            return "ema", ema_val, row.get("ema_test_acc")
        return "raw", row["val_acc"], row["test_acc"]

    def selection(self) -> dict:
        """How ``best/`` is chosen and what it holds so far: split, metric, epoch and value, and with an EMA whether
        its weights are the raw or the EMA ones (``"weights"``; without one they are raw). meta.json records it."""
        if self.val_ds is None:
            return {"split": None, "metric": None, "epoch": None, "value": None,
                    "note": "no validation split given: best/ is not kept"}
        sel = {"split": "val", "metric": "val_acc", "epoch": self.best_epoch, "value": self.best_val_acc}
        return sel if self.ema is None else {**sel, "weights": self.best_weights}

    def _eval_metrics(self) -> dict:
        out = {}
        for split, ds in (("val", self.val_ds), ("test", self.test_ds)):
            out.update({f"{split}_loss": None, f"{split}_acc": None, f"ema_{split}_acc": None})
            if ds is not None:
                m = self.evaluate(ds)
                out[f"{split}_loss"], out[f"{split}_acc"] = m["loss"], m["acc"]
                if self.ema is not None:
                    out[f"ema_{split}_acc"] = self.evaluate(ds, use_ema=True)["acc"]
        return out

    def _on_step(self, step: int, batches_done: int, meter: EpochMeter) -> bool:
        self.step, self.epoch_step = step, batches_done
        if batches_done == self.steps_per_epoch:
            return False  # the epoch-end checkpoint follows (after evaluation)
        cfg = self.cfg
        stop = bool(cfg.max_steps) and step >= cfg.max_steps
        if stop or (cfg.ckpt_every_steps and step % cfg.ckpt_every_steps == 0):
            self._save("last")
        return stop

    def _save(self, name: str, weights: str = "raw") -> None:
        """Checkpoint to out_dir/name; ``weights="ema"`` stores the EMA as the model weights (best/ only: such a
        checkpoint is never resumed from, see `_resume`)."""
        if self.out_dir is None:
            return
        sums = self.meter.reduced()  # collective: every rank takes part
        if self.rank == 0:
            extra = {"epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step,
                     "steps_per_epoch": self.steps_per_epoch, "world_size": self.world_size,
                     **self._best_fields(), "selection": self.selection(), "train_sums": sums,
                     "config": asdict(self.cfg), "model_weights": weights}
            model = self.ema.module if weights == "ema" else self.model
            save_checkpoint(self.out_dir / name, model, optimizer=self.optimizer,
                            scheduler=self.scheduler, ema=self.ema, extra=extra, spec=self.spec,
                            keep_prev=name == "last")
        barrier()

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is not None and read_meta(ckpt).get("model_weights") == "ema":
            # killed between best/ (EMA as model weights) and last/: resume the raw weights from last/ and redo
            # the epoch, which saves the same best/ again
            found = [c for c in (latest_checkpoint(self.out_dir / n) for n in ("last", "last.prev")) if c]
            ckpt = max(found, key=lambda c: read_meta(c)["step"]) if found else None
        if ckpt is None:
            if self.rank == 0:
                print(f"resume: no checkpoint in {self.out_dir}, starting from scratch", file=sys.stderr)
                self._trim_metrics(0)
            return
        meta = load_checkpoint(ckpt, self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                               ema=self.ema, map_location=self.device)
        self.epoch, self.epoch_step, self.step = meta["epoch"], meta["epoch_step"], meta["step"]
        # a checkpoint from before validation splits has best_test_acc only: selection starts afresh
        self.best_val_acc, self.best_epoch = meta.get("best_val_acc"), meta.get("best_epoch")
        self.test_acc_at_best = meta.get("test_acc_at_best")
        self.best_weights = (meta.get("selection") or {}).get("weights", "raw")
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
                  f"val_acc {fmt(row['val_acc'])} test_loss {fmt(row['test_loss'])} test_acc {fmt(row['test_acc'])} "
                  f"ema_test_acc {fmt(row['ema_test_acc'])} lr {row['lr']:.3g} {row['seconds']:.1f}s",
                  flush=True)
