"""Uniform affine fake quantizers: 2-8 bits, symmetric or asymmetric, per tensor or per channel.

    q = clamp(round(x / s) + z, qmin, qmax),    Q(x) = (q - z) * s

- Symmetric signed: z = 0, q in [-(2^(b-1) - 1), 2^(b-1) - 1] (the restricted range int8 kernels use), s = a / qmax.
- Symmetric unsigned (data >= 0, e.g. after ReLU or a sigmoid gate): z = 0, q in [0, 2^b - 1].
- Asymmetric: q in [0, 2^b - 1], s = (hi - lo) / (2^b - 1), z = round(-lo / s): zero is exactly representable
  (what integer runtimes need). `integer_zero_point=False` keeps z fractional: the 2^b-level "midrise" quantizer
  of quantization theory (Max 1960), whose MSE-optimal 4-bit SQNR on a Gaussian is 19.38 dB.

Ranges come from calibration data: min/max, a percentile, or the clip that minimises E[(x - Q(x))^2] (searched
on a grid, then refined). Gradients use the straight-through estimator (identity inside the range, zero where
clipped); with `learn=True` the step s is a parameter trained by LSQ (Esser et al. 2020), gradient scaled by
1/sqrt(numel * qmax).

Edge cases give finite results: non-finite calibration values are ignored, an all-zero (or never observed)
channel gets a tiny step and quantizes to 0, ranges are computed in float64 so +-3e38 does not overflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

CALIBS = ("minmax", "percentile", "mse")
MIN_SCALE = 1e-12  # step floor: an all-zero channel quantizes to exactly 0 without dividing by 0


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized. `signed=None` decides at calibration (signed iff the data has negatives)."""

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = False
    ch_axis: int = 0  # weights: 0 (output channels); activations: 1
    calib: str = "minmax"
    percentile: float = 99.99
    signed: bool | None = None
    learn: bool = False  # LSQ: learn the step size
    integer_zero_point: bool = True
    fixed_range: tuple[float, float] | None = None  # e.g. (0, 1) for sigmoid gates: no calibration

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 2 <= self.bits <= 16:
            raise ValueError(f"invalid bits={self.bits!r}: expected an integer in [2, 16] (2-8 for fake quant)")
        if self.calib not in CALIBS:
            raise ValueError(f"invalid calib={self.calib!r}: expected one of {CALIBS}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"invalid percentile={self.percentile!r}: expected a value in (50, 100]")
        if self.fixed_range is not None:
            lo, hi = self.fixed_range
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= 0.0 <= hi and hi > lo):
                raise ValueError(f"invalid fixed_range={self.fixed_range!r}: need finite lo <= 0 <= hi, lo < hi")

    def with_(self, **kw: Any) -> QuantSpec:
        return replace(self, **kw)


def qrange(bits: int, signed: bool, symmetric: bool) -> tuple[int, int]:
    """Integer grid [qmin, qmax] for a spec (signed symmetric uses the restricted range +-(2^(b-1) - 1))."""
    if signed and symmetric:
        m = 2 ** (bits - 1) - 1
        return -m, m
    return 0, 2**bits - 1


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def _grad_scale(t: torch.Tensor, g: float) -> torch.Tensor:
    """Value t, gradient g * dL/dt (LSQ's step-size gradient scaling)."""
    return (t - t * g).detach() + t * g


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
               axis: int | None = None) -> torch.Tensor:
    """Q(x) with straight-through gradients. `scale`/`zero_point` are scalars or per-channel vectors on `axis`.

    Clamping before rounding keeps +-inf inputs finite (no inf - inf in the STE) and zeroes the gradient of
    clipped values, like the clipped STE of QAT frameworks.
    """
    if axis is not None and scale.numel() > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero_point = zero_point.reshape(shape)
    v = torch.clamp(x / scale + zero_point, qmin, qmax)
    return (_round_ste(v) - zero_point) * scale


# -- ranges ---------------------------------------------------------------------------------------------------
def _channels_first(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """(C, M) view of x: channels on `axis` (or one channel for per-tensor), finite values only."""
    x = x.detach()
    x = x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.shape[axis], -1)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype))  # non-finite values: ignored as 0
    return x


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec, signed: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(scale, zero_point, qmin, qmax) for per-channel ranges [lo, hi] (float64 in, float32 out)."""
    qmin, qmax = qrange(spec.bits, signed, spec.symmetric)
    lo = torch.minimum(lo.double(), torch.zeros_like(lo, dtype=torch.float64))  # zero must be in range
    hi = torch.maximum(hi.double(), torch.zeros_like(hi, dtype=torch.float64))
    if spec.symmetric:
        a = torch.maximum(-lo, hi) if signed else hi
        scale = a / qmax
        zp = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = qmin - lo / scale.clamp_min(MIN_SCALE)
        zp = torch.round(zp) if spec.integer_zero_point else zp
        zp = zp.clamp(qmin, qmax)
    big = torch.finfo(torch.float32).max / 4
    scale = scale.nan_to_num(MIN_SCALE).clamp(MIN_SCALE, big)
    return scale.float(), zp.float(), qmin, qmax


def _quant_error(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec, signed: bool) -> torch.Tensor:
    """Per-channel mean squared quantization error of the (C, M) samples for ranges [lo, hi]."""
    s, z, qmin, qmax = qparams_from_range(lo, hi, spec, signed)
    x = x.float()  # float32 is exact enough for a search and twice as fast
    s, z = s[:, None], z[:, None]
    q = (torch.clamp(torch.round(x / s + z), qmin, qmax) - z) * s
    return (q - x).pow(2).double().mean(1)


def calibrate_range(x: torch.Tensor, spec: QuantSpec, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel [lo, hi] (float64) of the (C, M) samples by the spec's method."""
    if x.shape[1] == 0:
        z = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        return z, z.clone()
    lo, hi = x.min(1).values, x.max(1).values
    if spec.calib == "minmax":
        return lo, hi
    if spec.calib == "percentile":
        p = spec.percentile / 100.0
        xs = x if x.shape[1] <= 2**24 else x[:, :: math.ceil(x.shape[1] / 2**24)]  # torch.quantile size limit
        if spec.symmetric and signed:
            a = torch.quantile(xs.abs(), p, dim=1)
            return -a, a
        return torch.quantile(xs, 1.0 - p, dim=1), torch.quantile(xs, p, dim=1)
    # MSE: shrink the min/max range by a factor alpha (keeping the zero's position), coarse grid then refine.
    best_err = torch.full_like(lo, float("inf"))
    best_a = torch.ones_like(lo)
    coarse = [torch.full_like(lo, a) for a in torch.linspace(0.04, 1.0, 25).tolist()]
    for stage in ("coarse", "fine"):
        grid = coarse if stage == "coarse" else [
            (best_a + d).clamp(1e-3, 1.0) for d in torch.linspace(-0.04, 0.04, 21).tolist()]
        for a in grid:
            err = _quant_error(x, lo * a, hi * a, spec, signed)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_a = torch.where(better, a, best_a)
    lo, hi = lo * best_a, hi * best_a
    if spec.symmetric:
        return lo, hi
    # Asymmetric: the data need not be centred, so refine each end on its own (one coordinate-descent pass).
    for end in ("lo", "hi"):
        best_f = torch.ones_like(lo)
        for f in torch.linspace(0.8, 1.2, 21).tolist():
            a_lo, a_hi = (lo * f, hi) if end == "lo" else (lo, hi * f)
            err = _quant_error(x, a_lo, a_hi, spec, signed)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_f = torch.where(better, torch.full_like(lo, f), best_f)
        lo, hi = (lo * best_f, hi) if end == "lo" else (lo, hi * best_f)
    return lo, hi


# -- the module -------------------------------------------------------------------------------------------------
class FakeQuantize(nn.Module):
    """A fake quantizer with its own observer.

    Modes: 'quant' (apply Q), 'observe' (record calibration statistics, pass through), 'off' (identity).
    `finalize()` turns the observations into (scale, zero_point). With `dynamic=True` the range is recomputed
    from every input (weights during QAT). Also usable as a parametrization (`forward(weight)`).

    `site`, `kind` and `block` name where it sits (set by `mbconv.quant.insert`). An optional `tap` callable
    `tap(fq, x, y)` sees every input/output pair (used by the noise tools).
    """

    def __init__(self, spec: QuantSpec, site: str = "", kind: str = "", block: str | None = None,
                 max_samples: int = 2**16) -> None:
        super().__init__()
        self.spec = spec
        self.site, self.kind, self.block = site, kind, block
        self.mode = "quant"
        self.dynamic = False
        self.max_samples = max_samples
        self.scale = nn.Parameter(torch.ones(1), requires_grad=spec.learn)
        self.register_buffer("zero_point", torch.zeros(1))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.register_buffer("signed_flag", torch.ones((), dtype=torch.bool))
        self.tap = None
        self.inject = None  # noise tools: callable(fq, y) -> y (e.g. make a forward-AD dual)
        self.reset_observer()

    # -- bookkeeping --
    @property
    def qmin_qmax(self) -> tuple[int, int]:
        return qrange(self.spec.bits, bool(self.signed_flag), self.spec.symmetric)

    @property
    def axis(self) -> int | None:
        return self.spec.ch_axis if self.spec.per_channel else None

    def reset_observer(self) -> None:
        self._lo: torch.Tensor | None = None
        self._hi: torch.Tensor | None = None
        self._samples: list[torch.Tensor] = []
        self._n_samples = 0
        self._per_batch: int | None = None
        self._calls = 0  # seeds the subsampling (a stored torch.Generator would break deepcopy)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"site={self.site!r}, bits={s.bits}, {'sym' if s.symmetric else 'asym'}, "
                f"{'per-channel' if s.per_channel else 'per-tensor'}, calib={s.calib}, mode={self.mode}")

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The representable [lo, hi] per channel (or a 1-vector), from the current qparams."""
        qmin, qmax = self.qmin_qmax
        s = self.scale.detach().abs().clamp_min(MIN_SCALE)
        return (qmin - self.zero_point) * s, (qmax - self.zero_point) * s

    def step(self) -> torch.Tensor:
        """Quantization step Delta per channel (or a 1-vector)."""
        return self.scale.detach().abs().clamp_min(MIN_SCALE)

    # -- observing --
    def observe(self, x: torch.Tensor) -> None:
        xc = _channels_first(x, self.axis)
        lo, hi = xc.min(1).values.double(), xc.max(1).values.double()
        if self._lo is None or self._lo.shape != lo.shape:
            self._lo, self._hi = lo, hi
        else:
            self._lo, self._hi = torch.minimum(self._lo, lo), torch.maximum(self._hi, hi)
        if self.spec.calib != "minmax":
            # Keep a bounded, equally weighted subsample of every batch: each batch contributes `_per_batch`
            # columns; on overflow every stored chunk is halved and later batches contribute half as many.
            self._calls += 1
            cap = max(64, self.max_samples // xc.shape[0])
            if self._per_batch is None:
                self._per_batch = cap
            if xc.shape[1] > self._per_batch:
                gen = torch.Generator().manual_seed(self._calls)
                xc = xc[:, torch.randperm(xc.shape[1], generator=gen)[: self._per_batch]]
            self._samples.append(xc.float())
            self._n_samples += xc.shape[1]
            while self._n_samples > cap and self._per_batch > 8:
                self._samples = [c[:, ::2] for c in self._samples]
                self._n_samples = sum(c.shape[1] for c in self._samples)
                self._per_batch //= 2

    def finalize(self) -> None:
        """Set scale/zero_point from what was observed (or from `fixed_range`)."""
        spec = self.spec
        if spec.fixed_range is not None:
            lo = torch.tensor([spec.fixed_range[0]], dtype=torch.float64)
            hi = torch.tensor([spec.fixed_range[1]], dtype=torch.float64)
            signed = spec.fixed_range[0] < 0
        elif self._lo is None:
            raise ValueError(f"quantizer {self.site or '?'} saw no data: run calibration batches through the model "
                             f"(in 'observe' mode) before finalize()")
        else:
            signed = bool((self._lo < 0).any()) if spec.signed is None else spec.signed
            if spec.calib == "minmax":
                lo, hi = self._lo, self._hi
            else:
                lo, hi = calibrate_range(torch.cat(self._samples, 1).double(), spec, signed)
        self._set_qparams(lo, hi, signed)
        self.reset_observer()

    def calibrate_from(self, x: torch.Tensor) -> None:
        """Observe `x` alone and finalize (weights)."""
        self.reset_observer()
        self.observe(x)
        self.finalize()

    def _set_qparams(self, lo: torch.Tensor, hi: torch.Tensor, signed: bool) -> None:
        scale, zp, _, _ = qparams_from_range(lo, hi, self.spec, signed)
        scale, zp = scale.to(self.scale.device), zp.to(self.scale.device)  # fixed ranges are made on the CPU
        with torch.no_grad():
            if self.scale.shape != scale.shape:
                self.scale = nn.Parameter(scale.clone(), requires_grad=self.spec.learn)
            else:
                self.scale.copy_(scale)
            self.zero_point = zp.clone()
            self.signed_flag.fill_(signed)
            self.calibrated.fill_(True)

    # -- forward --
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            y = x
        elif self.mode == "observe":
            self.observe(x)
            y = x
        else:
            if self.dynamic and not self.spec.learn:
                self.calibrate_from(x)
            if not bool(self.calibrated):
                raise ValueError(f"quantizer {self.site or '?'} is not calibrated: calibrate the model first")
            qmin, qmax = self.qmin_qmax
            scale = self.scale.abs().clamp_min(MIN_SCALE)
            if self.spec.learn and self.training:
                per = x.numel() // max(scale.numel(), 1)
                scale = _grad_scale(scale, 1.0 / math.sqrt(max(per, 1) * max(qmax, 1)))
            y = fake_quant(x, scale.to(x.dtype), self.zero_point.to(x.dtype), qmin, qmax, self.axis)
        if self.inject is not None:
            y = self.inject(self, y)
        if self.tap is not None:
            self.tap(self, x, y)
        return y


def quantize_tensor(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Calibrate on `x` itself and return Q(x) (convenience for tests and one-off analysis)."""
    fq = FakeQuantize(spec).to(x.device)
    fq.calibrate_from(x)
    with torch.no_grad():
        return fq(x)
