"""Structured pruning of MBConv expanded channels: criteria, plans, real surgery, an updated spec, fine-tuning.

Removing expanded (mid) channel c of a block deletes, for real:

- MBConv: output c of the 1x1 `expand` conv and its BN, depthwise filter c and its BN, input c of the SE
  reduce conv and output c of the SE expand conv (SE on the expanded channels, either position), and input
  column c of the 1x1 `project` conv;
- Fused-MBConv: output c of the k x k `expand` conv and its BN, the SE's channel c when the SE sits after the
  fused conv, and project input column c.

Blocks without an expansion conv (depthwise-separable, MBConv t=1) are left alone: their depthwise channels are the
block's input channels, i.e. the residual stream, which this tool does not prune. The SE squeeze width is kept.

The result is a smaller `nn.Module` and, for an `MBConvNet`, a new `NetSpec` with one `BlockSpec` per block and its
own `mid_chs` (and, for `se_base='mid'` nets, an `se_ratio` that keeps the squeeze width), so that
`MBConvNet(pruned_spec)` rebuilds exactly the pruned module and `cost.spec_cost`, export and quantisation see the
smaller network. Blocks are found by their submodule names (`expand`, `depthwise`, `se`, `project`).

Mean compensation (optional, `channel_means` + `apply_plan(..., means=)`): a removed channel's average input to the
project conv is folded into the project BN's running mean, and its average squeeze value into the SE reduce bias, so
the remaining channels' gates and the block output keep their mean. Exact for channels that are constant over inputs;
a first-order correction otherwise.

Criteria (higher score = keep): 'gate' mean SE gate E[g]; 'gate_act' the channel's gated contribution E[g ||x||]; 'bn'
|gamma| of the BN just before the project conv (depthwise BN; the fused conv's BN for Fused-MBConv), as in Network
Slimming; 'l1' L1 norm of the project conv's input column; 'random'.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import output_file
from .gates import GateRecording, record_gates
from .layers import se_site, se_step
from .spec import NetSpec, StageSpec, make_divisible, plan_blocks
from .train import model_device
from .train.config import check_int, check_real

CRITERIA = ("gate", "gate_act", "bn", "l1", "random")
GATE_CRITERIA = ("gate", "gate_act")
SCOPES = ("per_block", "global")


# -- which blocks can be pruned ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrunableBlock:
    """A block whose expanded channels can be removed."""

    name: str  # module path, e.g. 'stages.2.1'
    module: nn.Module
    kind: str  # 'mbconv' | 'fused'
    mid: int  # expanded channels now
    se_on_mid: bool  # the block's SE gates the expanded channels (gate criteria apply)


def prunable_blocks(model: nn.Module) -> list[PrunableBlock]:
    """Blocks with an expansion conv (MBConv t > 1, Fused-MBConv), found by submodule names, in forward order."""
    out = []
    for name, m in model.named_modules():
        expand, project = getattr(m, "expand", None), getattr(m, "project", None)
        if not isinstance(expand, nn.Module) or not isinstance(getattr(project, "conv", None), nn.Module):
            continue  # no expansion conv (depthwise-separable / t=1) or not a block
        dw = getattr(m, "depthwise", None)
        kind = "mbconv" if isinstance(dw, nn.Module) else "fused"
        mid = int(expand.conv.out_channels)
        se = se_step(getattr(m, "layout", ()))
        on_mid = se is not None and se.gates == "mid"  # the layout says which channels its SE gates
        out.append(PrunableBlock(name, m, kind, mid, bool(on_mid)))
    return out


def _mid_norm(b: PrunableBlock) -> nn.Module:
    """The norm layer on the mid channels closest to the project conv (its |gamma| is the 'bn' criterion)."""
    return b.module.depthwise.bn if b.kind == "mbconv" else b.module.expand.bn


def min_keep_for(model: nn.Module) -> dict[str, int]:
    """Fewest expanded channels each block may keep so that its spec stays expressible: with
    `se_base='mid'` (MobileNetV3) the squeeze width is derived from the expanded width with a ratio <= 1, so
    a block keeps at least its squeeze width. Empty for other nets."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, NetSpec) or spec.se_base != "mid":
        return {}
    return {b.name: int(b.module.se.conv_reduce.out_channels) for b in prunable_blocks(model) if b.se_on_mid}


# -- criteria ------------------------------------------------------------------------------------------------
def channel_scores(model: nn.Module, criterion: str, *, recording: GateRecording | None = None,
                   data: Any = None, seed: int = 0, max_inputs: int | None = 1000,
                   batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Importance per expanded channel of every block the criterion applies to: {block name: (mid,) scores}.

    Gate criteria need a `recording` (or `data` to record one, at most `max_inputs` inputs); they skip blocks
    without an SE on the expanded channels. Raises ValueError for an unknown criterion or when no block fits.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"invalid criterion={criterion!r}: expected one of {CRITERIA}")
    check_int("seed", seed)
    if max_inputs is not None:  # 0 scored on no input at all
        check_int("max_inputs", max_inputs, low=1)
    blocks = prunable_blocks(model)
    if not blocks:
        raise ValueError("the model has no prunable block (no block with an expansion conv named 'expand' and a "
                         "'project' conv)")
    scores: dict[str, torch.Tensor] = {}
    if criterion in GATE_CRITERIA:
        if not any(b.se_on_mid for b in blocks):
            raise ValueError(f"criterion {criterion!r}: no prunable block has a squeeze-excite on its expanded "
                             "channels; use bn, l1 or random")
        if recording is None:
            if data is None:
                raise ValueError(f"criterion {criterion!r} needs gate values: pass data= or recording=")
            recording = record_gates(model, data, batch_size=batch_size, max_inputs=max_inputs)
        for b in blocks:
            if not b.se_on_mid or b.name not in recording.blocks:
                continue
            i = recording.index(b.name)
            v = recording.gates[i] if criterion == "gate" else recording.act[i]
            if v.shape[1] != b.mid:
                raise ValueError(f"recording of {b.name} has {v.shape[1]} channels but the block has {b.mid}: "
                                 "record the gates of this very model")
            scores[b.name] = v.mean(0).double()
        if not scores:
            raise ValueError(f"criterion {criterion!r}: no prunable block has a squeeze-excite on its expanded "
                             "channels; use bn, l1 or random")
        return scores
    gen = torch.Generator().manual_seed(int(seed))
    for b in blocks:
        if criterion == "bn":
            norm = _mid_norm(b)
            w = getattr(norm, "weight", None)
            if not isinstance(w, torch.Tensor):
                raise ValueError(f"criterion 'bn': {b.name} has no BatchNorm weight on its expanded channels "
                                 "(BN folded?); use l1 or random")
            scores[b.name] = w.detach().abs().double().cpu()
        elif criterion == "l1":
            w = b.module.project.conv.weight.detach()
            scores[b.name] = w.abs().sum(dim=[d for d in range(w.ndim) if d != 1]).double().cpu()
        else:
            scores[b.name] = torch.rand(b.mid, generator=gen, dtype=torch.float64)
    return scores


# -- plans ---------------------------------------------------------------------------------------------------
@dataclass
class PrunePlan:
    """Which expanded channels each block keeps: {block name: sorted indices}. Blocks not listed are untouched."""

    keep: dict[str, torch.Tensor]
    mids: dict[str, int] = field(default_factory=dict)  # original mid channels of each listed block
    criterion: str = "custom"
    ratio: float = 0.0
    scope: str = "per_block"
    round_to: int = 1

    @property
    def removed(self) -> int:
        return sum(self.mids[n] - len(k) for n, k in self.keep.items())

    @property
    def total(self) -> int:
        return sum(self.mids.values())

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "ratio": self.ratio, "scope": self.scope, "round_to": self.round_to,
                "channels_removed": self.removed, "channels_considered": self.total,
                "blocks": {n: {"mid": self.mids[n], "kept": len(k)} for n, k in self.keep.items()}}


def _round_keep(x: float, round_to: int, mid: int) -> int:
    """Channels to keep: nearest multiple of `round_to`, at least `round_to` (and 1), at most `mid`."""
    k = int(math.floor(x / round_to + 0.5)) * round_to
    return max(1, min(mid, max(k, round_to)))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores (ties: lower index first), sorted ascending."""
    order = torch.argsort(-scores, stable=True)
    return torch.sort(order[:k]).values


def make_plan(scores: dict[str, torch.Tensor], ratio: float, *, scope: str = "per_block", round_to: int = 1,
              normalize: str | None = None, criterion: str = "custom",
              min_keep: dict[str, int] | int | None = None) -> PrunePlan:
    """Remove the fraction `ratio` of expanded channels with the lowest scores.

    scope='per_block': every block loses `ratio` of its channels (equal MACs removed whatever the criterion).
    scope='global': the lowest `ratio` of all channels across blocks go (each block keeps >= `round_to`);
    scores are compared after dividing by their block's mean (`normalize='mean'`, default for every criterion
    but 'gate', whose values in [0, 1] are comparable as they are) or raw (`normalize='none'`).
    Kept counts are rounded to the nearest multiple of `round_to`, and never fall below `min_keep` (an int
    or {block name: int}; see `min_keep_for`).
    """
    check_real("ratio", ratio, below_one=True)  # the fraction of channels removed; numpy numbers too
    ratio = float(ratio)
    for n, v in (min_keep if isinstance(min_keep, dict) else {"": 1 if min_keep is None else min_keep}).items():
        check_int(f"min_keep[{n!r}]" if n else "min_keep", v, low=1)
    if scope not in SCOPES:
        raise ValueError(f"invalid scope={scope!r}: expected one of {SCOPES}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"invalid round_to={round_to!r}: must be an integer >= 1")
    if not scores:
        raise ValueError("no block to prune (empty scores)")
    mids = {n: int(s.numel()) for n, s in scores.items()}
    lower = {n: min(mids[n], max(1, min_keep if isinstance(min_keep, int) else (min_keep or {}).get(n, 1)))
             for n in mids}
    keep: dict[str, torch.Tensor] = {}
    if scope == "per_block":
        for n, s in scores.items():
            keep[n] = _top(s, max(lower[n], _round_keep(mids[n] * (1 - ratio), round_to, mids[n])))
    else:
        norm = normalize or ("none" if criterion == "gate" else "mean")
        if norm not in ("none", "mean"):
            raise ValueError(f"invalid normalize={normalize!r}: expected 'none' or 'mean'")
        names = list(scores)
        flat, owner = [], []
        for j, n in enumerate(names):
            s = scores[n].double()
            if norm == "mean":
                s = s / s.mean().clamp_min(1e-12)
            flat.append(s)
            owner.append(torch.full((s.numel(),), j))
        allv, own = torch.cat(flat), torch.cat(owner)
        target = int(round(ratio * allv.numel()))
        left = [mids[n] for n in names]
        floor = [max(lower[n], min(mids[n], round_to)) for n in names]
        removed = 0
        for i in torch.argsort(allv, stable=True).tolist():
            if removed >= target:
                break
            j = int(own[i])
            if left[j] > floor[j]:
                left[j] -= 1
                removed += 1
        for j, n in enumerate(names):
            keep[n] = _top(scores[n], max(lower[n], _round_keep(left[j], round_to, mids[n])))
    return PrunePlan(keep, mids, criterion, ratio, scope, round_to)


# -- surgery -------------------------------------------------------------------------------------------------
def _new_conv(conv: nn.Module, cin: int, cout: int, groups: int) -> nn.Module:
    return type(conv)(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups,
                      bias=conv.bias is not None, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)


@torch.no_grad()
def _conv_out(conv: nn.Module, keep: torch.Tensor, depthwise: bool = False) -> nn.Module:
    """Keep output channels `keep` (for a depthwise conv also its inputs/groups)."""
    n = len(keep)
    new = _new_conv(conv, n if depthwise else conv.in_channels, n, n if depthwise else conv.groups)
    new.weight.copy_(conv.weight[keep])
    if conv.bias is not None:
        new.bias.copy_(conv.bias[keep])
    return new.train(conv.training)


@torch.no_grad()
def _conv_in(conv: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep input channels `keep` of a dense (groups=1) conv."""
    if conv.groups != 1:
        raise ValueError(f"cannot remove inputs of a grouped conv (groups={conv.groups})")
    new = _new_conv(conv, len(keep), conv.out_channels, 1)
    new.weight.copy_(conv.weight[:, keep])
    if conv.bias is not None:
        new.bias.copy_(conv.bias)
    return new.train(conv.training)


@torch.no_grad()
def _norm(bn: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep channels `keep` of a BatchNorm (an Identity stays an Identity)."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return bn
    ref = bn.weight if bn.affine else bn.running_mean
    new = type(bn)(len(keep), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats, device=None if ref is None else ref.device,
                   dtype=None if ref is None else ref.dtype)
    if bn.affine:
        new.weight.copy_(bn.weight[keep])
        new.bias.copy_(bn.bias[keep])
    if bn.track_running_stats:
        new.running_mean.copy_(bn.running_mean[keep])
        new.running_var.copy_(bn.running_var[keep])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


@torch.no_grad()
def channel_means(model: nn.Module, data: Any, *, batch_size: int = 256,
                  max_inputs: int | None = 1000) -> dict[str, dict[str, torch.Tensor]]:
    """Mean over inputs and positions of each expanded channel where it enters the project conv ('project') and,
    for an SE on the expanded channels, where it enters the SE ('se'): {block name: {...: (mid,) tensor}}.

    `apply_plan(..., means=...)` uses them to fold the removed channels' average contribution into what follows
    (mean compensation), which is exact for channels that are constant and first-order for the rest.
    """
    from .gates import input_batches

    blocks = prunable_blocks(model)
    if not blocks:
        raise ValueError("the model has no prunable block")
    sums: dict[tuple[str, str], torch.Tensor] = {}
    counts: dict[tuple[str, str], int] = {}
    handles = []

    def hook(key: tuple[str, str]) -> Any:
        def fn(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            x = inp[0].detach().double()
            sums[key] = sums.get(key, 0) + x.transpose(0, 1).reshape(x.shape[1], -1).sum(1).cpu()
            counts[key] = counts.get(key, 0) + x.numel() // x.shape[1]
        return fn

    for b in blocks:
        handles.append(b.module.project.register_forward_pre_hook(hook((b.name, "project"))))
        if b.se_on_mid:
            handles.append(b.module.se.register_forward_pre_hook(hook((b.name, "se"))))
    was_training = model.training
    model.eval()
    seen = 0
    device = model_device(model)
    try:
        for x, _ in input_batches(data, batch_size):
            if max_inputs is not None and seen >= max_inputs:
                break
            x = x if max_inputs is None else x[: max_inputs - seen]
            model(x.to(device))
            seen += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not seen:
        raise ValueError("no inputs: the data given to channel_means is empty")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for (name, where), v in sums.items():
        out.setdefault(name, {})[where] = v / counts[(name, where)]
    return out


@torch.no_grad()
def _compensate(b: PrunableBlock, removed: torch.Tensor, means: dict[str, torch.Tensor]) -> None:
    """Fold the removed channels' mean input into the project BN (or bias) and the SE reduce bias."""
    m = b.module
    w = m.project.conv.weight
    mu = means["project"].to(w.device, w.dtype)[removed]
    delta = (w[:, removed].flatten(2).sum(2) * mu).sum(1)  # the removed channels' mean project output
    bn = getattr(m.project, "bn", None)
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats:
        bn.running_mean -= delta.to(bn.running_mean.dtype)  # BN subtracts it, as before removal
    elif m.project.conv.bias is not None:
        m.project.conv.bias += delta
    else:
        raise ValueError(f"{b.name}: mean compensation needs a BatchNorm or a bias after the project conv")
    if b.se_on_mid and "se" in means:
        r = m.se.conv_reduce
        mu = means["se"].to(r.weight.device, r.weight.dtype)[removed]
        r.bias += (r.weight[:, removed].flatten(2).sum(2) * mu).sum(1)


def prune_block_(b: PrunableBlock, keep: torch.Tensor, means: dict[str, torch.Tensor] | None = None) -> None:
    """Remove in place every expanded channel of block `b` not in `keep` (see the module docstring); with
    `means` (one block's entry of `channel_means`), compensate for the removed channels' mean contribution."""
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    if keep.numel() == 0:
        raise ValueError(f"{b.name}: would remove every expanded channel; keep at least one")
    if bool((keep < 0).any()) or bool((keep >= b.mid).any()) or keep.unique().numel() != keep.numel():
        raise ValueError(f"{b.name}: keep indices must be distinct and in [0, {b.mid})")
    keep = torch.sort(keep).values
    m = b.module
    dev = m.expand.conv.weight.device
    keep = keep.to(dev)
    if means is not None:
        mask = torch.ones(b.mid, dtype=torch.bool, device=dev)
        mask[keep] = False
        _compensate(b, torch.nonzero(mask).flatten(), means)
    m.expand.conv = _conv_out(m.expand.conv, keep)
    m.expand.bn = _norm(m.expand.bn, keep)
    if b.kind == "mbconv":
        m.depthwise.conv = _conv_out(m.depthwise.conv, keep, depthwise=True)
        m.depthwise.bn = _norm(m.depthwise.bn, keep)
    if b.se_on_mid:
        m.se.conv_reduce = _conv_in(m.se.conv_reduce, keep)
        m.se.conv_expand = _conv_out(m.se.conv_expand, keep)
    m.project.conv = _conv_in(m.project.conv, keep)


def _se_ratio_for(se_chs: int, base: int, divisor: int) -> float:
    """An se_ratio that gives squeeze width `se_chs` from `base` channels under the spec's rounding rule."""
    def width(r: float) -> int:
        return max(1, int(base * r)) if divisor == 1 else make_divisible(base * r, divisor)

    r0 = se_chs / base
    for r in (r0, math.nextafter(r0, 2.0), (se_chs + 0.5) / base, math.nextafter(r0, 0.0)):
        if 0 < r <= 1 and width(r) == se_chs:
            return r
    raise ValueError(f"cannot keep the squeeze width {se_chs} with {base} expanded channels "
                     f"(se_base='mid' needs se_ratio <= 1); prune fewer channels in that block")


def pruned_spec(spec: NetSpec, mids: dict[int, int]) -> NetSpec:
    """`spec` with block i's expanded width set to `mids[i]` (global block index), one BlockSpec per block.

    Every other detail (strides, skips, squeeze widths, drop-path schedule) is unchanged; a check against
    `plan_blocks` of the result raises ValueError if anything else moved.
    """
    plans = plan_blocks(spec)
    stages: list[list[Any]] = [[] for _ in spec.stages]
    for p in plans:
        b = spec.stages[p.stage].blocks[p.block_def]
        kw: dict[str, Any] = {"repeats": 1, "stride": p.stride, "in_chs": p.in_chs if b.in_chs is not None else None}
        if p.index in mids and not p.has_expand:
            raise ValueError(f"block {p.index} has no expansion conv: its expanded width cannot change")
        new_mid = mids.get(p.index, p.mid_chs)
        if p.has_expand:
            kw["mid_chs"] = int(new_mid)
        se_on_mid = p.se_chs and se_site(p.block, spec.se_position) == "mid"
        if se_on_mid and spec.se_base == "mid":
            kw["se_ratio"] = _se_ratio_for(p.se_chs, int(new_mid), spec.se_divisor)
        stages[p.stage].append(dataclasses.replace(b, **kw))
    name = spec.name if spec.name.endswith("_pruned") else f"{spec.name}_pruned"
    new = dataclasses.replace(spec, stages=tuple(StageSpec(tuple(s)) for s in stages), name=name)
    for a, c in zip(plans, plan_blocks(new)):
        want = dataclasses.replace(a, mid_chs=mids.get(a.index, a.mid_chs),
                                   se_on=mids.get(a.index, a.mid_chs)
                                   if a.se_chs and se_site(a.block, spec.se_position) == "mid" else a.se_on,
                                   block_def=c.block_def, repeat=0)
        if dataclasses.replace(c, repeat=0) != want:
            raise ValueError(f"pruned spec disagrees with the plan at block {a.index}: {c} vs {want}")
    return new


def _block_indices(model: nn.Module) -> dict[str, int]:
    """Block name -> global block index for an MBConvNet (its `blocks()` are aligned with `plans`)."""
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(b)]: i for i, b in enumerate(model.blocks())}


def apply_plan(model: nn.Module, plan: PrunePlan, inplace: bool = False,
               means: dict[str, dict[str, torch.Tensor]] | None = None) -> nn.Module:
    """The pruned network. For an `MBConvNet` the result is `MBConvNet(pruned_spec)` with the pruned weights
    (so `.spec` and `.plans` describe it); any other module with MBConv-named blocks is pruned in place/copied.
    `means` (from `channel_means` of this model) turns on mean compensation of the removed channels."""
    net = model if inplace else copy.deepcopy(model)
    blocks = {b.name: b for b in prunable_blocks(net)}
    unknown = sorted(set(plan.keep) - set(blocks))
    if unknown:
        raise ValueError(f"plan names blocks that are not prunable here: {unknown}")
    for name, keep in plan.keep.items():
        if len(keep) < blocks[name].mid:
            if means is not None and name not in means:
                raise ValueError(f"means has no entry for block {name}: compute them with channel_means(model)")
            prune_block_(blocks[name], keep, None if means is None else means[name])
    spec = getattr(model, "spec", None)
    if not isinstance(spec, NetSpec) or not hasattr(model, "blocks"):
        return net
    from .net import MBConvNet

    idx = _block_indices(net)
    mids = {idx[b.name]: int(b.module.expand.conv.out_channels) for b in prunable_blocks(net)}
    ref = next(net.parameters())
    rebuilt = MBConvNet(pruned_spec(spec, mids)).to(device=ref.device, dtype=ref.dtype)  # dtype before loading
    rebuilt.load_state_dict(net.state_dict(), strict=True)  # shapes must match: the spec describes the module
    return rebuilt.train(model.training)


# -- one call ------------------------------------------------------------------------------------------------
@dataclass
class PruneResult:
    """A pruned network and what was done: the plan, and params/MACs before and after (per input)."""

    model: nn.Module
    plan: PrunePlan
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    @property
    def macs_removed(self) -> float:
        return 1.0 - self.macs_after / max(self.macs_before, 1)

    @property
    def params_removed(self) -> float:
        return 1.0 - self.params_after / max(self.params_before, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after,
                "macs_removed": self.macs_removed, "params_removed": self.params_removed,
                "plan": self.plan.to_dict()}


def _macs(model: nn.Module, example: torch.Tensor | None) -> int:
    from .cost import module_cost, spec_cost

    spec = getattr(model, "spec", None)
    if isinstance(spec, NetSpec) and example is None:
        return spec_cost(spec).macs
    if example is None:
        raise ValueError("pass example= (an input batch) to count MACs of a module without a NetSpec")
    return module_cost(model, example).macs


def prune(model: nn.Module, criterion: str, ratio: float, *, scope: str = "per_block", round_to: int = 1,
          data: Any = None, recording: GateRecording | None = None, seed: int = 0, normalize: str | None = None,
          max_inputs: int | None = 1000, example: torch.Tensor | None = None,
          compensate: bool = False) -> PruneResult:
    """Score, plan and cut in one call: remove `ratio` of the expanded channels by `criterion`.

    `compensate=True` folds the removed channels' mean contribution (measured on `data`) into the following
    layers. MACs come from `cost.spec_cost` of the spec for an MBConvNet (at its spec resolution), else from
    `module_cost(model, example)`.
    """
    scores = channel_scores(model, criterion, recording=recording, data=data, seed=seed, max_inputs=max_inputs)
    plan = make_plan(scores, ratio, scope=scope, round_to=round_to, normalize=normalize, criterion=criterion,
                     min_keep=min_keep_for(model))
    if compensate and data is None:
        raise ValueError("compensate=True needs data= to measure the channel means")
    means = channel_means(model, data, max_inputs=max_inputs) if compensate else None
    pruned = apply_plan(model, plan, means=means)
    return PruneResult(pruned, plan, _nparams(model), _nparams(pruned), _macs(model, example),
                       _macs(pruned, example))


def _nparams(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ratio_for_macs(model: nn.Module, scores: dict[str, torch.Tensor], macs_removed: float, *,
                   scope: str = "per_block", round_to: int = 1, criterion: str = "custom",
                   resolution: int | Sequence[int] | None = None) -> float:
    """The smallest channel ratio whose plan removes at least `macs_removed` of an MBConvNet's MACs (bisection
    on the analytic cost of the pruned spec; nothing is built). Raises ValueError if even 0.99 is not enough."""
    from .cost import spec_cost

    spec = getattr(model, "spec", None)
    if not isinstance(spec, NetSpec):
        raise ValueError("ratio_for_macs needs an MBConvNet (a model with a NetSpec)")
    if not 0.0 < macs_removed < 1.0:
        raise ValueError(f"invalid macs_removed={macs_removed!r}: must be in (0, 1)")
    base = spec_cost(spec, resolution).macs
    idx = _block_indices(model)
    floor = min_keep_for(model)

    def removed(r: float) -> float:
        plan = make_plan(scores, r, scope=scope, round_to=round_to, criterion=criterion, min_keep=floor)
        mids = {idx[n]: len(k) for n, k in plan.keep.items()}
        return 1.0 - spec_cost(pruned_spec(spec, mids), resolution).macs / base

    lo, hi = 0.0, 0.99
    if removed(hi) < macs_removed:
        raise ValueError(f"cannot remove {macs_removed:.0%} of MACs by pruning expanded channels "
                         f"(at most {removed(hi):.1%})")
    for _ in range(30):
        mid = (lo + hi) / 2
        if removed(mid) >= macs_removed:
            hi = mid
        else:
            lo = mid
    return hi


# -- fine-tuning and runs ------------------------------------------------------------------------------------
def finetune(model: nn.Module, train_ds: Any, test_ds: Any, *, epochs: int = 2, lr: float = 1e-3,
             batch_size: int = 64, weight_decay: float = 0.05, warmup_epochs: float = 0.0,
             label_smoothing: float = 0.1, seed: int = 0, out_dir: str | Path | None = None,
             meta: dict[str, Any] | None = None, progress: str = "none", val_ds: Any = None) -> dict[str, Any]:
    """A short AdamW + cosine fine-tune of a pruned model with the mbconv Trainer; returns the last epoch's row.

    With `out_dir`, checkpoints (`last/`; `best/`, chosen on `val_ds`, when given) and metrics.jsonl go there with
    `meta` as their spec. `test_ds` is evaluated for reporting only.
    """
    from .train import TrainConfig, Trainer

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adamw", weight_decay=weight_decay,
                      warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, seed=seed,
                      out_dir=None if out_dir is None else str(out_dir), progress=progress)
    return Trainer(model, train_ds, test_ds, cfg, spec=meta, val_ds=val_ds).fit()


def save_pruned(out: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write a pruned (not fine-tuned) model as a run: `out/best` and `out/last` checkpoints with `meta`."""
    from .checkpoint import save_checkpoint

    out = output_file(Path(out) / "last" / "model", "pruned run").parents[1]  # a clear error before writing
    for name in ("last", "best"):
        save_checkpoint(out / name, model, extra={"epoch": 0, "step": 0}, spec=meta, keep_prev=False)
    return out
