"""Squeeze-excite gates as a signal: record every gate value over a dataset, summarise it per channel, plot it.

Works on any module through forward hooks found by name: every `SqueezeExcite` (mbconv's layer class) and every
module named ``*.se.gate`` (timm's EfficientNet/MobileNet blocks) is hooked, so an `MBConvNet` built by
`mbconv.compat.from_timm` and a raw timm model are both covered. For each SE we keep, per input and channel,

- the gate value g_c(x) (output of the `.gate` activation), and
- the RMS over positions of the gated output, RMS(g_c x_c) = g_c RMS(x_c): the channel's actual contribution,
  which is the "gate x activation" pruning criterion E[g ||x||] (a gate near 0 on a channel that is already
  near 0 says nothing; a small gate on a large activation does).

Per channel: mean, p1/p50/p99 over inputs, between-input standard deviation, and the fraction of inputs whose
gate is below a threshold. "Consistently suppressed" channels have p99 < low (0.05 by default): the gate is
near zero for 99 % of inputs. "Saturated" channels have p1 > high (0.95): the SE acts as identity there (the
pattern Hu et al. report for late SE blocks).

`GatePenalty` is the optional sparsity regulariser lambda * mean gate, added to a training loss.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .layers import SqueezeExcite
from .plotting import plt, savefig

_TIMM_GATE = re.compile(r"(^|\.)se\.gate$")


# -- finding the gates -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateSite:
    """One squeeze-excite of a network: the SE module, its gate activation, and the block it belongs to."""

    block: str  # name of the block holding the SE (e.g. 'stages.1.0' or timm's 'blocks.1.0')
    se_name: str  # e.g. 'stages.1.0.se'
    se: nn.Module
    gate: nn.Module


def find_gates(model: nn.Module) -> list[GateSite]:
    """Every SE gate of `model`, in module-registration order (forward order for MBConv-family nets).

    Found by class (`mbconv.layers.SqueezeExcite`) or by name (``*.se.gate``, timm), never by model class.
    """
    modules = dict(model.named_modules())
    sites: list[GateSite] = []
    seen: set[int] = set()
    for name, m in model.named_modules():
        se_name = None
        if isinstance(m, SqueezeExcite):
            se_name = name
        elif _TIMM_GATE.search(name):
            se_name = name.rsplit(".", 1)[0] if "." in name else ""
        if se_name is None or se_name not in modules:
            continue
        se = modules[se_name]
        if id(se) in seen or not isinstance(getattr(se, "gate", None), nn.Module):
            continue
        seen.add(id(se))
        block = se_name.rsplit(".", 1)[0] if "." in se_name else ""
        sites.append(GateSite(block, se_name, se, se.gate))
    return sites


# -- recording -------------------------------------------------------------------------------------------------
@dataclass
class GateRecording:
    """Gate values of every SE over a dataset: `gates[i]` and `act[i]` are (N, C_i) float tensors.

    `act[i][n, c]` = RMS over positions of the gated output g_c x_c for input n (the channel's contribution).
    `depth[i]` is the relative depth of SE i in [0, 1] (0: first SE, 1: last).
    """

    blocks: list[str]
    se_names: list[str]
    gates: list[torch.Tensor]
    act: list[torch.Tensor]
    labels: torch.Tensor | None = None

    @property
    def num_inputs(self) -> int:
        return int(self.gates[0].shape[0]) if self.gates else 0

    @property
    def depth(self) -> list[float]:
        n = len(self.blocks)
        return [i / max(n - 1, 1) for i in range(n)]

    def index(self, block: str) -> int:
        """Position of `block` (a block name) in this recording."""
        try:
            return self.blocks.index(block)
        except ValueError:
            raise ValueError(f"invalid block={block!r}: recorded blocks are {self.blocks}") from None


def input_batches(data: Any, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    """(x, y-or-None) batches from a Tensor, a Dataset, a DataLoader or any iterable of batches (in order).

    Raises ValueError for data or batches of any other type.
    """
    if isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i:i + batch_size], None
        return
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    try:
        it = iter(data)
    except TypeError:
        raise ValueError(f"invalid data of type {type(data).__name__}: expected a Tensor, Dataset or "
                         "DataLoader") from None
    for batch in it:
        if isinstance(batch, torch.Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            yield batch[0], (batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None)
        else:
            raise ValueError(f"invalid batch of type {type(batch).__name__}: expected x or (x, y) tensors")


@torch.no_grad()
def record_gates(model: nn.Module, data: Any, *, batch_size: int = 256, max_inputs: int | None = None,
                 device: str | torch.device | None = None) -> GateRecording:
    """Run `model` (in eval mode) over `data` and record every SE gate value per input and channel.

    `data`: a (N, C, ...) tensor, a Dataset/DataLoader of (x, y) or any iterable of batches. Inputs go to
    `device` (default: where the model's parameters are; the model itself is not moved).
    Raises ValueError when the model has no SE gate or the data is empty.
    """
    sites = find_gates(model)
    if not sites:
        raise ValueError(f"{type(model).__name__} has no squeeze-excite gate (no SqueezeExcite module and no "
                         "module named '*.se.gate'): nothing to record")
    gates: list[list[torch.Tensor]] = [[] for _ in sites]
    act: list[list[torch.Tensor]] = [[] for _ in sites]
    handles = []

    def gate_hook(i: int) -> Callable:
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            gates[i].append(out.detach().float().flatten(1).cpu())
        return hook

    def se_hook(i: int) -> Callable:
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            y = out.detach().float()
            act[i].append(y.pow(2).mean(dim=tuple(range(2, y.ndim))).sqrt().cpu() if y.ndim > 2 else y.abs().cpu())
        return hook

    for i, s in enumerate(sites):
        handles.append(s.gate.register_forward_hook(gate_hook(i)))
        handles.append(s.se.register_forward_hook(se_hook(i)))
    was_training = model.training
    model.eval()
    labels: list[torch.Tensor] = []
    seen = 0
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        for x, y in input_batches(data, batch_size):
            if max_inputs is not None and seen >= max_inputs:
                break
            if max_inputs is not None:
                x = x[: max_inputs - seen]
                y = None if y is None else y[: max_inputs - seen]
            model(x.to(device))
            seen += x.shape[0]
            if y is not None:
                labels.append(y.cpu())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("no inputs: the data given to record_gates is empty")
    g = [torch.cat(v) for v in gates]
    a = [torch.cat(v) for v in act]
    for s, gi, ai in zip(sites, g, a):
        if gi.shape != ai.shape:  # a gate broadcast over positions would need another definition of 'channel'
            raise ValueError(f"gate of {s.se_name} has shape {tuple(gi.shape)} per batch but the SE output has "
                             f"{tuple(ai.shape)} channels: not a per-channel squeeze-excite gate")
    return GateRecording([s.block for s in sites], [s.se_name for s in sites], g, a,
                         torch.cat(labels) if len(labels) and sum(len(v) for v in labels) == seen else None)


# -- statistics ------------------------------------------------------------------------------------------------
@dataclass
class ChannelGateStats:
    """Per-channel gate statistics of one SE over the recorded inputs (each field a (C,) tensor)."""

    block: str
    depth: float
    mean: torch.Tensor
    p1: torch.Tensor
    p50: torch.Tensor
    p99: torch.Tensor
    std: torch.Tensor  # between-input standard deviation
    frac_below: torch.Tensor  # fraction of inputs with gate < threshold
    act_mean: torch.Tensor  # E[g ||x||] (RMS of the gated output)
    low: float = 0.05
    high: float = 0.95
    threshold: float = 0.05

    @property
    def channels(self) -> int:
        return int(self.mean.numel())

    @property
    def suppressed(self) -> torch.Tensor:
        """Indices of consistently suppressed channels: p99 < low."""
        return torch.nonzero(self.p99 < self.low).flatten()

    @property
    def saturated(self) -> torch.Tensor:
        """Indices of saturated channels: p1 > high."""
        return torch.nonzero(self.p1 > self.high).flatten()

    def row(self) -> dict[str, Any]:
        """A summary row for tables and JSON."""
        c = self.channels
        return {"block": self.block, "depth": round(self.depth, 4), "channels": c,
                "mean": float(self.mean.mean()), "p1": float(self.p1.mean()), "p50": float(self.p50.mean()),
                "p99": float(self.p99.mean()), "std": float(self.std.mean()),
                "frac_below": float(self.frac_below.mean()),
                "suppressed": int(self.suppressed.numel()), "saturated": int(self.saturated.numel()),
                "frac_suppressed": self.suppressed.numel() / c, "frac_saturated": self.saturated.numel() / c}


def gate_stats(rec: GateRecording, low: float = 0.05, high: float = 0.95,
               threshold: float | None = None) -> list[ChannelGateStats]:
    """Per-channel statistics of every recorded SE. `threshold` (default `low`) defines `frac_below`."""
    for name, v in (("low", low), ("high", high)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"invalid {name}={v!r}: must be in [0, 1]")
    thr = low if threshold is None else threshold
    out = []
    qs = torch.tensor([0.01, 0.5, 0.99])
    for block, d, g, a in zip(rec.blocks, rec.depth, rec.gates, rec.act):
        q = torch.quantile(g.double(), qs.double(), dim=0).float()
        std = g.std(dim=0, unbiased=True) if g.shape[0] > 1 else torch.zeros(g.shape[1])
        out.append(ChannelGateStats(block, d, g.mean(0), q[0], q[1], q[2], std, (g < thr).float().mean(0),
                                    a.mean(0), low, high, thr))
    return out


def summarize(stats: list[ChannelGateStats], rec: GateRecording | None = None) -> dict[str, Any]:
    """Network-wide headline numbers: channel fractions suppressed/saturated, and how gate values spread."""
    total = sum(s.channels for s in stats)
    sup = sum(int(s.suppressed.numel()) for s in stats)
    sat = sum(int(s.saturated.numel()) for s in stats)
    out: dict[str, Any] = {"se_blocks": len(stats), "channels": total, "suppressed": sup, "saturated": sat,
                           "frac_suppressed": sup / max(total, 1), "frac_saturated": sat / max(total, 1),
                           "low": stats[0].low if stats else None, "high": stats[0].high if stats else None}
    if rec is not None:
        allg = torch.cat([g.flatten() for g in rec.gates])
        out.update({"inputs": rec.num_inputs, "gate_mean": float(allg.mean()),
                    "frac_values_below_0.05": float((allg < 0.05).float().mean()),
                    "frac_values_in_0.2_1": float((allg >= 0.2).float().mean()),
                    "frac_values_above_0.95": float((allg > 0.95).float().mean())})
    return out


def histograms(rec: GateRecording, bins: int = 50) -> torch.Tensor:
    """(num_SE, bins) densities of gate values in [0, 1] per SE block (rows sum to 1), for plots by depth."""
    if bins < 1:
        raise ValueError(f"invalid bins={bins!r}: must be >= 1")
    rows = []
    for g in rec.gates:
        h = torch.histc(g.flatten().clamp(0, 1), bins=bins, min=0.0, max=1.0)
        rows.append(h / h.sum().clamp_min(1))
    return torch.stack(rows)


def format_gate_table(stats: list[ChannelGateStats]) -> str:
    """The per-block table `mbconv gates` prints."""
    lines = [f"{'#':>3s} {'block':16s} {'depth':>5s} {'ch':>5s} {'mean':>6s} {'p1':>6s} {'p50':>6s} {'p99':>6s} "
             f"{'std':>6s} {'<thr':>6s} {'supp':>5s} {'sat':>5s}"]
    for i, s in enumerate(stats):
        r = s.row()
        lines.append(f"{i:>3d} {r['block']:16s} {r['depth']:5.2f} {r['channels']:>5d} {r['mean']:6.3f} "
                     f"{r['p1']:6.3f} {r['p50']:6.3f} {r['p99']:6.3f} {r['std']:6.3f} {r['frac_below']:6.3f} "
                     f"{r['suppressed']:>5d} {r['saturated']:>5d}")
    return "\n".join(lines)


# -- figures ---------------------------------------------------------------------------------------------------
def fig_histograms_by_depth(rec: GateRecording, path: str | Path, title: str = "SE gate values by depth",
                            bins: int = 40) -> Path:
    """Heat map (SE block x gate value, each row a density) and a few per-depth histograms overlaid."""
    pyplot = plt()
    h = histograms(rec, bins).numpy()
    fig, (a0, a1) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    im = a0.imshow(h + 1e-4, aspect="auto", origin="lower", extent=(0, 1, -0.5, len(rec.blocks) - 0.5),
                   cmap="viridis", norm=_lognorm())
    a0.set_xlabel("gate value g")
    a0.set_ylabel("SE block (input -> output)")
    a0.set_title("fraction of (input, channel) gate values")
    fig.colorbar(im, ax=a0)
    centres = (torch.arange(bins) + 0.5) / bins
    n = len(rec.blocks)
    picks = sorted({0, n // 3, (2 * n) // 3, n - 1})
    cmap = pyplot.get_cmap("plasma")
    for i in picks:
        a1.plot(centres.numpy(), h[i], color=cmap(i / max(n - 1, 1)), label=f"{rec.blocks[i]} (depth {i})")
    a1.set_xlabel("gate value g")
    a1.set_ylabel("fraction")
    a1.set_yscale("log")
    a1.legend(fontsize=7)
    a1.set_title("histograms at a few depths")
    fig.suptitle(title)
    return savefig(fig, path)


def _lognorm() -> Any:
    import matplotlib.colors as mcolors

    return mcolors.LogNorm(vmin=1e-4, vmax=1.0)


def fig_channel_stats(stats: list[ChannelGateStats], path: str | Path,
                      title: str = "SE gates per channel") -> Path:
    """Per-channel mean gate vs between-input std (colour: depth), and p1/p50/p99 bands per block."""
    pyplot = plt()
    fig, (a0, a1) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    cmap = pyplot.get_cmap("plasma")
    for s in stats:
        a0.scatter(s.mean.numpy(), s.std.numpy(), s=4, color=cmap(s.depth), alpha=0.6)
    a0.set_xlabel("mean gate over inputs")
    a0.set_ylabel("between-input std")
    a0.set_xlim(0, 1)
    a0.set_title("each dot a channel (colour: depth)")
    x = range(len(stats))
    for key, style in (("p1", ":"), ("p50", "-"), ("p99", "--")):
        a1.plot(x, [float(getattr(s, key).median()) for s in stats], style, label=f"median over channels of {key}")
    a1.plot(x, [s.row()["frac_suppressed"] for s in stats], "v-", label=f"frac. channels p99<{stats[0].low:g}")
    a1.plot(x, [s.row()["frac_saturated"] for s in stats], "^-", label=f"frac. channels p1>{stats[0].high:g}")
    a1.set_xlabel("SE block (input -> output)")
    a1.set_ylim(-0.02, 1.02)
    a1.legend(fontsize=7)
    fig.suptitle(title)
    return savefig(fig, path)


# -- sparsity regulariser --------------------------------------------------------------------------------------
@dataclass
class GatePenalty:
    """lambda * mean gate, the optional sparsity push on SE gates (off unless you attach it).

    Hooks every gate of `model`; while the model is in training mode each forward keeps its gate tensors
    (with autograd), and `penalty()` returns, for the last forward,

    - reduction='mean' (default): lam * the mean over all (input, channel) gate values;
    - reduction='sum': lam * sum over all gated channels of the batch-mean gate (the L1 penalty lam * sum|g|;
      equals 'mean' times the number of gated channels, so the same lam pushes much harder).

    Gates are positive (sigmoid), so this is an L1 push toward 0. `wrap(criterion)` gives a loss
    `criterion(logits, y) + penalty()`. With the mbconv Trainer::

        trainer = Trainer(model, train_ds, test_ds, cfg, spec=meta)
        GatePenalty(trainer.model, lam=1e-3).attach(trainer)   # after the Trainer exists (EMA copies no hooks)
        trainer.fit()
    """

    model: nn.Module
    lam: float = 1e-3
    reduction: str = "mean"
    _values: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    _handles: list[Any] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.lam, (int, float)) and self.lam >= 0):
            raise ValueError(f"invalid lam={self.lam!r}: must be a number >= 0")
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"invalid reduction={self.reduction!r}: expected 'mean' or 'sum'")
        sites = find_gates(self.model)
        if not sites:
            raise ValueError("the model has no squeeze-excite gate to regularise")
        # a forward pre-hook on the root clears the previous forward's gates, so nothing accumulates
        self._handles.append(self.model.register_forward_pre_hook(lambda _m, _i: self._values.clear()))
        for s in sites:
            self._handles.append(s.gate.register_forward_hook(self._keep))

    def _keep(self, m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        if m.training and torch.is_grad_enabled():
            self._values.append(out.flatten(1))

    def penalty(self) -> torch.Tensor:
        """The penalty of the last training forward (0 when none was recorded)."""
        if not self._values:
            return torch.zeros(())
        total = sum(v.sum() for v in self._values)
        if self.reduction == "sum":  # sum over channels of the batch mean
            return self.lam * total / self._values[0].shape[0]
        count = sum(v.numel() for v in self._values)
        return self.lam * total / count

    def wrap(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
        """A loss function: `criterion(logits, y) + penalty()`."""
        def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return criterion(logits, y) + self.penalty().to(logits.device)
        return loss

    def attach(self, trainer: Any) -> GatePenalty:
        """Add the penalty to a `mbconv.train.Trainer`'s loss (it calls `trainer.criterion(logits, y)`)."""
        trainer.criterion = self.wrap(trainer.criterion)
        return self

    def remove(self) -> None:
        """Remove the hooks (the wrapped loss then adds 0)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._values.clear()
