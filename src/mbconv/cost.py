"""Exact analytic cost: parameters, multiply-accumulates (MACs) and activation memory per layer and per block.

Two views that must agree:
- `spec_cost(spec)` computes everything from the spec alone (the same `plan_blocks` the builder uses), so
  EfficientNet-B7 at 600 px costs milliseconds and builds nothing.
- `module_cost(model, x)` measures any `nn.Module` with forward hooks on its conv and linear layers (timm or
  torchvision models included).

MACs count conv and linear multiply-accumulates (bias adds, BN, activations, pooling and the SE multiply are
not MACs), which is what the paper's "FLOPs" column and `torch.utils.flop_counter.FlopCounterMode` / 2 count.
Parameters include BN affine weights; BN running statistics are buffers, not parameters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .spec import BlockPlan, NetSpec, plan_blocks, plan_layout

COMPONENTS = ("stem", "expand", "depthwise", "se", "project", "conv", "head", "classifier")


@dataclass(frozen=True)
class LayerCost:
    """One conv or linear layer (with its BN, if any)."""

    name: str  # module path in MBConvNet, e.g. 'stages.1.0.expand'
    component: str  # one of COMPONENTS
    block: int | None  # global block index; None for stem/head/classifier
    in_chs: int
    out_chs: int
    kernel: int
    stride: int
    groups: int
    out_size: tuple[int, ...]  # spatial output size
    params: int
    macs: int
    act_elems: int  # elements of the layer's output map (batch 1)


@dataclass
class NetCost:
    """Cost of a whole network at one resolution, with per-block and per-component views."""

    name: str
    resolution: tuple[int, ...]
    layers: list[LayerCost] = field(default_factory=list)
    extra_params: int = 0  # parameters outside conv/linear layers (none for MBConvNet)

    @property
    def params(self) -> int:
        return sum(l.params for l in self.layers) + self.extra_params

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def act_elems(self) -> int:
        return sum(l.act_elems for l in self.layers)

    def by_component(self) -> dict[str, dict[str, int]]:
        out = {c: {"params": 0, "macs": 0, "act_elems": 0} for c in COMPONENTS}
        for l in self.layers:
            d = out[l.component]
            d["params"] += l.params
            d["macs"] += l.macs
            d["act_elems"] += l.act_elems
        return {k: v for k, v in out.items() if v["params"] or v["macs"]}

    def by_block(self) -> list[dict[str, int]]:
        """Totals per block (stem and head/classifier excluded)."""
        rows: dict[int, dict[str, int]] = {}
        for l in self.layers:
            if l.block is None:
                continue
            r = rows.setdefault(l.block, {"block": l.block, "params": 0, "macs": 0, "act_elems": 0})
            r["params"] += l.params
            r["macs"] += l.macs
            r["act_elems"] += l.act_elems
        return [rows[k] for k in sorted(rows)]

    def peak_act_bytes(self, bytes_per_elem: int = 4) -> int:
        """Largest single activation map (batch 1): a lower bound on inference working memory."""
        return max((l.act_elems for l in self.layers), default=0) * bytes_per_elem

    def to_dict(self, per_layer: bool = True) -> dict:
        d = {"name": self.name, "resolution": list(self.resolution), "params": self.params, "macs": self.macs,
             "act_elems": self.act_elems, "peak_act_bytes": self.peak_act_bytes(),
             "by_component": self.by_component(), "by_block": self.by_block()}
        if per_layer:
            d["layers"] = [asdict(l) for l in self.layers]
        return d

    def to_json(self, per_layer: bool = True) -> str:
        return json.dumps(self.to_dict(per_layer), indent=1)


def _conv(name: str, component: str, block: int | None, cin: int, cout: int, k: int, stride: int, groups: int,
          in_size: tuple[int, ...], bias: bool = False, norm: bool = True) -> LayerCost:
    dims = len(in_size)
    out_size = tuple(-(-s // stride) for s in in_size)  # symmetric odd-k padding and TF SAME both give ceil
    n_out = math.prod(out_size) * cout
    weight = cout * (cin // groups) * k**dims
    params = weight + (cout if bias else 0) + (2 * cout if norm else 0)
    return LayerCost(name, component, block, cin, cout, k, stride, groups, out_size, params,
                     n_out * (cin // groups) * k**dims, n_out)


def block_layer_costs(p: BlockPlan, spec: NetSpec, size: tuple[int, ...], prefix: str) -> list[LayerCost]:
    """The layers of one planned block, in forward order: one per conv step of its layout, two per SE step."""
    out: list[LayerCost] = []
    ones = tuple(1 for _ in size)
    for s in plan_layout(p, spec):
        if s.kind == "se":
            out += [_conv(f"{prefix}.se.conv_reduce", "se", p.index, s.in_chs, s.rd_chs, 1, 1, 1, ones, bias=True,
                          norm=False),
                    _conv(f"{prefix}.se.conv_expand", "se", p.index, s.rd_chs, s.in_chs, 1, 1, 1, ones, bias=True,
                          norm=False)]
            continue
        layer = _conv(f"{prefix}.{s.name}", s.name, p.index, s.in_chs, s.out_chs, s.kernel, s.stride, s.groups, size)
        out.append(layer)
        size = layer.out_size
    return out


def spec_cost(spec: NetSpec, resolution: int | Sequence[int] | None = None) -> NetCost:
    """Exact params / MACs / activation elements of the network `spec` describes, from the spec alone."""
    res = spec.resolution if resolution is None else resolution
    size = (res,) * spec.dims if isinstance(res, int) else tuple(int(r) for r in res)
    if len(size) != spec.dims or min(size) < 1:
        raise ValueError(f"invalid resolution={res!r}: need a positive int or {spec.dims} positive ints")
    cost = NetCost(spec.name, size)
    stem = _conv("stem", "stem", None, spec.in_chans, spec.stem_chs, spec.stem_kernel, spec.stem_stride, 1, size)
    cost.layers.append(stem)
    size = stem.out_size
    counters: dict[int, int] = {}
    for p in plan_blocks(spec):
        j = counters.get(p.stage, 0)
        counters[p.stage] = j + 1
        layers = block_layer_costs(p, spec, size, f"stages.{p.stage}.{j}")
        cost.layers += layers
        size = tuple(-(-s // p.stride) for s in size)
    last = spec.stages[-1].out_chs
    if spec.head_type == "conv":
        cost.layers.append(_conv("head", "head", None, last, spec.head_chs, 1, 1, 1, size))
    elif spec.head_type == "pool_conv":
        cost.layers.append(_conv("head", "head", None, last, spec.head_chs, 1, 1, 1, tuple(1 for _ in size),
                                 bias=True, norm=False))
    nf = spec.features_chs
    cost.layers.append(LayerCost("classifier", "classifier", None, nf, spec.num_classes, 1, 1, 1, (),
                                 nf * spec.num_classes + spec.num_classes, nf * spec.num_classes, spec.num_classes))
    return cost


# -- measured on any module ------------------------------------------------------------------------------
def module_cost(model: nn.Module, x: torch.Tensor, name: str = "module") -> NetCost:
    """Params, MACs and output elements of every conv/linear layer of any module, measured with forward hooks
    on one forward pass of `x` (per-sample numbers: divided by the batch size). BN parameters are attributed to
    the conv they follow when that is how the model is ordered; other parameters go to `extra_params`."""
    records: list[LayerCost] = []
    batch = x.shape[0]
    handles = []
    names = {m: n for n, m in model.named_modules()}

    def hook(m: nn.Module, inp, out) -> None:
        if isinstance(m, nn.Linear):
            n_out = out.numel() // batch
            macs = n_out * m.in_features
            k, stride, groups, size = 1, 1, 1, ()
            cin, cout = m.in_features, m.out_features
        else:
            n_out = out.numel() // batch
            macs = n_out * (m.in_channels // m.groups) * math.prod(m.kernel_size)
            k, stride, groups = m.kernel_size[0], m.stride[0], m.groups
            size = tuple(out.shape[2:])
            cin, cout = m.in_channels, m.out_channels
        params = sum(p.numel() for p in m.parameters(recurse=False))
        records.append(LayerCost(names[m], _guess_component(names[m], m), None, cin, cout, k, stride, groups,
                                 size, params, macs, n_out))

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    cost = NetCost(name, tuple(x.shape[2:]), records)
    counted = sum(l.params for l in records)
    cost.extra_params = sum(p.numel() for p in model.parameters()) - counted
    return cost


def _guess_component(name: str, m: nn.Module) -> str:
    """Component from module naming (ours and timm's) and shape: a best effort for foreign modules."""
    n = name.lower()
    if isinstance(m, nn.Linear) or "classifier" in n or n.endswith("fc"):
        return "classifier"
    if "se." in n or "squeeze" in n:
        return "se"
    if "stem" in n:
        return "stem"
    if "head" in n:
        return "head"
    if m.groups > 1 and m.groups == m.in_channels:
        return "depthwise"
    if any(s in n for s in ("expand", "conv_pw", "conv_exp")) and "conv_pwl" not in n:
        return "expand"
    if any(s in n for s in ("project", "conv_pwl")):
        return "project"
    return "conv"


# -- one-layer comparison ----------------------------------------------------------------------------------
def compare_layer(cin: int, cout: int, kernel: int = 3, dims: int = 2, resolution: int = 56, t: float = 6.0,
                  se_ratio: float = 0.0) -> dict[str, dict[str, float]]:
    """Standard conv vs depthwise-separable vs MBConv(t) for one layer at stride 1.

    Returns params and MACs of each, and the closed form of standard / separable MACs,
    k^D*cin*cout / (cin*(k^D + cout)) = k^D*cout / (k^D + cout) (independent of cin).
    """
    for name, v in (("cin", cin), ("cout", cout), ("kernel", kernel), ("resolution", resolution)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"invalid {name}={v!r}: must be a positive integer")
    if dims not in (1, 2, 3):
        raise ValueError(f"invalid dims={dims!r}: expected 1, 2 or 3")
    if t < 1:
        raise ValueError(f"invalid t={t!r}: expansion ratio must be >= 1")
    kd = kernel**dims
    px = resolution**dims
    mid = int(round(cin * t))
    se = 2 * mid * max(1, int(cin * se_ratio)) if se_ratio else 0
    rows = {
        "standard": {"params": kd * cin * cout, "macs": px * kd * cin * cout},
        "separable": {"params": kd * cin + cin * cout, "macs": px * (kd * cin + cin * cout)},
        "mbconv": {"params": cin * mid + kd * mid + mid * cout + se,
                   "macs": px * (cin * mid + kd * mid + mid * cout) + se},
    }
    for r in rows.values():
        r["ratio_vs_standard"] = rows["standard"]["macs"] / r["macs"]
    rows["formula"] = {"ratio_std_sep": kd * cout / (kd + cout), "kD": kd}
    return rows
