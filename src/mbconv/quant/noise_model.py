"""The analytic signal-and-noise model: propagate per-channel noise second moments through an MBConv network.

Noise N_c (mean power per element of channel c) starts at every quantizer as

    N_q,c = P_c * Delta_c^2 / 12 + E[(x - clip(x))^2]_c

(P_c: the fraction of channel c's values inside the range and not exactly on the grid's zero, which quantizes
without error, e.g. dead ReLU outputs; the second term is the clipping error), and moves through the layers
under the usual assumptions (independent, white, zero-mean noise; layers linearised around the float signal):

- conv / linear (any groups, folded BN):  N_y,i = sum_{j,taps} W_ij^2 N_x,j + N_W,i * taps * sum_j E[x_j^2]
  (propagated noise + weight-quantization noise, N_W,i from the weight quantizer of output channel i);
- weight noise E_W x = E_W mu + E_W (x - mu) is split into a zero-mean part and a per-channel mean shift (the
  bias shift that bias correction removes); a shift adds coherently over taps ((sum_taps W)^2), passes an
  activation with E[phi']^2, is not averaged away by pooling, and is tracked as its own row;
- activation:  N' = E[phi'(h)^2] N  (per channel, from the float pre-activations h);
- SE gate y = g x:  N' = E[g^2] N_x + Var(dg) E[x^2] (gate jitter: the pooled noise, N_x / positions, pushed
  through the SE's convs, activation and gate derivative, plus the SE's own quantizers) + gate and output
  quantizers;
- residual:  N_out = N_skip + N_branch (their correlation is neglected);
- global pooling:  zero-mean N / positions (white noise averages out); a mean shift passes unchanged.

Known limitation (measured, see the tests and docs/claims): propagated noise is not white after a few layers, so
deep stacks amplify early noise more than the white rule says; the model is accurate near where noise enters
and optimistic far downstream. `mbconv.quant.noise.noise_gains` (Hutchinson JVPs of the real network) has no
such assumption and is the linearised reference.

The signal second moments S_c are measured on the float network (the same module with quantizers off), so the
prediction isolates the noise model. SQNR at a block = 10 log10(sum_c S_c / sum_c N_c).
The walk follows the MBConv family's names (`stem`, `blocks()`, `head`, `classifier`) and, inside a block, the
block's own layout (`steps`, `mbconv.layers.layout`), so any network built from `mbconv.layers` works, including
one loaded from timm weights.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from ..layers import SqueezeExcite
from ..train import model_device
from .fake import FakeQuantize
from .insert import block_names, float_mode, host_weight, quantizers
from .noise import sqnr_db
from .ptq import iter_batches

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _chan(t: torch.Tensor) -> torch.Tensor:
    """Per-channel mean over everything but axis 1 (float64)."""
    t = t.detach().double()
    return t.transpose(0, 1).reshape(t.shape[1], -1).mean(1) if t.ndim > 1 else t


class _Mean:
    """Running per-channel means over batches (weighted by batch size)."""

    def __init__(self) -> None:
        self.sum: dict[str, torch.Tensor] = {}
        self.n: dict[str, int] = defaultdict(int)

    def add(self, key: str, v: torch.Tensor, n: int) -> None:
        self.sum[key] = self.sum.get(key, 0) + v * n
        self.n[key] += n

    def get(self, key: str) -> torch.Tensor | None:
        return None if key not in self.sum else self.sum[key] / self.n[key]


def _deriv(act: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel E[phi'(h)] and E[phi'(h)^2] of an elementwise activation (calls .forward, bypassing hooks)."""
    if isinstance(act, nn.Identity):
        one = torch.ones(h.shape[1], dtype=torch.float64)
        return one, one.clone()
    with torch.enable_grad():
        h2 = h.detach().float().requires_grad_(True)
        (g,) = torch.autograd.grad(act.forward(h2).sum(), h2)
    return _chan(g), _chan(g.pow(2))


def _quant_noise(fq: FakeQuantize, x: torch.Tensor) -> torch.Tensor:
    """Per-channel analytic noise of quantizer fq on input x (channels on fq's axis): P Delta^2/12 + clipping."""
    axis = fq.spec.ch_axis if fq.kind == "weight" else 1
    x = x.detach().double()
    lo, hi = (t.double() for t in fq.range())
    step = fq.step().double()
    xc = x.movedim(axis, 0).reshape(x.shape[axis], -1) if x.ndim > 1 else x.reshape(1, -1)
    if lo.numel() == 1:
        lo, hi, step = lo.expand(xc.shape[0]), hi.expand(xc.shape[0]), step.expand(xc.shape[0])
    lo, hi, step = lo[:, None], hi[:, None], step[:, None]
    clipped = torch.maximum(torch.minimum(xc, hi), lo)
    smooth = ((xc >= lo) & (xc <= hi) & (xc != 0)).double()  # exact zeros are on the grid: no error
    return (smooth * step.pow(2) / 12.0).mean(1) + (xc - clipped).pow(2).mean(1)


class _Stats:
    """Float-network statistics the model needs, gathered by hooks in one or more batches."""

    def __init__(self, qmodel: nn.Module) -> None:
        self.m = _Mean()
        self.qmodel = qmodel
        self.positions: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run(self, data: Any, num_samples: int, batch_size: int) -> None:
        qm = self.qmodel
        handles = []
        qs = quantizers(qm)
        mods = dict(qm.named_modules())
        targets = [(b, mods[b]) for b in block_names(qm) if b in mods]

        def q_tap(fq: FakeQuantize, x: torch.Tensor, y: torch.Tensor) -> None:
            if fq.kind != "weight":
                self.m.add("q:" + fq.site, _quant_noise(fq, x), x.shape[0])

        def conv_in(name: str):
            def hook(mod: nn.Module, args: tuple) -> None:
                x = args[0]
                self.m.add("in2:" + name, _chan(x.pow(2)), x.shape[0])
                self.m.add("in1:" + name, _chan(x), x.shape[0])
                self.positions[name] = x[0, 0].numel() if x.ndim > 2 else 1
                self.shapes[name] = tuple(x.shape[2:])
            return hook

        def act_in(name: str):
            def hook(mod: nn.Module, args: tuple) -> None:
                d1, d2 = _deriv(mod, args[0])
                self.m.add("dphi1:" + name, d1, args[0].shape[0])
                self.m.add("dphi2:" + name, d2, args[0].shape[0])
            return hook

        def out2(name: str):
            def hook(mod: nn.Module, args: tuple, out: Any) -> None:
                o = out[0] if isinstance(out, (tuple, list)) else out
                self.m.add("out2:" + name, _chan(o.pow(2)), o.shape[0])
                self.m.add("out1:" + name, _chan(o), o.shape[0])
                self.positions["out:" + name] = o[0, 0].numel() if o.ndim > 2 else 1
            return hook

        def se_in(name: str):
            def hook(mod: nn.Module, args: tuple) -> None:
                x = args[0]
                self.m.add("sein2:" + name, _chan(x.pow(2)), x.shape[0])
                self.m.add("sein1:" + name, _chan(x), x.shape[0])
                self.positions["se:" + name] = x[0, 0].numel() if x.ndim > 2 else 1
            return hook

        for name, mod in qm.named_modules():
            if hasattr(mod, "conv_reduce") and hasattr(mod, "gate"):
                handles.append(mod.register_forward_pre_hook(se_in(name)))
            if isinstance(mod, (*_CONV, nn.Linear)):
                handles.append(mod.register_forward_pre_hook(conv_in(name)))
            if name.endswith(".act") or name.endswith(".gate"):
                handles.append(mod.register_forward_pre_hook(act_in(name)))
            if name.endswith(".gate"):
                handles.append(mod.register_forward_hook(out2(name)))
        for b, mod in targets:
            handles.append(mod.register_forward_hook(out2(b)))
        handles.append(qm.register_forward_hook(out2("output")))
        for q in qs.values():
            q.tap = q_tap
        try:
            with torch.no_grad(), float_mode(qm):
                for x in iter_batches(data, num_samples, batch_size, device=model_device(qm)):
                    qm(x)
        finally:
            for h in handles:
                h.remove()
            for q in qs.values():
                q.tap = None
        self.weight_noise = {}
        for q in qs.values():
            if q.kind == "weight":
                self.weight_noise[q.host] = _quant_noise(q, host_weight(qm, q))


class NoiseModel:
    """Analytic per-channel noise propagation through a calibrated fake-quantized MBConv network.

    `NoiseModel(qmodel).fit(data)` gathers float statistics; `.predict()` returns per-block predictions.
    """

    def __init__(self, qmodel: nn.Module) -> None:
        if not quantizers(qmodel):
            raise ValueError("model has no quantizers: quantize it first (mbconv.quant.ptq.ptq)")
        self.qmodel = qmodel
        self.mods = dict(qmodel.named_modules())
        self.names = {id(m): n for n, m in qmodel.named_modules()}
        self.sites = {q.site for q in quantizers(qmodel).values()}

    def fit(self, data: Any, num_samples: int = 256, batch_size: int = 64) -> NoiseModel:
        self.st = _Stats(self.qmodel)
        self.st.run(data, num_samples, batch_size)
        return self

    # -- primitives (noise is a (2, C) tensor: row 0 zero-mean power, row 1 mean-shift (DC) power) --
    def _q(self, site: str, n: torch.Tensor) -> torch.Tensor:
        v = self.st.m.get("q:" + site)
        if v is None:
            return n
        n = n.clone()
        n[0] = n[0] + v
        return n

    def _mean_var(self, prefix: str, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        m2, m1 = self.st.m.get(f"{prefix}2:{name}"), self.st.m.get(f"{prefix}1:{name}")
        return None if m2 is None or m1 is None else (m1.pow(2), (m2 - m1.pow(2)).clamp_min(0))

    def _coverage(self, name: str, mod: nn.Module) -> torch.Tensor | float:
        """Per tap, the fraction of output positions where it reads the input rather than zero padding (small
        maps: a 5x5 kernel on a 2x2 map uses at most 4 of its 25 taps)."""
        shape = self.st.shapes.get(name)
        if not isinstance(mod, _CONV) or not shape:
            return 1.0
        cov = torch.ones((), dtype=torch.float64)
        for d, n in enumerate(shape):
            k, st, dil = mod.kernel_size[d], mod.stride[d], mod.dilation[d]
            pad = mod.padding[d] if isinstance(mod.padding, tuple) else 0
            out = (n + 2 * pad - dil * (k - 1) - 1) // st + 1
            o = torch.arange(max(out, 1), dtype=torch.float64)[:, None]
            idx = o * st + torch.arange(k, dtype=torch.float64)[None, :] * dil - pad
            frac = ((idx >= 0) & (idx < n)).double().mean(0)  # (k,)
            cov = cov[..., None] * frac
        return cov.reshape(-1)

    def _linear(self, name: str, n_in: torch.Tensor) -> torch.Tensor:
        mod = self.mods[name]
        w = mod.parametrizations["weight"].original if hasattr(mod, "parametrizations") else mod.weight
        w = w.detach().double()
        wt = w.reshape(w.shape[0], w.shape[1], -1)
        cov = self._coverage(name, mod)
        taps = float(cov.sum()) if isinstance(cov, torch.Tensor) else float(wt.shape[2])
        groups = getattr(mod, "groups", 1)
        cout, cin_g = wt.shape[:2]

        def apply(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # sum_j m_ij v_j within groups
            return torch.einsum("goj,gj->go", m.reshape(groups, cout // groups, cin_g),
                                v.reshape(groups, cin_g)).reshape(cout)

        # zero-mean noise adds in power over taps; a mean shift is the same at every tap, so it adds coherently
        out = torch.stack([apply((wt.pow(2) * cov).sum(2), n_in[0]), apply((wt * cov).sum(2).pow(2), n_in[1])])
        wn = self.st.weight_noise.get(name)
        mv = self._mean_var("in", name)
        if wn is not None and mv is not None:
            # E_W x = E_W mu + E_W (x - mu): a per-channel mean shift plus zero-mean noise
            mu2, var = mv
            out[0] = out[0] + wn * taps * var.reshape(groups, cin_g).sum(1).repeat_interleave(cout // groups)
            out[1] = out[1] + wn * taps * mu2.reshape(groups, cin_g).sum(1).repeat_interleave(cout // groups)
        return out

    def _act(self, name: str, n: torch.Tensor) -> torch.Tensor:
        d1, d2 = self.st.m.get("dphi1:" + name), self.st.m.get("dphi2:" + name)
        if d1 is None:
            return n
        # a shift delta becomes phi'(h) delta: mean E[phi'] delta, the rest zero-mean
        return torch.stack([d2 * n[0] + (d2 - d1.pow(2)).clamp_min(0) * n[1], d1.pow(2) * n[1]])

    def _cna(self, name: str, n_in: torch.Tensor) -> torch.Tensor:
        return self._q(f"{name}:act", self._act(f"{name}.act", self._linear(f"{name}.conv", n_in)))

    @staticmethod
    def _pool(n: torch.Tensor, p: int) -> torch.Tensor:
        return torch.stack([n[0] / p, n[1]])  # white noise averages out over p positions, a shift does not

    def _se(self, name: str, n_x: torch.Tensor) -> torch.Tensor:
        p = max(self.st.positions.get("se:" + name, 1), 1)
        n = self._q(f"{name}.conv_reduce:se_pool", self._pool(n_x, p))
        n = self._act(f"{name}.act", self._linear(f"{name}.conv_reduce", n))
        n = self._q(f"{name}.act:se_hidden", n)
        n = self._q(f"{name}.conv_expand:se_logit", self._linear(f"{name}.conv_expand", n))
        n_g = self._q(f"{name}.gate:gate", self._act(f"{name}.gate", n)).sum(0)  # Var(dg) per channel
        g1, g2 = self.st.m.get(f"out1:{name}.gate"), self.st.m.get(f"out2:{name}.gate")
        mu2, var = self._mean_var("sein", name)
        # g (x + n) + dg x: gated noise (a shift scaled by the mean gate stays a shift) plus gate jitter times x
        out = torch.stack([g2 * n_x[0] + (g2 - g1.pow(2)).clamp_min(0) * n_x[1] + n_g * var,
                           g1.pow(2) * n_x[1] + n_g * mu2])
        return self._q(f"{name}:se", out)

    def _block(self, name: str, n_in: torch.Tensor) -> torch.Tensor:
        b = self.mods[name]
        steps = getattr(b, "steps", None)
        if steps is None:
            raise ValueError(f"block {name!r} ({type(b).__name__}) has no layout steps: the noise model walks "
                             f"MBConv-family blocks (mbconv.layers.Block) only")
        n = n_in
        for step in steps:  # the block's own layout, in forward order
            sub = f"{name}.{step}"
            n = self._se(sub, n) if isinstance(getattr(b, step), SqueezeExcite) else self._cna(sub, n)
        if getattr(b, "has_skip", False):
            n = n + n_in
        return self._q(f"{name}:add", n)

    # -- the walk --
    def predict(self) -> dict[str, Any]:
        """Per-block predicted noise and SQNR ({"blocks": [...], "output_db"}), next to the float signal."""
        qm = self.qmodel
        for attr in ("stem", "classifier"):
            if not isinstance(getattr(qm, attr, None), nn.Module):
                raise ValueError(f"the noise model needs an MBConv-family network with .{attr}; got "
                                 f"{type(qm).__name__}")
        rows = []
        x2 = self.st.m.get("in2:stem.conv")
        n = self._q("input", torch.zeros(2, x2.shape[0], dtype=torch.float64))
        blocks = block_names(qm)
        head_after_pool = getattr(getattr(qm, "spec", None), "head_type", "conv") == "pool_conv"
        for b in blocks:
            if b == "stem":
                n = self._cna("stem", n)
            elif b == "head":
                if head_after_pool:
                    continue
                n = self._cna("head", n)
            elif b == "classifier":
                last = "head" if "head" in blocks and not head_after_pool else blocks[-2]
                p = max(self.st.positions.get("out:" + last, 1), 1)
                n = self._pool(n, p)
                if head_after_pool and "head" in blocks:
                    n = self._cna("head", n)
                n = self._q("classifier:linear_in", n)
                n = self._q("classifier:logits", self._linear("classifier", n))
            else:
                n = self._block(b, n)
            s = self.st.m.get("out2:" + b)
            rows.append({"block": b, "signal": float(s.mean()), "noise": float(n.sum(0).mean()),
                         "noise_white": float(n[0].mean()), "noise_structured": float(n[1].mean()),
                         "pred_db": sqnr_db(float(s.sum()), float(n.sum()))})
        return {"blocks": rows, "output_db": rows[-1]["pred_db"] if rows else None}


def compare(qmodel: nn.Module, data: Any, num_samples: int = 256, batch_size: int = 64, gains: bool = False,
            gain_samples: int = 32) -> dict[str, Any]:
    """Measured vs predicted SQNR per block: the analytic model and (optionally) the Hutchinson-gain prediction.

    Rows: {block, measured_db, model_db, model_err_db[, gains_db, gains_err_db]}; plus the measured report and
    (with `gains`) the noise gain of every quantizer to every block output and the logits.
    """
    from .noise import measure_sqnr, noise_gains, predict_from_gains

    meas = measure_sqnr(qmodel, data, num_samples, batch_size)
    pred = NoiseModel(qmodel).fit(data, num_samples, batch_size).predict()
    by = {r["block"]: r for r in pred["blocks"]}
    g_pred, g = None, None
    if gains:
        g = noise_gains(qmodel, data, num_samples=gain_samples, batch_size=gain_samples)
        noise = {s: v["noise"] for s, v in meas["sites"].items()}
        signal = {r["block"]: r["signal"] for r in meas["blocks"]}
        g_pred = predict_from_gains(g["gains"], noise, signal)
    rows = []
    for r in meas["blocks"]:
        b = r["block"]
        row = {"block": b, "measured_db": r["sqnr_db"], "model_db": by[b]["pred_db"] if b in by else None}
        row["model_err_db"] = None if row["model_db"] is None else row["model_db"] - r["sqnr_db"]
        if g_pred is not None:
            row["gains_db"] = g_pred[b]["sqnr_db"]
            row["gains_err_db"] = row["gains_db"] - r["sqnr_db"]
        rows.append(row)
    return {"rows": rows, "measured": meas, "predicted": pred, "gains": None if g is None else g["gains"]}
