"""Large tensors from the heap while training on CPU (glibc's malloc settings for the duration of a run).

glibc serves an allocation above its mmap threshold with a fresh ``mmap`` and unmaps it on free; the threshold
adapts upwards to at most 32 MiB and no further. Every larger tensor (an EfficientNet-B0 activation or gradient at
224 px from batch 8 on: 8 x 96 x 112^2 floats are 38.5 MiB) is therefore mapped anew in every training step and
page-faulted on first touch (docs/bench/depthwise.md, "Found on the way": filling a new 38.5 MiB tensor took
17.6 ms there against 1.1 ms for a 30 MiB one). :func:`large_tensor_heap` raises the mmap and trim
thresholds for the duration of a run, so freed large tensors stay in the heap and the next step reuses them.
Measured at 224 px (docs/bench/depthwise.md, section "Large tensors from the heap"): B0's step faster at batch 8
and more so at batch 32, the pretrained Lite0's too, for a higher peak RSS (the heap keeps freed blocks, fragmented),
which is why it is a run-scoped setting with an off switch
(``TrainConfig.large_tensor_heap``, ``mbconv train --no-large-tensor-heap``). `evaluate` runs in it too
(``heap=False`` to opt out): an eval-mode forward frees each large activation at once, so there it pays most.

On exit the thresholds go to the values glibc's own adaptation ends at after large frees (mmap 32 MiB, trim
64 MiB; setting them once turns the adaptation off for the process, so "back to the default" is not available) and
``malloc_trim(0)`` returns the freed heap to the system. Nothing is changed where the C library is not glibc, or
where the user set malloc's thresholds through ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
``GLIBC_TUNABLES`` (their choice stands).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator

__all__ = ["HEAP_MMAP_THRESHOLD", "HEAP_TRIM_THRESHOLD", "glibc_malloc", "large_tensor_heap", "restore",
           "user_malloc_settings"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
HEAP_MMAP_THRESHOLD = 1 << 30  # during a run: allocations below 1 GiB come from the heap
HEAP_TRIM_THRESHOLD = 1 << 31  # and the heap's free top is kept up to 2 GiB
AFTER_MMAP_THRESHOLD, AFTER_TRIM_THRESHOLD = 32 << 20, 64 << 20  # where glibc's own adaptation ends
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_depth = {"n": 0}  # nested runs (a Trainer inside another's callback) restore only when the outermost ends


@functools.lru_cache(maxsize=1)
def glibc_malloc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (it has ``mallopt``, ``malloc_trim`` and ``gnu_get_libc_version``),
    else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    if not all(hasattr(lib, f) for f in ("mallopt", "malloc_trim", "gnu_get_libc_version")):
        return None
    lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lib


def user_malloc_settings() -> bool:
    """Whether the environment sets malloc's thresholds itself (then they are left alone)."""
    return any(v in os.environ for v in USER_VARIABLES) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


@contextlib.contextmanager
def large_tensor_heap(enabled: bool = True) -> Iterator[bool]:
    """Within the block, glibc serves tensors below 1 GiB from its heap instead of fresh mmaps (see the module
    docstring); yields whether the setting is in effect (False: disabled, not glibc, or set by the user)."""
    lib = glibc_malloc() if enabled and not user_malloc_settings() else None
    if lib is None:
        yield False
        return
    if _depth["n"] == 0 and not (lib.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
                                 and lib.mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)):
        restore(lib)  # glibc refused a value (an old glibc caps the mmap threshold at 32 MiB)
        yield False
        return
    _depth["n"] += 1
    try:
        yield True
    finally:
        _depth["n"] -= 1
        if _depth["n"] == 0:
            restore(lib)


def restore(lib: ctypes.CDLL) -> None:
    """Thresholds where glibc's adaptation ends, and the heap's free memory back to the system."""
    lib.mallopt(M_MMAP_THRESHOLD, AFTER_MMAP_THRESHOLD)
    lib.mallopt(M_TRIM_THRESHOLD, AFTER_TRIM_THRESHOLD)
    lib.malloc_trim(0)
