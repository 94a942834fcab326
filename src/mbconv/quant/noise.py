"""Measured quantization noise: SQNR at every quantizer and block output, and noise gains to the output.

SQNR (dB) = 10 log10(E[x^2] / E[(x_hat - x)^2]), with two meanings per quantizer site:

- *local*: the quantizer's own noise, Q(x) - x on the input it actually sees in the quantized network;
- *accumulated*: the quantized network's tensor at that site vs the float network's (everything upstream).

Block outputs (and the logits) get the accumulated SQNR. The float reference is the same module with its
quantizers off, so the two runs see identical weights and inputs.

Noise gain of quantizer q to a target t (a block output or the logits), the Hutchinson estimate

    G(q -> t) = E||J_{q->t} z||^2 / E||z||^2   (per-element means at both ends)

with z Gaussian noise shaped like q's (per-channel variance Delta_c^2 / 12), pushed through the *float* network
by forward-mode AD (one JVP per site and batch; each sample draws its own probe). For weights the tangent sits
on the weight itself. The linearised prediction of the noise at t is then N_t = sum_q G(q -> t) N_q.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from ..train import model_device
from .fake import FakeQuantize
from .insert import block_names, float_mode, host_weight, quantizers
from .ptq import iter_batches


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise); +inf for zero noise, finite otherwise (no NaN for zero signal)."""
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    mods = dict(model.named_modules())
    return [(b, mods[b]) for b in block_names(model) if b in mods]


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class _Sums:
    __slots__ = ("signal", "noise", "count")

    def __init__(self) -> None:
        self.signal, self.noise, self.count = 0.0, 0.0, 0

    def add(self, ref: torch.Tensor, other: torch.Tensor) -> None:
        ref, d = ref.detach(), (other.detach() - ref.detach())
        sums = torch.stack([torch.sum(ref * ref, dtype=torch.float64), torch.sum(d * d, dtype=torch.float64)])
        s, n = sums.tolist()
        self.signal += s
        self.noise += n
        self.count += ref.numel()

    def row(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {"signal": self.signal / n, "noise": self.noise / n, "sqnr_db": sqnr_db(self.signal, self.noise)}


@torch.no_grad()
def measure_sqnr(qmodel: nn.Module, data: Any, num_samples: int = 256, batch_size: int = 64) -> dict[str, Any]:
    """Local and accumulated SQNR at every quantizer, accumulated SQNR at every block output and the logits.

    Returns {"sites": {site: {kind, block, bits, local_db, accum_db, noise, signal}}, "blocks": [{block,
    sqnr_db, signal, noise}], "output_db", "top1_agreement"} (noise and signal: mean power per element).
    """
    qs = quantizers(qmodel)
    if not qs:
        raise ValueError("model has no quantizers: quantize it first (mbconv.quant.ptq.ptq)")
    was = qmodel.training
    qmodel.eval()
    local = {s: _Sums() for s in qs}
    accum = {s: _Sums() for s in qs}
    blocks = {b: _Sums() for b, _ in _targets(qmodel)}
    out_sums, agree, total = _Sums(), 0, 0
    ref: dict[str, torch.Tensor] = {}
    phase = ["float"]

    def tap(fq: FakeQuantize, x: torch.Tensor, y: torch.Tensor) -> None:
        if fq.kind == "weight":
            return
        if phase[0] == "float":
            ref[fq.site] = y.detach()
        else:
            local[fq.site].add(x, y)
            accum[fq.site].add(ref[fq.site], y)

    def block_hook(name: str):
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            o = _first(out)
            if phase[0] == "float":
                ref["block:" + name] = o.detach()
            else:
                blocks[name].add(ref["block:" + name], o)
        return hook

    handles = [m.register_forward_hook(block_hook(b)) for b, m in _targets(qmodel)]
    for q in qs.values():
        q.tap = tap
    try:
        for x in iter_batches(data, num_samples, batch_size, device=model_device(qmodel)):
            phase[0] = "float"
            ref.clear()
            with float_mode(qmodel):
                yf = _first(qmodel(x))
            phase[0] = "quant"
            yq = _first(qmodel(x))
            out_sums.add(yf, yq)
            if yf.ndim == 2:
                agree += int((yf.argmax(1) == yq.argmax(1)).sum())
                total += yf.shape[0]
    finally:
        for h in handles:
            h.remove()
        for q in qs.values():
            q.tap = None
        qmodel.train(was)

    sites: dict[str, dict[str, Any]] = {}
    for s, q in qs.items():
        if q.kind == "weight":
            w = host_weight(qmodel, q).detach()
            local[s].add(w, q(w))
            accum[s] = local[s]
        lr, ar = local[s].row(), accum[s].row()
        sites[s] = {"kind": q.kind, "block": q.block, "bits": q.spec.bits, "local_db": lr["sqnr_db"],
                    "accum_db": ar["sqnr_db"], "noise": lr["noise"], "signal": lr["signal"]}
    return {"sites": sites,
            "blocks": [{"block": b, **v.row()} for b, v in blocks.items()],
            "output_db": out_sums.row()["sqnr_db"], "output": out_sums.row(),
            "top1_agreement": agree / total if total else None}


def _noise_like(fq: FakeQuantize, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian with per-channel std Delta_c / sqrt(12) on fq's channel axis (per-tensor: one std)."""
    z = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)  # CPU stream: same draws on any device
    std = fq.step().to(y.dtype) / math.sqrt(12.0)
    if std.numel() > 1:
        shape = [1] * y.ndim
        shape[fq.spec.ch_axis] = -1
        std = std.reshape(shape)
    return z * std


def _injector(zs: list[torch.Tensor], gen: torch.Generator):
    """FakeQuantize.inject hook: make the site's output a forward-AD dual with a noise-shaped tangent."""
    def inject(f: FakeQuantize, y: torch.Tensor) -> torch.Tensor:
        z = _noise_like(f, y, gen)
        zs.append(z)
        return fwAD.make_dual(y, z)
    return inject


@torch.no_grad()
def noise_gains(qmodel: nn.Module, data: Any, num_samples: int = 32, batch_size: int = 32,
                sites: Iterable[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Hutchinson noise gains G(q -> t) from each quantizer site q to every block output t and the logits.

    One forward-mode JVP of the float network per site and batch. Returns {"gains": {site: {target: G}},
    "targets": [...]} with the logits as target "output".
    """
    qs = quantizers(qmodel)
    chosen = list(qs) if sites is None else [s for s in sites if s in qs]
    targets = _targets(qmodel)
    names = [b for b, _ in targets] + ["output"]
    num = {s: dict.fromkeys(names, 0.0) for s in chosen}
    den = dict.fromkeys(chosen, 0.0)
    den_n = dict.fromkeys(chosen, 0)
    cnt = {s: dict.fromkeys(names, 0) for s in chosen}
    tangent_at: dict[str, torch.Tensor | None] = {}
    gen = torch.Generator().manual_seed(seed)

    def block_hook(name: str):
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            t = fwAD.unpack_dual(_first(out)).tangent
            tangent_at[name] = None if t is None else t.detach()
        return hook

    was = qmodel.training
    qmodel.eval()
    handles = [m.register_forward_hook(block_hook(b)) for b, m in targets]
    try:
        with float_mode(qmodel), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch scripts its forward-AD decompositions once
            for x in iter_batches(data, num_samples, batch_size, device=model_device(qmodel)):
                for s in chosen:
                    fq = qs[s]
                    zs: list[torch.Tensor] = []

                    fq.inject = _injector(zs, gen)
                    tangent_at.clear()
                    try:
                        with fwAD.dual_level():
                            out = _first(qmodel(x))
                            t_out = fwAD.unpack_dual(out).tangent
                    finally:
                        fq.inject = None
                    if not zs:
                        continue
                    den[s] += float(torch.stack([z.double().pow(2).mean() for z in zs]).mean())
                    den_n[s] += 1
                    tangent_at["output"] = None if t_out is None else t_out.detach()
                    for t in names:
                        tv = tangent_at.get(t)
                        if tv is not None:
                            num[s][t] += float(tv.double().pow(2).mean())
                            cnt[s][t] += 1
    finally:
        for h in handles:
            h.remove()
        qmodel.train(was)
    gains: dict[str, dict[str, float]] = {}
    for s in chosen:
        if den[s] <= 0:
            continue
        d = den[s] / den_n[s]
        gains[s] = {t: (num[s][t] / cnt[s][t]) / d for t in names if cnt[s][t]}
    return {"gains": gains, "targets": names}


def predict_from_gains(gains: dict[str, dict[str, float]], noise: dict[str, float],
                       signal: dict[str, float]) -> dict[str, dict[str, float]]:
    """N_t = sum_q G(q -> t) N_q and the resulting SQNR_t for every target t with a known signal power."""
    out: dict[str, dict[str, float]] = {}
    for t, s_t in signal.items():
        n_t = sum(g[t] * noise.get(q, 0.0) for q, g in gains.items() if t in g)
        out[t] = {"noise": n_t, "signal": s_t, "sqnr_db": sqnr_db(s_t, n_t)}
    return out
