"""Bias correction (Nagel et al. 2019, "Data-Free Quantization", sec. 4.2): remove the mean output shift that weight
rounding causes, by moving it into the layer's bias.

A quantized weight W_q = W + dW turns a layer's output into y + dW x; averaged over inputs, channel c shifts by

    E[dW x]_c = mean over positions of conv(E[x], dW)_c          (linear in x, so the mean input map suffices)

which a bias of b_c - E[dW x]_c cancels exactly (on the calibration inputs). The shift matters most where the
filter's taps are large and their sum is small (edge detectors: a depthwise 3x3 whose folded weights reach 18 on
EfficientNet-Lite0's first block sees inputs with mean ~3 after ReLU6, so a 0.5 % error in the sum of the taps moves
the output by ~1, a sixth of ReLU6's range). This is the "empirical" variant: E[x] is measured on calibration data
through the float network (quantizers off), not derived from the previous layer's BN statistics, so it is exact for
the float inputs, covers padding and needs no BN.

    q = ptq(model, QuantConfig(wbits=8, abits=8), calib)     # BN folded, calibrated
    correct_bias(q, calib)                                   # in place: the biases of every quantized conv/linear
    f = float_copy(q)                                        # the corrected float network: export it, ORT quantizes

The correction uses the weight quantizer's own rounding, so an integer runtime that rounds the weights the same way
(ONNX Runtime's symmetric s8 per-channel weights, `mbconv.export.int8`) inherits it through the exported biases.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..train import model_device
from .fake import FakeQuantize
from .insert import float_mode, host_weight, quantizers
from .ptq import iter_batches

__all__ = ["correct_bias", "float_copy", "mean_inputs", "weight_shifts"]

QUANTIZER_CHILDREN = ("in_quant", "out_quant", "add_quant", "input_quant")  # names `insert_quantizers` attaches
_CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def _conv_fn(mod: nn.Module) -> Any:
    for cls, fn in _CONVS.items():
        if isinstance(mod, cls):
            return fn
    return None


@torch.no_grad()
def mean_inputs(qmodel: nn.Module, data: Any, num_samples: int = 256, batch_size: int = 32
                ) -> dict[str, torch.Tensor]:
    """{weight site: the mean input its host conv/linear sees (1, C, *spatial), float64}, through the float
    network (every quantizer off) over `num_samples` inputs of `data`."""
    ws = quantizers(qmodel, ["weight"])
    if not ws:
        raise ValueError("model has no weight quantizers: quantize it first (mbconv.quant.ptq.ptq)")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(ws, 0)

    def pre_hook(site: str):
        def hook(mod: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            flat = x.double().sum(0, keepdim=True)
            sums[site] = flat if site not in sums else sums[site] + flat
            counts[site] += x.shape[0]
        return hook

    handles = [qmodel.get_submodule(fq.host).register_forward_pre_hook(pre_hook(s)) for s, fq in ws.items()]
    was = qmodel.training
    qmodel.eval()
    try:
        with float_mode(qmodel):
            n = 0
            for x in iter_batches(data, num_samples, batch_size, device=model_device(qmodel)):
                qmodel(x)
                n += x.shape[0]
        if n == 0:
            raise ValueError("bias correction data is empty")
    finally:
        for h in handles:
            h.remove()
        qmodel.train(was)
    return {s: sums[s] / counts[s] for s in sums}


@torch.no_grad()
def weight_shifts(qmodel: nn.Module, means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{weight site: E[dW x] per output channel} from the mean inputs of `mean_inputs` (float64)."""
    out: dict[str, torch.Tensor] = {}
    for site, fq in quantizers(qmodel, ["weight"]).items():
        if site not in means:
            continue
        mod = qmodel.get_submodule(fq.host)
        w = host_weight(qmodel, fq)
        dw = (fq(w) - w).double()
        mx = means[site].to(dw.device)
        if isinstance(mod, nn.Linear):
            shift = (mx.reshape(-1, mx.shape[-1]) @ dw.T).mean(0)
        else:
            conv = _conv_fn(mod)
            if conv is None:
                continue
            y = conv(mx, dw, None, mod.stride, mod.padding, mod.dilation, mod.groups)
            shift = y.mean(dim=[d for d in range(y.ndim) if d != 1]).reshape(-1)
        out[site] = shift
    return out


@torch.no_grad()
def correct_bias(qmodel: nn.Module, data: Any, num_samples: int = 256, batch_size: int = 32) -> dict[str, float]:
    """Subtract every quantized conv/linear's mean weight-rounding shift E[dW x] from its bias, in place (a layer
    without a bias gets one). `qmodel` is a calibrated fake-quantized model (`ptq`); E[x] is measured on
    `num_samples` inputs of `data`. Returns {weight site: RMS shift over output channels} (what was removed)."""
    shifts = weight_shifts(qmodel, mean_inputs(qmodel, data, num_samples, batch_size))
    qs = quantizers(qmodel, ["weight"])
    report = {}
    for site, shift in shifts.items():
        mod = qmodel.get_submodule(qs[site].host)
        delta = shift.to(host_weight(qmodel, qs[site]).dtype)
        if mod.bias is None:
            mod.bias = nn.Parameter(torch.zeros_like(delta))
        mod.bias.sub_(delta.to(mod.bias.device))
        report[site] = float(shift.pow(2).mean().sqrt())
    return report


def float_copy(qmodel: nn.Module) -> nn.Module:
    """A float copy of a fake-quantized model: every quantizer removed, the (BN-folded, bias-corrected,
    equalized) float weights kept; what `mbconv.export` exports for ONNX Runtime to quantize. `qmodel` is untouched.

    Not `remove_quantizers` on a deepcopy: a deepcopied parametrized module shares its parametrized class with the
    original, and removing the parametrization deletes the `weight` property from that shared class."""
    out = copy.deepcopy(qmodel)
    for h in getattr(out, "_quant_handles", []):  # the copy's handles point at the copy's hook dicts
        h.remove()
    for attr in ("_quant_handles", "_quant_config"):
        if hasattr(out, attr):
            delattr(out, attr)
    for mod in out.modules():
        if parametrize.is_parametrized(mod, "weight"):
            plist = mod.parametrizations["weight"]
            if len(mod.parametrizations) != 1 or not all(isinstance(p, FakeQuantize) for p in plist):
                raise ValueError(f"{type(mod).__name__} has parametrizations other than weight quantizers")
            original = plist.original
            del mod._modules["parametrizations"]
            mod.__class__ = type(mod).__bases__[0]  # the plain conv/linear class, not the shared parametrized one
            mod.weight = original
        for name in QUANTIZER_CHILDREN:
            if isinstance(getattr(mod, name, None), FakeQuantize):
                delattr(mod, name)
    return out.eval()
