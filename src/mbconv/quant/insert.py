"""Put fake quantizers into any MBConv-family module, without a parallel "quantizable" model class.

Weights are quantized through `torch.nn.utils.parametrize` (the conv still owns its weight); activations through
forward hooks whose `FakeQuantize` modules are attached as children of the module they watch, so they travel
with `state_dict`, `deepcopy` and `.parameters()` (LSQ steps). Module names stay as they were, so every other
tool (gates, pruning, cost) still finds `expand`, `depthwise`, `se`, `gate` and `project`.

Quantizer sites, named `"<module path>:<what>"` (kinds in brackets):

- `input` [input]: the network input;
- `<conv or linear>:weight` [weight]: every Conv1d/2d/3d and Linear weight (per output channel by default);
- `<ConvNormAct>:act` [act]: the output of every conv -> (folded BN) -> activation (the tensor an int8 runtime
  stores between convs; `project` has no activation, so it is the conv output);
- `<se>.conv_reduce:se_pool`, `<se>.act:se_hidden`, `<se>.conv_expand:se_logit` [se_inner]: inside SE;
- `<se>.gate:gate` [gate]: the gate values (unsigned, fixed range [0, 1] by default);
- `<se>:se` [se]: the gated tensor x * g;
- `<block>:add` [add]: the block output after the residual add;
- `<linear>:linear_in` [pool] and `<linear>:logits` [logits]: the pooled features and the logits.

Placements: 'runtime' = where an int8 runtime keeps int8 tensors (conv/linear inputs and outputs: everything but
the gate values, which a runtime multiplies in without storing); 'full' = the analytic model's finer placement,
'runtime' plus the gate values. 'weights' and 'acts' quantize only one side.
"""

from __future__ import annotations

import fnmatch
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..layers import ConvNormAct, SqueezeExcite
from ..train import model_device
from .fake import CALIBS, FakeQuantize, QuantSpec

KINDS = ("input", "weight", "act", "se_inner", "gate", "se", "add", "pool", "logits")
# Sites whose tensors have no spatial extent (N x C, or N x C x 1...): one value per sample and channel.
POOLED_KINDS = frozenset({"se_inner", "gate", "pool", "logits"})
PLACEMENTS: dict[str, frozenset[str]] = {
    "runtime": frozenset(KINDS) - {"gate"},
    "full": frozenset(KINDS),
    "weights": frozenset({"weight"}),
    "acts": frozenset(KINDS) - {"weight"},
}
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
MODES = ("quant", "observe", "off")


@dataclass
class QuantConfig:
    """A PTQ/QAT recipe: bit widths, granularity, calibration, placement and per-site overrides.

    `overrides` maps fnmatch patterns on site names to bits (0 or None: leave that site in float), e.g.
    `{"stem.*": 8, "*depthwise.conv:weight": 8}`; the first matching pattern wins. `first_last_bits` sets the
    network input, the first and last weights and the classifier's input/output quantizers (mixed precision).
    """

    wbits: int | None = 8
    abits: int | None = 8
    w_per_channel: bool = True
    a_per_channel: bool = False
    # Per-channel ranges at the pooled sites (SE vectors, classifier input, logits) are fit on one value per
    # sample and channel and do not generalise (docs/claims/f_quant_se_placement.md): by default those sites
    # stay per-tensor even with a_per_channel.
    a_per_channel_pooled: bool = False
    w_symmetric: bool = True
    a_symmetric: bool = False
    w_calib: str = "minmax"
    a_calib: str = "minmax"
    percentile: float = 99.99
    placement: str = "runtime"
    gate_bits: int | None = None  # default: abits
    gate_fixed_range: bool = True  # sigmoid-type gates: [0, 1], no calibration (what runtimes do)
    first_last_bits: int | None = None
    overrides: dict[str, int | None] = field(default_factory=dict)
    learn_step: bool = False  # LSQ step sizes (for QAT)
    calib_max_samples: int = 2**16  # values kept per quantizer for percentile/MSE ranges (memory and time)

    def __post_init__(self) -> None:
        if not isinstance(self.placement, str) or self.placement not in PLACEMENTS:
            raise ValueError(f"invalid placement={self.placement!r}: expected one of {list(PLACEMENTS)}")
        for name in ("wbits", "abits", "gate_bits", "first_last_bits"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, numbers.Integral) or isinstance(v, bool) or not 2 <= v <= 16):
                raise ValueError(f"invalid {name}={v!r}: expected an integer in [2, 16] or None (float)")
            if v is not None:
                setattr(self, name, int(v))  # numpy integers too; QuantSpec keeps plain ints
        for name in ("w_per_channel", "a_per_channel", "a_per_channel_pooled", "w_symmetric", "a_symmetric",
                     "gate_fixed_range", "learn_step"):
            if not isinstance(getattr(self, name), bool):  # 'no' would be truthy
                raise ValueError(f"invalid {name}={getattr(self, name)!r}: expected True or False")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 50.0 < p <= 100.0:  # also nan
            raise ValueError(f"invalid percentile={p!r}: expected a number in (50, 100]")
        if not isinstance(self.overrides, dict):
            raise ValueError(f"invalid overrides={self.overrides!r}: expected a dict of site pattern -> bits")
        for name in ("w_calib", "a_calib"):
            if getattr(self, name) not in CALIBS:
                raise ValueError(f"invalid {name}={getattr(self, name)!r}: expected one of {CALIBS}")
        cms = self.calib_max_samples
        if isinstance(cms, bool) or not isinstance(cms, numbers.Integral) or cms < 256:
            raise ValueError(f"invalid calib_max_samples={self.calib_max_samples!r}: expected an integer >= 256")
        for pat, v in self.overrides.items():
            if not isinstance(pat, str):
                raise ValueError(f"invalid override pattern {pat!r}: expected an fnmatch string such as 'stem.*'")
            if v not in (None, 0) and (not isinstance(v, numbers.Integral) or isinstance(v, bool)
                                       or not 2 <= v <= 16):
                raise ValueError(f"invalid override {pat!r}={v!r}: expected bits in [2, 16], or 0/None for float")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


# -- naming ---------------------------------------------------------------------------------------------------
def block_names(model: nn.Module) -> list[str]:
    """Forward-order names of the model's blocks: stem, every block, head, classifier (those that exist)."""
    names = dict((id(m), n) for n, m in model.named_modules())
    out = [n for n in ("stem",) if hasattr(model, n)]
    if hasattr(model, "blocks") and callable(model.blocks):
        out += [names[id(b)] for b in model.blocks() if id(b) in names]
    out += [n for n in ("head", "classifier") if isinstance(getattr(model, n, None), nn.Module)
            and not isinstance(getattr(model, n), nn.Identity)]
    return out


def _block_of(path: str, blocks: list[str]) -> str | None:
    best = None
    for b in blocks:
        if (path == b or path.startswith(b + ".")) and (best is None or len(b) > len(best)):
            best = b
    return best


def _site_kind_bits(cfg: QuantConfig, kind: str) -> int | None:
    if kind == "weight":
        return cfg.wbits
    if kind == "gate":
        return cfg.gate_bits if cfg.gate_bits is not None else cfg.abits
    return cfg.abits


def _act_spec(cfg: QuantConfig, bits: int, kind: str) -> QuantSpec:
    if kind == "gate" and cfg.gate_fixed_range:
        return QuantSpec(bits, symmetric=True, signed=False, fixed_range=(0.0, 1.0), learn=cfg.learn_step)
    per_channel = cfg.a_per_channel and (cfg.a_per_channel_pooled or kind not in POOLED_KINDS)
    return QuantSpec(bits, symmetric=cfg.a_symmetric, per_channel=per_channel, ch_axis=1, calib=cfg.a_calib,
                     percentile=cfg.percentile, learn=cfg.learn_step)


def _weight_spec(cfg: QuantConfig, bits: int) -> QuantSpec:
    return QuantSpec(bits, symmetric=cfg.w_symmetric, per_channel=cfg.w_per_channel, ch_axis=0, calib=cfg.w_calib,
                     percentile=cfg.percentile, signed=True, learn=cfg.learn_step)


# -- insertion ------------------------------------------------------------------------------------------------
def _plan_sites(model: nn.Module, kinds: frozenset[str]) -> list[tuple[str, str, str, str]]:
    """(site, kind, host module path, how) in forward order, where how is 'param' | 'pre' | 'post'."""
    sites: list[tuple[str, str, str, str]] = []
    if "input" in kinds:
        sites.append(("input", "input", "", "pre"))
    for name, m in model.named_modules():
        if isinstance(m, FakeQuantize):
            continue
        if "weight" in kinds and isinstance(m, (*_CONV, nn.Linear)):
            sites.append((f"{name}:weight", "weight", name, "param"))
        if isinstance(m, nn.Linear):
            if "pool" in kinds:
                sites.append((f"{name}:linear_in", "pool", name, "pre"))
            if "logits" in kinds:
                sites.append((f"{name}:logits", "logits", name, "post"))
        if isinstance(m, ConvNormAct) and "act" in kinds:
            sites.append((f"{name}:act", "act", name, "post"))
        if isinstance(m, SqueezeExcite):
            if "se_inner" in kinds:
                sites += [(f"{name}.conv_reduce:se_pool", "se_inner", f"{name}.conv_reduce", "pre"),
                          (f"{name}.act:se_hidden", "se_inner", f"{name}.act", "post"),
                          (f"{name}.conv_expand:se_logit", "se_inner", f"{name}.conv_expand", "post")]
            if "gate" in kinds:
                sites.append((f"{name}.gate:gate", "gate", f"{name}.gate", "post"))
            if "se" in kinds:
                sites.append((f"{name}:se", "se", name, "post"))
        if "add" in kinds and getattr(m, "has_skip", False) is True and name:
            sites.append((f"{name}:add", "add", name, "post"))
    return sites


def _first_last(sites: list[tuple[str, str, str, str]]) -> set[str]:
    weights = [s for s, k, _, _ in sites if k == "weight"]
    chosen = {"input"}
    if weights:
        chosen |= {weights[0], weights[-1]}
    chosen |= {s for s, k, _, _ in sites if k in ("pool", "logits")}
    return chosen


def insert_quantizers(model: nn.Module, cfg: QuantConfig) -> dict[str, FakeQuantize]:
    """Attach fake quantizers to `model` in place (give it a BN-folded copy, see `mbconv.quant.ptq.prepare`).

    Returns {site: FakeQuantize} in forward order. Quantizers start in 'observe' mode (calibrate next).
    """
    if not isinstance(cfg, QuantConfig):
        raise ValueError(f"cfg must be a QuantConfig, not a {type(cfg).__name__}: QuantConfig(**...)")
    if getattr(model, "_quant_handles", None):
        raise ValueError("model already has quantizers: insert into a fresh (BN-folded) copy")
    kinds = PLACEMENTS[cfg.placement]
    sites = _plan_sites(model, kinds)
    blocks = block_names(model)
    fl = _first_last(sites) if cfg.first_last_bits is not None else set()
    mods = dict(model.named_modules())
    device = model_device(model)  # quantizer state lives beside the weights (GPU calibration, QAT)
    handles: list[Any] = []
    out: dict[str, FakeQuantize] = {}
    for site, kind, host, how in sites:
        bits = _site_kind_bits(cfg, kind)
        if site in fl:
            bits = cfg.first_last_bits
        for pat, v in cfg.overrides.items():
            if fnmatch.fnmatchcase(site, pat):
                bits = int(v) if v else None
                break
        if bits is None:
            continue
        spec = _weight_spec(cfg, bits) if kind == "weight" else _act_spec(cfg, bits, kind)
        fq = FakeQuantize(spec, site=site, kind=kind, block=_block_of(host, blocks) if host else "input",
                          max_samples=cfg.calib_max_samples).to(device)
        fq.mode = "observe"
        fq.host = host
        fq.order = len(out)  # forward order of the plan, for reports
        m = mods[host]
        if how == "param":
            parametrize.register_parametrization(m, "weight", fq)
        elif how == "pre":
            m.add_module("in_quant" if host else "input_quant", fq)
            handles.append(m.register_forward_pre_hook(_pre_hook(fq)))
        else:
            m.add_module("add_quant" if kind == "add" else "out_quant", fq)
            handles.append(m.register_forward_hook(_post_hook(fq)))
        out[site] = fq
    model._quant_handles = handles  # so remove_quantizers can undo the hooks
    model._quant_config = cfg
    return out


def _pre_hook(fq: FakeQuantize):
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (fq(args[0]), *args[1:])
    return hook


def _post_hook(fq: FakeQuantize):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return fq(output)
    return hook


def quantizers(model: nn.Module, kinds: Iterable[str] | None = None) -> dict[str, FakeQuantize]:
    """{site: FakeQuantize} of a quantized model, in forward order (the network input first)."""
    ks = set(kinds) if kinds is not None else None
    if ks is not None and not ks <= set(KINDS):  # a misspelt kind would select nothing, silently
        raise ValueError(f"invalid kinds={sorted(ks - set(KINDS))}: expected some of {KINDS}")
    found = [m for m in model.modules() if isinstance(m, FakeQuantize) and m.site and (ks is None or m.kind in ks)]
    found.sort(key=lambda m: getattr(m, "order", 0))
    return {m.site: m for m in found}


def host_weight(model: nn.Module, fq: FakeQuantize) -> torch.Tensor:
    """The float weight a weight quantizer `fq` sits on (its host's parametrized original)."""
    return model.get_submodule(fq.host).parametrizations["weight"].original


def set_mode(model: nn.Module, mode: str, kinds: Iterable[str] | None = None) -> None:
    """Set every (or every `kinds`) quantizer to 'quant', 'observe' or 'off' (float)."""
    if mode not in MODES:
        raise ValueError(f"invalid mode={mode!r}: expected one of {MODES}")
    for fq in quantizers(model, kinds).values():
        fq.mode = mode


class float_mode:
    """Context manager: all quantizers off (the float reference of the same module), restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.qs = quantizers(model)

    def __enter__(self) -> float_mode:
        self.saved = {s: q.mode for s, q in self.qs.items()}
        for q in self.qs.values():
            q.mode = "off"
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, q in self.qs.items():
            q.mode = self.saved[s]


def remove_quantizers(model: nn.Module) -> nn.Module:
    """Undo `insert_quantizers` in place: hooks, parametrizations (keeping the float weights) and children."""
    for h in getattr(model, "_quant_handles", []):
        h.remove()
    model._quant_handles = []
    for m in list(model.modules()):
        if parametrize.is_parametrized(m, "weight") and any(
                isinstance(p, FakeQuantize) for p in m.parametrizations["weight"]):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        for n in ("in_quant", "out_quant", "add_quant", "input_quant"):
            if isinstance(getattr(m, n, None), FakeQuantize):
                delattr(m, n)
    return model
