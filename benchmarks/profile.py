"""Where the time goes, for the rows of `make bench` that miss their target: ONNX Runtime per-op time of our
export and timm's, the torch profiler's per-op time of one training step (timm vs ours vs ours memory-lean), and
the tour model's training step as the trainer runs it.

    .venv/bin/python -m benchmarks.profile [--threads 1] [--batch 1] [--train-batch 8]
        [--only ort|train|tour|threads] [--clock cpu|wall] [--rounds 10] [--out results/bench/profile.json]

Sections:
- ort: ONNX Runtime per-op kernel time of B0, ours vs timm's export;
- train: torch profiler, B0 224 px training step (SGD), timm vs ours vs ours memory-lean;
- tour: the tour model's training step (B0 spec x0.5, 1 channel, 10 classes, 32 px, batch 64, channels_last,
  the tour's recipe: AdamW, label smoothing, drop path, the augmented MNIST 5k loader) "before" (ATen's
  depthwise backward, torch's per-parameter AdamW loop, oneDNN for every 1x1 conv) and "after" (what the trainer
  runs: our depthwise backward, the fused AdamW step `make_optimizer` takes, small-map 1x1 convs as matrix
  products, memory-lean layers on large maps): the two steps timed interleaved, then per-phase and per-kind
  profiler time;
- threads: the tour step at 1 and at 2 threads, interleaved, wall clock (run it on a quiet machine).

On a shared machine: `taskset -c 1 .venv/bin/python -m benchmarks.profile --only tour --threads 1 --clock cpu`
(CPU time of this process: time spent descheduled is not counted).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from mbconv.provenance import RunRecord, write_result


def ort_profile(batch: int, threads: int, runs: int = 10) -> None:
    from timm.utils.onnx import onnx_export

    from benchmarks.run import build_pair
    from mbconv.export import export_onnx, ort_session

    ours, theirs = build_pair("b0")
    x = torch.randn(batch, 3, 224, 224).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"ours": Path(tmp) / "ours.onnx", "timm": Path(tmp) / "timm.onnx"}
        export_onnx(ours, paths["ours"], 224)
        onnx_export(theirs, str(paths["timm"]), example_input=torch.from_numpy(x[:1]), opset=17, use_dynamo=False,
                    input_names=["input"], output_names=["logits"])
        for name, path in paths.items():
            s = ort_session(path, threads, profile_prefix=str(Path(tmp) / name))
            for _ in range(runs + 2):
                s.run(None, {"input": x})
            events = json.loads(Path(s.end_profiling()).read_text())
            per_op: Counter = Counter()
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    per_op[e["args"]["op_name"]] += e["dur"] / (runs + 2) / 1e3
            total = sum(per_op.values())
            print(f"ORT {name}, B0 224px batch {batch}, {threads} thread(s): {total:.2f} ms of kernels per run")
            for op, ms in per_op.most_common():
                print(f"  {op:22s} {ms:8.2f} ms {100 * ms / total:5.1f} %")


def train_profile(batch: int, threads: int) -> None:
    import timm
    from torch.profiler import ProfilerActivity, profile

    from mbconv import create_model
    from mbconv.layers.memory import memory_efficient

    ours = create_model("efficientnet_b0")
    models = {"timm": timm.create_model("efficientnet_b0"), "ours": ours,
              "ours_lean": memory_efficient(copy.deepcopy(ours))}
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))
    for name, m in models.items():
        m = m.train().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

        def step(m: torch.nn.Module = m, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()

        step()
        with profile(activities=[ProfilerActivity.CPU]) as p:
            step()
        rows = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in rows) / 1e3
        print(f"training step {name}, B0 224px batch {batch}, channels_last, {threads} thread(s): {total:.0f} ms "
              f"self CPU")
        for e in rows[:10]:
            print(f"  {e.key[:40]:40s} {e.self_cpu_time_total / 1e3:8.1f} ms "
                  f"{100 * e.self_cpu_time_total / 1e3 / total:5.1f} %  ({e.count} calls)")


# -- the tour model's training step -----------------------------------------------------------------------------
PHASES = ("data", "forward", "backward", "optimizer")


def op_kind(name: str, phase: str) -> str:
    """A coarse kind for a profiler op name in a step phase: what the step spends its time on (a convolution run
    by a backward function, e.g. our depthwise backward's, counts as conv backward)."""
    n = name.lower()
    if "bnactfn" in n:  # the fused native BN + activation (mbconv.layers.native), forward and backward
        return "batch norm + activation (fused native)"
    if "nativedepthwisefn" in n:  # the native depthwise kernels (their ctypes calls are inside the Function)
        return "depthwise conv (native)"
    if "squeezeexcitefn" in n:  # the SE as one node: its Python and the ops it runs that the profiler misses
        return "SE (one node)"
    if "conv" in n:
        return "conv backward" if phase == "backward" or "backward" in n else "conv forward"
    if n in ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul", "aten::bmm"):
        return "matrix products (small-map 1x1 convs, classifier)"
    for key, kind in (("batch_norm", "batch norm"), ("silu", "SiLU"), ("sigmoid", "SE gate (sigmoid)"),
                      ("adam", "optimizer kernels"), ("bernoulli", "drop path / dropout")):
        if key in n:
            return kind
    return "other (elementwise, copies, reductions, autograd)"


def phase_of(event: object) -> str:
    """The step phase (a `record_function` range) an op ran in, by its profiler parents."""
    e = event
    while e is not None:
        if e.name in PHASES:
            return e.name
        e = e.cpu_parent
    return "optimizer"  # zero_grad runs between the ranges


class TourStep:
    """The tour's training step as `Trainer` runs it: seeded per step, the augmented MNIST 5k loader, channels_last
    model with drop path and dropout, label smoothing, AdamW over weight-decay groups.

    `before`: ATen's depthwise backward, torch's per-parameter AdamW loop, oneDNN for every 1x1 conv and no
    memory-lean layers (the step before issue 15); otherwise what the trainer runs: our depthwise backward,
    `make_optimizer`'s fused step, small-map 1x1 convs as matrix products (`fast_pointwise`) and memory-lean
    layers on large maps (`lean_layers`, `TrainConfig.memory_lean="auto"`). The keyword switches override single
    parts (for the candidates of `benchmarks.step`): `depthwise` (ours or ATen's backward), `fused` (AdamW step),
    `pointwise` (`fast_pointwise`), `memory_lean` ("auto" | "on" | "off", as `TrainConfig.memory_lean`),
    `cached_data` (batches drawn once, then reused: the step without the data pipeline), `native` (every native
    kernel: the lean layers' fused BN + activation, `mbconv.layers.native`, and the depthwise kernels),
    `native_depthwise` (the native depthwise kernels alone, `mbconv.layers.native_depthwise`), `se_node` (the SE
    as one autograd node, `lean_layers` kind "se").
    """

    def __init__(self, before: bool = False, *, depthwise: bool | None = None, fused: bool | None = None,
                 pointwise: bool | None = None, memory_lean: str | None = None, cached_data: bool = False,
                 native: bool | None = None, native_depthwise: bool | None = None, se_node: bool | None = None):
        from mbconv.chapters.context import TourContext
        from mbconv.chapters.train import tour_run_config
        from mbconv.data import load_dataset
        from mbconv.layers.memory import LEAN_KINDS, LEAN_MODES, lean_layers
        from mbconv.layers.pointwise import fast_pointwise
        from mbconv.train import TrainConfig, make_optimizer, param_groups_weight_decay
        from mbconv.train.sampling import make_shard_loader
        from mbconv.workflow import build_for_data

        depthwise, fused, pointwise, native, native_depthwise, se_node = (
            not before if v is None else v for v in (depthwise, fused, pointwise, native, native_depthwise, se_node))
        cfg = tour_run_config(TourContext(Path("unused"), False, None))  # the chapter's recipe, nothing written
        train = load_dataset(cfg.data, "train", resolution=cfg.resolution, augment=cfg.augment, seed=0)
        model = build_for_data(cfg.model, train.info, cfg.resolution, cfg.width_mult, cfg.depth_mult, cfg.init,
                               seed=0, **cfg.overrides)
        self.model = model.to(memory_format=torch.channels_last).train()
        if pointwise:
            fast_pointwise(self.model)
        kinds = LEAN_KINDS if se_node else tuple(k for k in LEAN_KINDS if k != "se")
        lean_layers(self.model, LEAN_MODES[memory_lean or ("off" if before else "auto")], kinds)  # as the Trainer
        if fused:
            self.opt = make_optimizer(model, TrainConfig(optimizer=cfg.optimizer, lr=cfg.lr,
                                                         weight_decay=cfg.weight_decay))
        else:
            self.opt = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr,
                                         foreach=False)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.loader = make_shard_loader(train, cfg.batch_size, train=True, seed=0)
        self.batches: Iterator = iter(())
        self.cache: list | None = [] if cached_data else None
        self.fast, self.native, self.native_depthwise, self.i = depthwise, native, native_depthwise, 0
        self.label = (f"B0 spec x{cfg.width_mult}, {train.info.in_chans} channel, {train.info.num_classes} classes, "
                      f"{cfg.resolution} px, batch {cfg.batch_size}, channels_last")

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        from mbconv.train.seeding import derive_seed, seed_everything

        seed_everything(derive_seed(0, "step", self.i, 0))  # the trainer reseeds every step (exact resume)
        self.i += 1
        if self.cache is not None and len(self.cache) >= 4:
            return self.cache[self.i % len(self.cache)]
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        if self.cache is not None:
            self.cache.append(batch)
        return batch

    def __call__(self) -> None:
        from torch.profiler import record_function

        from mbconv.layers.depthwise import use_fast_backward
        from mbconv.layers.native import use_native
        from mbconv.layers.native_depthwise import use_native_depthwise

        with record_function("data"):
            x, y = self.next_batch()
        with use_fast_backward(self.fast), use_native(self.native), use_native_depthwise(self.native_depthwise):
            with record_function("forward"):
                loss = self.loss_fn(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            with record_function("backward"):
                loss.backward()
        with record_function("optimizer"):
            self.opt.step()


def interleaved_steps(steps: dict[str, Callable[[], None]], rounds: int, clock: Callable[[], float],
                      setup: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Seconds per step of each variant, one sample per round, the order rotated each round (2 warm-up rounds)."""
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 2):
        for n in names[r % len(names):] + names[:r % len(names)]:
            if setup is not None:
                setup(n)
            t0 = clock()
            steps[n]()
            if r >= 2:
                times[n].append(clock() - t0)
    return times


def tour_profile(threads: int, rounds: int, clock: Callable[[], float], profiled_steps: int = 20) -> dict:
    """The tour step before/after: timed interleaved, then profiled; each phase's and kind's share of the profiled
    step, and that share of the timed median (ms per step).

    The profiler's op times are wall time on the thread, so on a loaded machine they stretch with descheduling;
    shares are what it shows reliably, and the timed clock (`--clock cpu`) gives the scale.
    """
    from torch.profiler import ProfilerActivity, profile

    steps = {"before": TourStep(before=True), "after": TourStep(before=False)}
    times = interleaved_steps(steps, rounds, clock)
    median = {n: statistics.median(ts) * 1e3 for n, ts in times.items()}
    table: dict[str, dict[str, Counter]] = {}
    for name, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(profiled_steps):
                step()
        phases: Counter = Counter()
        kinds: Counter = Counter()
        for e in p.events():
            phase = phase_of(e)
            phases[phase] += e.self_cpu_time_total
            kinds["Python between ops" if e.name in PHASES else op_kind(e.name, phase)] += e.self_cpu_time_total
        total = sum(phases.values())
        table[name] = {g: Counter({k: v / total for k, v in c.items()}) for g, c in (("phase", phases),
                                                                                     ("kind", kinds))}
    clock_name = "CPU time" if clock is time.process_time else "wall clock"
    ratios = [b / a for b, a in zip(times["before"], times["after"])]
    print(f"tour training step ({steps['after'].label}), {threads} thread(s), {rounds} interleaved rounds, "
          f"{clock_name}: before {median['before']:.1f} ms, after {median['after']:.1f} ms per step; before/after "
          f"per round x{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    print(f"  where it goes (profiler share of {profiled_steps} steps x the timed median), ms per step (share)")
    print(f"  {'':56s} {'before':>15s} {'after':>15s}")
    for group in ("phase", "kind"):
        keys = sorted(set(table["before"][group]) | set(table["after"][group]),
                      key=lambda k: -table["before"][group][k])
        for k in keys:
            cells = [f"{median[n] * table[n][group][k]:6.1f} ({100 * table[n][group][k]:4.1f} %)" for n in steps]
            print(f"  {group + ': ' + k:56s} {cells[0]:>15s} {cells[1]:>15s}")
    return {"label": steps["after"].label, "clock": clock_name, "rounds": rounds, "profiled_steps": profiled_steps,
            "median_ms": median, "ratio_before_after": {"median": statistics.median(ratios), "min": min(ratios),
                                                        "max": max(ratios), "per_round": ratios},
            "shares": {n: {g: dict(c) for g, c in t.items()} for n, t in table.items()}, "times": times}


def thread_timing(rounds: int, counts: tuple[int, ...] = (1, 2)) -> dict:
    """The tour step (after) at each thread count, interleaved by round, wall clock; CPU time beside it."""
    step = TourStep(before=False)
    steps = {f"{n} thread(s)": step for n in counts}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    current = {"name": ""}

    def setup(name: str) -> None:
        torch.set_num_threads(int(name.split()[0]))
        current["name"] = name

    def timed_step() -> None:
        c0 = time.process_time()
        step()
        cpu[current["name"]].append(time.process_time() - c0)

    times = interleaved_steps({k: timed_step for k in steps}, rounds, time.perf_counter, setup)
    print(f"tour training step ({step.label}), wall clock, {rounds} interleaved rounds")
    for k, ts in times.items():
        print(f"  {k}: median {1e3 * statistics.median(ts):.1f} ms wall, "
              f"{1e3 * statistics.median(cpu[k][2:]):.1f} ms CPU")
    base = list(times)[0]
    for k in list(times)[1:]:
        r = [a / b for a, b in zip(times[base], times[k])]
        print(f"  {base} / {k} per round: x{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")
    return {"times": times, "median_ms": {k: 1e3 * statistics.median(ts) for k, ts in times.items()},
            "cpu_median_ms": {k: 1e3 * statistics.median(ts[2:]) for k, ts in cpu.items()},
            "load_average": list(os.getloadavg())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--only", choices=("ort", "train", "tour", "threads"))
    ap.add_argument("--clock", choices=("cpu", "wall"), default="wall", help="clock of the interleaved timings")
    ap.add_argument("--rounds", type=int, default=10, help="rounds of the interleaved timings")
    ap.add_argument("--out", default=None, help="write the tour/threads sections' numbers here (JSON, with provenance)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    record = RunRecord(seeds=0)  # the tour step's seeds: model init, loader and per-step reseeding from 0
    result: dict = {"threads": args.threads, "clock": args.clock, "load_average_start": list(os.getloadavg())}
    if args.only in (None, "ort"):
        ort_profile(args.batch, args.threads)
    if args.only in (None, "train"):
        train_profile(args.train_batch, args.threads)
    if args.only in (None, "tour"):
        result["tour"] = tour_profile(args.threads, args.rounds, clock)
    if args.only == "threads":  # not in the default run: wall-clock only, for a quiet machine
        result["threads_timing"] = thread_timing(args.rounds)
    if args.out:
        result["load_average_end"] = list(os.getloadavg())
        write_result(args.out, result, record)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
