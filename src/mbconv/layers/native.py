"""Native CPU kernels, built on first use: training-mode batch norm fused with its activation (`bn_act.c`, its Python
side here), the depthwise convolution (`dw_conv.c`, its Python side in native_depthwise.py), squeeze-and-excitation
(`se.c`, its Python side in native_se.py) and an inverted-residual block's training step through them
(`block_step.c`, its Python side in block_step.py, its 1x1 products through the BLAS sgemm `_blas_sgemm` finds).

Why native: in a training step PyTorch runs BN + activation as four kernels and two autograd nodes, about six
passes over each tensor; the fused kernels take four and keep no BN output. Measured on this project's networks
(docs/bench/depthwise.md, "Fused BN + activation in native kernels"), they are what the tour model's and B0's
steps were still spending in elementwise work once the depthwise backward was fixed.

How it is built: the C files ship in the package and are compiled together with the system C compiler (`$CC`, else
`cc` / `gcc`; OpenMP, `-O3 -march=native`) into one library in a per-user cache, keyed by the sources, the compiler,
the flags and the CPU, written atomically (a temporary file renamed into place, so concurrent processes such as DDP
ranks never load a half-written library). No compiler, a failed build or `MBCONV_NATIVE=0` leaves the library off
and every caller on PyTorch's ops: the package still needs only torch and numpy. `native_status()` says which and
why.

The BN kernels take float32 CPU tensors in either dense layout: channels-last ("rows": N * spatial rows of C) or
contiguous ("planes": N * C planes); `bn_act_layout` says which, or None (the caller then uses PyTorch's ops).
Threads: torch's intra-op count (`torch.get_num_threads()`), on the OpenMP runtime torch itself loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .channels_last_1d import is_channels_last_1d

__all__ = ["MIN_IDENTITY_NUMEL", "MIN_PLANE", "NATIVE_ACTS", "NATIVE_ACT_NAMES", "bn_act_backward", "bn_act_forward",
           "bn_act_layout", "bn_act_pays", "in_param_layout", "native_block_on", "native_depthwise_on",
           "native_enabled", "native_library", "native_se_on", "native_sgemm_found", "native_status",
           "require_native_library", "reset_native", "use_native", "use_native_block", "use_native_depthwise",
           "use_native_se"]

# bn_act.c: BN + activation; dw_conv.c: depthwise convolution (its Python side is layers/native_depthwise.py);
# se.c: squeeze-and-excitation (its Python side is layers/native_se.py); block_step.c: a whole block's step through
# the three (layers/block_step.py)
SOURCES = tuple(Path(__file__).with_name(name) for name in ("bn_act.c", "dw_conv.c", "se.c", "block_step.c"))
# included by the sources (found next to them): part of the build cache key
HEADERS = (Path(__file__).with_name("native_exp.h"),)
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC")

# activation name -> the kernel's code (bn_act.c's enum)
NATIVE_ACTS: dict[str, int] = {"identity": 0, "relu": 1, "relu6": 2, "silu": 3, "hardswish": 4}

# activation module type -> the kernels' name for it (Identity: a BN with no activation, e.g. a project conv's)
NATIVE_ACT_NAMES: dict[type, str] = {nn.Identity: "identity", nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu",
                                     nn.Hardswish: "hardswish"}

# Where the kernels beat PyTorch's ops, per layer (benchmarks.depthwise --sections bn_act, docs/bench/depthwise.md):
# a BN with no activation is a single ATen autograd node, and below about 2^14 elements the kernels' per-call cost
# (a Python autograd Function) loses to it; planes shorter than 16 values leave the inner loops mostly remainder.
MIN_IDENTITY_NUMEL = 2**14
MIN_PLANE = 16

_state = {"enabled": os.environ.get("MBCONV_NATIVE", "1") != "0", "depthwise": True, "se": True, "block": True,
          "status": "not built yet"}


def _cache_dir() -> Path:
    """Where built libraries live: $MBCONV_CACHE_DIR, else $XDG_CACHE_HOME/mbconv, else ~/.cache/mbconv."""
    if os.environ.get("MBCONV_CACHE_DIR"):
        return Path(os.environ["MBCONV_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mbconv"


def _cpu_id() -> str:
    """What `-march=native` depends on: the CPU's model and feature flags (a cache shared by machines with
    different CPUs must not hand one of them code with instructions it lacks)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(cc: str, out: Path) -> None:
    """Compile SOURCES into `out` atomically (temporary file in the same folder, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["no output"])[0]
            raise RuntimeError(f"{cc} failed (exit {proc.returncode}): {first}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _blas_sgemm() -> int | None:
    """The address of the BLAS sgemm PyTorch's torch.mm calls on float32 CPU tensors (MKL's, exported by
    libtorch_cpu in PyTorch's x86 wheels), for block_step.c's products; None where it cannot be found or
    `MBCONV_NATIVE_SGEMM=0` says not to look (the block step is then off, its layers run one by one)."""
    if os.environ.get("MBCONV_NATIVE_SGEMM", "1") == "0":
        return None
    lib_dir = Path(torch.__file__).parent / "lib"
    for path in (*sorted(lib_dir.glob("libtorch_cpu.*")), None):
        try:
            return ctypes.cast(ctypes.CDLL(None if path is None else str(path)).sgemm_, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


@functools.cache
def _load() -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None:
        _state["status"] = "off: no C compiler found ($CC, cc or gcc)"
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
        texts = [s.read_text() for s in (*SOURCES, *HEADERS)]
        key = hashlib.sha256("\0".join([*texts, cc, version, *FLAGS, _cpu_id()]).encode())
        out = _cache_dir() / f"native-{key.hexdigest()[:16]}.so"
        if not out.exists():
            _build(cc, out)
        try:
            lib = ctypes.CDLL(str(out))
        except OSError:  # a damaged cached file (the build itself is atomic): build it again, once
            _build(cc, out)
            lib = ctypes.CDLL(str(out))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _state["status"] = f"off: build failed: {e}"
        return None
    p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int
    lib.mbconv_bn_act_forward.argtypes = [i32, p, p, i64, i64, i64, p, p, f32, f32, p, p, p, p, i32]
    lib.mbconv_bn_act_backward.argtypes = [i32, p, p, p, i64, i64, i64, p, p, p, p, p, p, i32]
    lib.mbconv_dw_forward.argtypes = [p, p, p, p, p, i32]
    lib.mbconv_dw_backward_input.argtypes = [p, p, p, p, i32]
    lib.mbconv_dw_backward_weight.argtypes = [p, p, p, p, i32]
    lib.mbconv_se_forward.argtypes = [i32, i32, p, p, i64, i64, i64, i64, p, p, p, p, p, p, p, p, p, i32]
    lib.mbconv_se_backward.argtypes = [i32, i32, p, p, p, i64, i64, i64, i64, p, p, p, p, p, p, p, p, p, p, p,
                                       i32]
    lib.mbconv_block_workspace.argtypes = lib.mbconv_block_scratch.argtypes = [p]
    lib.mbconv_block_workspace.restype = lib.mbconv_block_scratch.restype = i64
    lib.mbconv_block_forward.argtypes = [p, p, p, p, i32]
    lib.mbconv_block_backward.argtypes = [p, p, p, i32]
    lib.mbconv_set_sgemm.argtypes = [p]
    sgemm = _blas_sgemm()
    lib.mbconv_set_sgemm(sgemm)
    _state["sgemm"] = sgemm is not None
    _state["status"] = f"on: {out}" + ("" if sgemm else " (no BLAS sgemm found: the block step is off)")
    return lib


def native_library() -> ctypes.CDLL | None:
    """The built kernel library, building it on first call; None when it is off (see `native_status`)."""
    if not _state["enabled"]:
        return None
    return _load()


def require_native_library(fn: str) -> ctypes.CDLL:
    """The built library for the entry point `fn`, or a one-line RuntimeError naming it and why the kernels are
    off."""
    lib = native_library()
    if lib is None:
        raise RuntimeError(f"{fn}: native kernels unavailable ({native_status()})")
    return lib


def reset_native() -> None:
    """Forget which library was loaded (or why none was), so that the next call looks again: after changing $CC
    or $MBCONV_CACHE_DIR in a running process. A library already loaded stays mapped."""
    _load.cache_clear()
    _state["status"] = "not built yet"


def native_enabled() -> bool:
    """Whether the native kernels are switched on and built (builds them on first call)."""
    return native_library() is not None


def native_status() -> str:
    """One line: "on: <library path>", or "off: <why>" (switched off, no compiler, build error)."""
    if not _state["enabled"]:
        return "off: switched off (MBCONV_NATIVE=0 or use_native(False))"
    native_library()
    return str(_state["status"])


@contextlib.contextmanager
def _switched(key: str, enabled: bool) -> Iterator[None]:
    before = _state[key]
    _state[key] = bool(enabled)
    try:
        yield
    finally:
        _state[key] = before


def use_native(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Switch the native kernels on or off inside the block (for comparisons on the same weights)."""
    return _switched("enabled", enabled)


def use_native_depthwise(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Inside the block, depthwise layers take the native depthwise kernels where they pay (True, the default) or
    never (False: `DepthwiseConvFunction` / ATen as before), for comparisons on the same weights. `use_native(False)`
    turns off every native kernel, these included."""
    return _switched("depthwise", enabled)


def use_native_se(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Inside the block, squeeze-and-excitation layers take the native SE kernels where they apply (True, the
    default) or never (False: `SqueezeExciteFn` as before), for comparisons on the same weights. `use_native(False)`
    turns off every native kernel, these included."""
    return _switched("se", enabled)


def native_se_on() -> bool:
    """The `use_native_se` switch (the library may still be off: see `native_enabled`)."""
    return bool(_state["se"])


def use_native_block(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Inside the block, inverted-residual blocks take the one-node block step (layers/block_step.py) where it
    applies (True, the default) or never (False: their layers one by one, as before), for comparisons on the same
    weights. `use_native(False)` turns it off with every native kernel."""
    return _switched("block", enabled)


def native_block_on() -> bool:
    """The `use_native_block` switch (the library may still be off: see `native_enabled`)."""
    return bool(_state["block"])


def native_sgemm_found() -> bool:
    """Whether the built library has the BLAS sgemm its block step multiplies with (`_blas_sgemm`); False while
    the library is off."""
    return native_library() is not None and bool(_state.get("sgemm"))


def native_depthwise_on() -> bool:
    """The `use_native_depthwise` switch (the library may still be off: see `native_enabled`)."""
    return bool(_state["depthwise"])


def bn_act_layout(x: torch.Tensor) -> str | None:
    """"rows" (channels-last, 1-D maps included: layers/channels_last_1d.py), "planes" (contiguous NC...) or None:
    the dense float32 CPU layouts the kernels take. A tensor dense in both (one spatial position) counts as rows,
    whose loop is over channels."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.ndim < 2:
        return None
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.ndim)
    if fmt is not None and x.is_contiguous(memory_format=fmt):
        return "rows"
    if x.is_contiguous():
        return "rows" if math.prod(x.shape[2:]) == 1 else "planes"
    if is_channels_last_1d(x):  # (N, L, C) storage: N * L rows of C, as a channels-last 2-D map
        return "rows"
    return None


def in_param_layout(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`grad` (contiguous, `param`'s shape) with `param`'s strides: a view where the two lay the values out alike
    (strides differing only on size-1 axes: a channels-last (C, 1, k, k) or (O, I, 1, 1) weight), else a copy.
    DDP copies a gradient whose strides differ from its parameter's bucket view, and warns each step."""
    if grad.stride() == param.stride():
        return grad
    if all(a == b for a, b, n in zip(grad.stride(), param.stride(), param.shape) if n != 1):
        return grad.as_strided(param.shape, param.stride())
    return torch.empty_like(param).copy_(grad)


def bn_act_pays(x: torch.Tensor, act: str) -> bool:
    """Whether the fused kernels are expected to be faster than PyTorch's BN + activation on `x` (a layout they
    take, planes of at least MIN_PLANE values, and for a BN with no activation at least MIN_IDENTITY_NUMEL
    elements, or a channels-last 1-D map of any size: PyTorch's BN returns that one contiguous, a transposing copy
    that every layer after it pays for)."""
    layout = bn_act_layout(x)
    if layout is None or (layout == "planes" and math.prod(x.shape[2:]) < MIN_PLANE):
        return False
    return act != "identity" or x.numel() >= MIN_IDENTITY_NUMEL or (x.dim() == 3 and not x.is_contiguous())


def _geometry(x: torch.Tensor, layout: str) -> tuple[int, int, int]:
    """(batch or rows, channels, plane size or -1 for rows) as the C entry points take them."""
    n, c = x.shape[0], x.shape[1]
    size = math.prod(x.shape[2:])
    return (n * size, c, -1) if layout == "rows" else (n, c, size)


def _checked(x: torch.Tensor, act: str, fn: str, **per_channel: torch.Tensor | None) -> tuple[ctypes.CDLL, str]:
    """The library and `x`'s layout, after the checks that keep the kernels inside their buffers: a known
    activation, a layout they take, and every per-channel tensor (None allowed) contiguous float32 on the CPU, one
    value per channel of `x`. Each failure is one line naming the argument."""
    if act not in NATIVE_ACTS:
        raise ValueError(f"{fn}: unknown activation {act!r}: expected one of {', '.join(NATIVE_ACTS)}")
    layout = bn_act_layout(x)
    if layout is None:
        raise ValueError(f"{fn}: input must be a dense float32 CPU tensor (contiguous or channels-last) of rank >= 2, "
                         f"got {x.dtype} {tuple(x.shape)} on {x.device}")
    for name, t in per_channel.items():
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu" or t.numel() != x.shape[1]
                              or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous float32 CPU tensor of {x.shape[1]} values (one per "
                             f"channel), got {t.dtype} {tuple(t.shape)} on {t.device}")
    lib = native_library()
    if lib is None:
        raise RuntimeError(f"{fn}: native kernels unavailable ({native_status()})")
    return lib, layout


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def bn_act_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor | None,
                   running_var: torch.Tensor | None, momentum: float, eps: float, act: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """act(batch_norm(x)) with batch statistics: (y, batch mean, 1/sqrt(var + eps)); updates the running
    statistics in place like `F.batch_norm(training=True)`. `x` in a `bn_act_layout`, the library built."""
    lib, layout = _checked(x, act, "bn_act_forward", weight=weight, bias=bias, running_mean=running_mean,
                           running_var=running_var)
    if (running_mean is None) != (running_var is None):  # the kernel updates both or neither
        raise ValueError("bn_act_forward: give both running_mean and running_var, or neither")
    if x.numel() // x.shape[1] < 2:  # nn.BatchNorm's rule: batch statistics need two values per channel
        raise ValueError(f"bn_act_forward: expected more than 1 value per channel when training, got input size "
                         f"{tuple(x.shape)}")
    return _bn_act_kernel_forward(lib, layout, NATIVE_ACTS[act], x, weight, bias, running_mean, running_var, momentum,
                                 eps, torch.get_num_threads())


def _bn_act_kernel_forward(lib: ctypes.CDLL, layout: str, act_code: int, x: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                          momentum: float, eps: float, threads: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`bn_act_forward`'s kernel call, its arguments checked: `layout` is `bn_act_layout(x)`, `act_code` a value
    of NATIVE_ACTS."""
    y = torch.empty_like(x)
    mean = torch.empty(x.shape[1], dtype=torch.float32)
    rstd = torch.empty_like(mean)
    rows, c, size = _geometry(x, layout)
    err = lib.mbconv_bn_act_forward(act_code, x.data_ptr(), y.data_ptr(), rows, c, size, weight.data_ptr(),
                                    bias.data_ptr(), eps, momentum, mean.data_ptr(), rstd.data_ptr(),
                                    _ptr(running_mean), _ptr(running_var), threads)
    if err:
        raise MemoryError(f"bn_act_forward: out of memory for the per-thread sums of {c} channels")
    return y, mean, rstd


def bn_act_backward(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                    rstd: torch.Tensor, act: str, affine_grads: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of `bn_act_forward`'s output with respect to x, weight and bias (the last two None unless
    `affine_grads`), from the saved input and batch statistics (the BN output is recomputed)."""
    lib, layout = _checked(x, act, "bn_act_backward", weight=weight, bias=bias, mean=mean, rstd=rstd)
    if gy.shape != x.shape:
        raise ValueError(f"bn_act_backward: gradient of shape {tuple(gy.shape)} for an input of shape "
                         f"{tuple(x.shape)}")
    if bn_act_layout(gy) != layout:  # e.g. an expanded or NCHW gradient for a channels-last x
        gy = torch.empty_like(x).copy_(gy)
    return _bn_act_kernel_backward(lib, layout, NATIVE_ACTS[act], gy, x, weight, bias, mean, rstd, affine_grads,
                                  torch.get_num_threads())


def _bn_act_kernel_backward(lib: ctypes.CDLL, layout: str, act_code: int, gy: torch.Tensor, x: torch.Tensor,
                           weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                           affine_grads: bool, threads: int
                           ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`bn_act_backward`'s kernel call, its arguments checked (`gy` already in x's layout)."""
    gx = torch.empty_like(x)
    gw = torch.empty_like(weight) if affine_grads else None
    gb = torch.empty_like(bias) if affine_grads else None
    rows, c, size = _geometry(x, layout)
    err = lib.mbconv_bn_act_backward(act_code, gy.data_ptr(), x.data_ptr(), gx.data_ptr(), rows, c, size,
                                     weight.data_ptr(), bias.data_ptr(), mean.data_ptr(), rstd.data_ptr(), _ptr(gw),
                                     _ptr(gb), threads)
    if err:
        raise MemoryError(f"bn_act_backward: out of memory for the per-thread sums of {c} channels")
    return gx, gw, gb
