"""Quantization: fake quantizers, insertion into any MBConv-family module, PTQ/QAT, measured and predicted noise,
and real int8 inference through ONNX Runtime (`mbconv.export.int8`, needs the `deploy` extra).

    from mbconv.quant import QuantConfig, ptq, measure_sqnr, compare
    q = ptq(model, QuantConfig(wbits=4, abits=8, first_last_bits=8), calib_ds)   # BN folded, calibrated copy
    measure_sqnr(q, test_ds)["blocks"]                                            # SQNR per block output
    compare(q, test_ds, gains=True)["rows"]                                       # predicted vs measured

For real networks (docs/bench/real.md): `correct_bias` (the mean shift of weight rounding into the biases),
`equalize` (cross-layer equalization, ReLU6 kept exact as per-channel clips) and `float_copy` (the corrected float
network, for ONNX Runtime to quantize).
"""

from .bias_correction import correct_bias, float_copy
from .equalize import ChannelClip, equalize
from .fake import FakeQuantize, QuantSpec, calibrate_range, fake_quant, qparams_from_range, qrange, quantize_tensor
from .insert import (
    KINDS,
    PLACEMENTS,
    QuantConfig,
    float_mode,
    insert_quantizers,
    quantizers,
    remove_quantizers,
    set_mode,
)
from .noise import measure_sqnr, noise_gains, predict_from_gains, sqnr_db
from .noise_model import NoiseModel, compare
from .ptq import bit_summary, calibrate, copy_ranges, prepare, ptq
from .qat import qat

__all__ = [
    "ChannelClip", "FakeQuantize", "KINDS", "NoiseModel", "PLACEMENTS", "QuantConfig", "QuantSpec", "bit_summary",
    "calibrate", "calibrate_range", "compare", "copy_ranges", "correct_bias", "equalize", "fake_quant", "float_copy",
    "float_mode", "insert_quantizers", "measure_sqnr", "noise_gains", "predict_from_gains", "prepare", "ptq", "qat",
    "qparams_from_range", "qrange", "quantize_tensor", "quantizers", "remove_quantizers", "set_mode", "sqnr_db",
]
