"""Post-training quantization: fold BN, insert quantizers, calibrate on real data, evaluate.

    qmodel = ptq(model, QuantConfig(wbits=4, abits=8, first_last_bits=8), calib_ds)
    acc = evaluate(qmodel, test_ds)["acc"]          # mbconv.train.evaluate works on any module

The float reference is the same module with its quantizers off (`float_mode(qmodel)`), so float and quantized
activations can be compared tensor by tensor (see `mbconv.quant.noise`).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..layers import fuse_bn
from ..train import model_device
from .insert import QuantConfig, host_weight, insert_quantizers, quantizers, set_mode


def iter_batches(data: Any, num_samples: int | None = None, batch_size: int = 128,
                 device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """Input batches from a Dataset of (x, y), a DataLoader / iterable of batches, or one tensor; stops after
    `num_samples` samples (all if None), moved to `device` if given. Datasets are read in order (calibration
    must be reproducible)."""
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral)
                                    or num_samples < 1):
        raise ValueError(f"invalid num_samples={num_samples!r}: must be an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"invalid batch_size={batch_size!r}: must be an integer >= 1")
    if device is not None:
        for x in iter_batches(data, num_samples, batch_size):
            yield x.to(device)
        return
    seen = 0

    def take(x: torch.Tensor) -> torch.Tensor | None:
        nonlocal seen
        if num_samples is not None:
            x = x[: num_samples - seen]
        seen += x.shape[0]
        return x if x.shape[0] else None

    if isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            x = take(data[i:i + batch_size])
            if x is None:
                return
            yield x
        return
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data) if num_samples is None else min(len(data), num_samples)
        for i in range(0, n, batch_size):
            yield torch.stack([data[j][0] for j in range(i, min(i + batch_size, n))])
        return
    if not isinstance(data, Iterable):
        raise ValueError(f"cannot read batches from {type(data).__name__}: give a Dataset, DataLoader or tensor")
    for b in data:
        x = take(b[0] if isinstance(b, (tuple, list)) else b)
        if x is None:
            return
        yield x


def prepare(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """A BN-folded eval-mode copy of `model` with quantizers inserted (still uncalibrated)."""
    q = fuse_bn(model)
    insert_quantizers(q, cfg)
    return q


@torch.no_grad()
def calibrate(qmodel: nn.Module, data: Any, num_samples: int = 512, batch_size: int = 128) -> nn.Module:
    """Set every quantizer's range: weights from the weights, activations from `num_samples` inputs of `data`.

    Activation statistics are gathered with every quantizer passing values through (float network), then all
    quantizers switch to 'quant'. Returns `qmodel`.
    """
    qs = quantizers(qmodel)
    if not qs:
        raise ValueError("model has no quantizers: use mbconv.quant.ptq.prepare (or insert_quantizers) first")
    was = qmodel.training
    qmodel.eval()
    acts = {s: q for s, q in qs.items() if q.kind != "weight"}
    for q in qs.values():
        q.mode = "off"
        q.reset_observer()
    needs_data = [q for q in acts.values() if q.spec.fixed_range is None]
    if needs_data:
        for q in needs_data:
            q.mode = "observe"
        n = 0
        for x in iter_batches(data, num_samples, batch_size, device=model_device(qmodel)):
            if not torch.isfinite(x).all():  # NaN/inf would become the ranges of every quantizer, silently
                raise ValueError(f"calibration data holds NaN or infinite values (batch of shape {tuple(x.shape)})")
            qmodel(x)
            n += x.shape[0]
        if n == 0:
            raise ValueError("calibration data is empty")
    for q in acts.values():
        q.finalize()
    for q in qs.values():
        if q.kind == "weight":
            q.calibrate_from(host_weight(qmodel, q))
    set_mode(qmodel, "quant")
    qmodel.train(was)
    return qmodel


def ptq(model: nn.Module, cfg: QuantConfig, calib_data: Any, num_samples: int = 512,
        batch_size: int = 128) -> nn.Module:
    """prepare + calibrate: a fake-quantized copy of `model` (the original is untouched)."""
    return calibrate(prepare(model, cfg), calib_data, num_samples, batch_size)


@torch.no_grad()
def copy_ranges(src: nn.Module, dst: nn.Module, kinds: Iterable[str] | None = None) -> list[str]:
    """Copy calibrated qparams from `src`'s quantizers to `dst`'s quantizers of the same site and spec (bits,
    granularity, calibration), e.g. to reuse activation ranges across weight bit widths (activation ranges are
    calibrated on the float network, so they do not depend on the weight bits). Returns the sites copied."""
    s_q, d_q = quantizers(src, kinds), quantizers(dst, kinds)
    done = []
    for site, d in d_q.items():
        s = s_q.get(site)
        if s is None or s.spec != d.spec or not bool(s.calibrated):
            continue
        d.scale = nn.Parameter(s.scale.detach().clone(), requires_grad=s.spec.learn)
        d.zero_point = s.zero_point.clone()
        d.signed_flag.copy_(s.signed_flag)
        d.calibrated.copy_(s.calibrated)
        d.mode = s.mode
        done.append(site)
    return done


def bit_summary(qmodel: nn.Module) -> dict[str, dict[str, Any]]:
    """Per site: kind, block, bits, signedness, granularity, step size (mean) and representable range."""
    out = {}
    for s, q in quantizers(qmodel).items():
        lo, hi = q.range()
        out[s] = {"kind": q.kind, "block": q.block, "bits": q.spec.bits, "signed": bool(q.signed_flag),
                  "per_channel": q.spec.per_channel, "step": float(q.step().mean()),
                  "lo": float(lo.min()), "hi": float(hi.max())}
    return out
