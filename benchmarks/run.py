"""`make bench`: mbconv's inference and training paths against timm and ONNX Runtime, side by side in one run.

    .venv/bin/python -m benchmarks.run [--quick] [--threads 2] [--models b0,tour] [--no-compile] [--no-train]
                                       [--sections eager,compile,onnx,int8,train] [--out results/bench]

For EfficientNet-B0 at 224 px and the tour's model (B0 spec, width 0.5, 32 px, 1 channel, 10 classes), with the
SAME weights in both libraries (ours copied into timm through `mbconv.compat`; outputs are checked equal):

- inference, batch 1 latency and batch 16 throughput, all backends timed in interleaved rounds (each round runs
  every variant once, in a rotating order), so machine noise hits all of them alike. A ratio row is computed
  per round (time of theirs / time of ours: > 1 means ours is faster) and printed as min / median / max:
  ours eager (`inference.prepare_inference`) vs timm eager, contiguous and channels_last; ours compiled vs timm
  compiled (torch.compile inductor with freezing, both channels_last); our ONNX (`export.export_onnx`) vs timm's
  ONNX (`timm.utils.onnx.onnx_export`) in the same ONNX Runtime session settings; our int8 ONNX
  (`mbconv.export.export_int8`: ORT static int8 of our export; the row is skipped without the deploy extra) vs our
  fp32 ONNX;
- achieved GFLOP/s (2 x MACs / time) of each backend at batch 16 against this machine's fp32 matmul peak and
  copy bandwidth, measured at the start of the same run;
- one training step (SGD, channels_last, B0 batch 8 at 224 px; tour model batch 64 at 32 px) in a child process
  per configuration: median step time, peak RSS with the default allocator, and the live-tensor peak (peak RSS
  with glibc's mmap threshold fixed at 128 KiB, so freed tensors return to the OS): timm vs ours plain vs ours
  memory-lean (`layers.memory.memory_efficient`) vs memory-lean + checkpointing of the three high-resolution
  stages (ckpt3) or of every stage (ckpt).

A full run takes about 8-10 minutes on 2 idle cores (torch.compile is about half of it; `--no-compile` skips it);
`--quick` runs few rounds to check that everything works (numbers then are noise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mbconv.provenance import RunRecord, cpu_name, write_result

ROOT = Path(__file__).resolve().parents[1]


# -- machine limits ----------------------------------------------------------------------------------------

def tee_log() -> tuple[list[str], Callable[[str], None]]:
    """A log function that prints each line at once and keeps it in the returned list (for the .txt result)."""
    lines: list[str] = []

    def log(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    return lines, log


def bench_start(name: str, threads: list[int], quick: bool, argv: list[str] | None, clock: str | None = None
                ) -> tuple[list[str], Callable[[str], None], float, RunRecord, dict[str, Any]]:
    """The common start of a benchmark run: (log lines, log function, start time, provenance record with the
    command, the result dict begun with torch's version, threads, the clock if given, quick and the load average),
    the header logged."""
    lines, log = tee_log()
    t_start = time.perf_counter()
    record = RunRecord(seeds=0, argv=None if argv is None else [sys.argv[0], *argv])
    load = os.getloadavg()
    timing = "" if clock is None else f", clock {clock}"
    log(f"# {name}: torch {torch.__version__}, threads {threads}{timing}, quick={quick}, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    result: dict[str, Any] = {"torch": torch.__version__, "quick": quick, "threads": threads,
                              "load_average_start": list(load), "runs": {}}
    if clock is not None:
        result["clock"] = clock
    return lines, log, t_start, record, result


def write_bench_result(out: str | Path, result: dict[str, Any], record: RunRecord, lines: list[str],
                       log: Callable[[str], None], t_start: float, threads: list[int]) -> None:
    """Finish a benchmark run: the end load average and wall time into `result` (and the log), the result as JSON
    with its provenance record (tuples as lists) and the log's lines as the .txt beside it."""
    from mbconv.files import atomic_write_text

    result["load_average_end"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - t_start
    log(f"\ntotal {result['wall_s']:.0f} s; load average at the end {result['load_average_end'][0]:.2f}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plain = json.loads(json.dumps(result, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    write_result(out, plain, record, threads=threads)
    atomic_write_text(out.with_suffix(".txt"), "\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.txt')}")


def parse_threads(ap: argparse.ArgumentParser, text: str) -> list[int]:
    """Comma-separated thread counts >= 1 from `text`; anything else is an argparse error naming it."""
    try:
        threads = [int(t) for t in text.split(",") if t]
    except ValueError:
        ap.error(f"invalid --threads {text!r}: expected comma-separated integers")
    if not threads or min(threads) < 1:
        ap.error(f"invalid --threads {text!r}: expected integers >= 1")
    return threads

def machine_roofs() -> tuple[dict[str, float], dict[str, float]]:
    """(fp32 matmul GFLOP/s of 2048^2 products, copy GB/s of a 256 MiB tensor), each as best and median, with the
    current thread count; measured by the library's `roofline.measure_machine`."""
    from mbconv.roofline import measure_machine

    m = measure_machine(n=2048, copy_mib=256, seconds=3.0)
    return ({"best": m["peak_gflops"], "median": m["peak_gflops_median"]},
            {"best": m["bandwidth_gbs"], "median": m["bandwidth_gbs_median"]})


# -- models ------------------------------------------------------------------------------------------------
MODELS: dict[str, dict[str, Any]] = {
    "b0": dict(label="EfficientNet-B0 224px", res=224, in_chans=3, classes=1000, width=1.0, train_batch=8),
    "tour": dict(label="tour model (B0 w0.5, 32px, 1ch, 10 cls)", res=32, in_chans=1, classes=10, width=0.5,
                 train_batch=64),
}


def build_pair(key: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, timm) eval models with identical weights; raises if their outputs differ."""
    import timm
    from timm.models.efficientnet import _gen_efficientnet

    from mbconv import create_model
    from mbconv.compat import mbconv_to_timm_state_dict

    c = MODELS[key]
    torch.manual_seed(0)
    ours = create_model("efficientnet_b0", num_classes=c["classes"], in_chans=c["in_chans"],
                        width_mult=c["width"])
    # BN statistics of random inputs, so activations have a trained net's scale (no denormals, no blow-up)
    bns = [m for m in ours.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    with torch.no_grad():  # enough samples that the 1x1-spatial late stages get a sensible variance
        ours.train()(torch.randn(32 if c["res"] > 64 else 256, c["in_chans"], c["res"], c["res"]))
    for m in bns:
        m.momentum = 0.01
    ours.eval()
    kw = dict(num_classes=c["classes"], in_chans=c["in_chans"])
    if c["width"] == 1.0:
        theirs = timm.create_model("efficientnet_b0", **kw)
    else:  # timm's own generator with its channel multiplier
        theirs = _gen_efficientnet("efficientnet_b0", channel_multiplier=c["width"], pretrained=False, **kw)
    theirs.load_state_dict(mbconv_to_timm_state_dict(ours.state_dict(), ours.spec), strict=True)
    theirs.eval()
    x = torch.randn(2, c["in_chans"], c["res"], c["res"])
    with torch.no_grad():
        diff = float((ours(x) - theirs(x)).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"{key}: mbconv and timm outputs differ by {diff:.2e} with the same weights")
    return ours, theirs


def _int8_exporter() -> tuple[Callable | None, str]:
    """A function (model, path, calib, resolution) writing our int8 ONNX: `mbconv.export.export_int8` (ORT static
    QDQ, u8 activations, s8 per-channel weights) of the same cleaned fp32 graph `export_onnx` writes; (None, why)
    when the deploy extra is missing."""
    try:
        from mbconv.export import export_int8
    except ImportError as e:
        return None, f"mbconv.export.export_int8 not available ({e})"

    def run_export(model: torch.nn.Module, path: Path, calib: torch.Tensor, resolution: int) -> Path:
        export_int8(model, path, calib, resolution, batch_size=16)
        return path

    return run_export, ""


# -- timing ------------------------------------------------------------------------------------------------
def interleaved(variants: dict[str, Callable[[], Any]], rounds: int, inner: int, warmup: int = 2
                ) -> dict[str, list[float]]:
    """Seconds per call of each variant, one sample per round; every round runs each variant `inner` times, in
    an order rotated by one each round."""
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            fn = variants[n]
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[n].append((time.perf_counter() - t0) / inner)
    return times


def ratio_stats(theirs: list[float], ours: list[float]) -> dict[str, float]:
    """Per-round speed-up theirs / ours (> 1: ours faster): min, median, max."""
    r = [t / o for t, o in zip(theirs, ours)]
    return {"min": min(r), "median": statistics.median(r), "max": max(r), "per_round": r}


def _fmt_ratio(s: dict[str, float]) -> str:
    return f"x{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


# -- inference section ---------------------------------------------------------------------------------------
def inference_variants(key: str, batch: int, sections: set[str], tmp: Path, threads: int, log: Callable
                       ) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The callables to time for one model and batch size, and facts about them (export/compile times, checks)."""
    from timm.utils.onnx import onnx_export

    from mbconv.export import export_onnx, ort_run, ort_session
    from mbconv.inference import channels_last_input, compile_model, prepare_inference

    c = MODELS[key]
    ours, theirs = build_pair(key)
    x = torch.randn(batch, c["in_chans"], c["res"], c["res"])
    xcl = channels_last_input(x)
    info: dict[str, Any] = {}
    v: dict[str, Callable[[], Any]] = {}
    inf = prepare_inference(ours, c["res"])
    inf_cl = prepare_inference(ours, c["res"], channels_last=True)
    with torch.no_grad():
        ref = ours(x)
        scale = float(ref.abs().max())
        info["logits max abs"] = scale
        info["max_abs_diff_ours_fast_path"] = float((inf_cl(xcl) - ref).abs().max())
    theirs_cl = _clone_cl(theirs)
    ours_cl = _clone_cl(ours)
    if "eager" in sections:
        v["timm eager"] = _nograd(theirs, x)
        v["timm eager CL"] = _nograd(theirs_cl, xcl)
        v["ours eager"] = _nograd(inf, x)
        v["ours eager CL"] = _nograd(inf_cl, xcl)
        v["ours module CL"] = _nograd(ours_cl, xcl)  # the plain training module: what the fast path buys
    if "compile" in sections:
        for name, model in (("timm compiled", theirs_cl), ("ours compiled", inf_cl)):
            t0 = time.perf_counter()
            try:
                compiled = compile_model(model, xcl)
            except Exception as e:  # no compiler, inductor failure: report and go on
                log(f"  {name}: torch.compile failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            info[f"{name} compile_s"] = time.perf_counter() - t0
            with torch.no_grad():
                info[f"max_abs_diff {name}"] = float((compiled(xcl) - ref).abs().max())
            v[name] = _nograd(compiled, xcl)
    if "onnx" in sections or "int8" in sections:
        ours_path, timm_path = tmp / f"ours_{key}.onnx", tmp / f"timm_{key}.onnx"
        t0 = time.perf_counter()
        exp = export_onnx(ours, ours_path, c["res"])
        info["ours onnx export_s"] = time.perf_counter() - t0
        info["ours onnx ops"] = exp["ops"]
        s_ours = ort_session(ours_path, threads, spinning=False)
        info["max_abs_diff ours onnx"] = float((ort_run(s_ours, x) - ref).abs().max())
        if "onnx" in sections:
            onnx_export(theirs, str(timm_path), example_input=x[:1], opset=17, check=True, use_dynamo=False,
                        input_names=["input"], output_names=["logits"])
            s_timm = ort_session(timm_path, threads, spinning=False)
            info["max_abs_diff timm onnx"] = float((ort_run(s_timm, x) - ref).abs().max())
            from mbconv.export import op_counts

            info["timm onnx ops"] = op_counts(timm_path)
            v["timm ORT"] = _ort(s_timm, x)
            v["ours ORT"] = _ort(s_ours, x)
        if "int8" in sections:
            fn, why = _int8_exporter()
            if fn is None:
                info["int8"] = f"skipped: {why}"
            else:
                q_path = tmp / f"ours_{key}_int8.onnx"
                fn(ours, q_path, torch.randn(64, c["in_chans"], c["res"], c["res"]), c["res"])
                s_q = ort_session(q_path, threads, spinning=False)
                info["max_abs_diff ours int8"] = float((ort_run(s_q, x) - ref).abs().max())
                v["ours ORT int8"] = _ort(s_q, x)
                v.setdefault("ours ORT", _ort(s_ours, x))
    return v, info


def _clone_cl(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def _nograd(model: Callable, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return model(x)
    return run


def _ort(session: Any, x: torch.Tensor) -> Callable[[], Any]:
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


PAIRS = [  # (row label, ours, theirs)
    ("eager vs timm eager (contiguous)", "ours eager", "timm eager"),
    ("eager vs timm eager (channels_last)", "ours eager CL", "timm eager CL"),
    ("  (our plain module CL -> our fast path CL)", "ours eager CL", "ours module CL"),
    ("compiled vs timm compiled", "ours compiled", "timm compiled"),
    ("our ONNX vs timm's ONNX (ORT)", "ours ORT", "timm ORT"),
    ("our int8 vs our fp32 (ORT)", "ours ORT int8", "ours ORT"),
]


def run_inference(key: str, args: argparse.Namespace, sections: set[str], tmp: Path, peak: dict, log: Callable
                  ) -> dict[str, Any]:
    from mbconv.cost import spec_cost
    from mbconv.zoo import get_spec

    c = MODELS[key]
    spec = get_spec("efficientnet_b0", num_classes=c["classes"], in_chans=c["in_chans"], width_mult=c["width"])
    macs = spec_cost(spec, c["res"]).macs
    out: dict[str, Any] = {"macs": macs}
    small = c["res"] <= 64
    for batch in (1, 16):
        rounds = args.rounds_b1 if batch == 1 else args.rounds_b16
        inner = (20 if batch == 1 else 4) if small else 1
        if args.quick:
            rounds, inner = max(3, rounds // 6), max(1, inner // 4)
        t0 = time.perf_counter()
        variants, info = inference_variants(key, batch, sections, tmp, args.threads, log)
        setup_s = time.perf_counter() - t0
        times = interleaved(variants, rounds, inner)
        rows = {}
        for label, o, t in PAIRS:
            if o in times and t in times:
                rows[label] = ratio_stats(times[t], times[o])
        per = {n: {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts), "max_ms": 1e3 * max(ts),
                   "samples_ms": [1e3 * t for t in ts],  # every round's time per call, in round order
                   "img_per_s": batch / statistics.median(ts),
                   "gflops": 2 * macs * batch / statistics.median(ts) / 1e9} for n, ts in times.items()}
        for n in per:
            per[n]["pct_matmul_peak"] = 100 * per[n]["gflops"] / peak["best"]
        out[f"batch{batch}"] = {"rounds": rounds, "inner": inner, "setup_s": setup_s, "variants": per,
                                "ratios": rows, "info": info}
        log(f"\n{c['label']}, batch {batch}: {rounds} interleaved rounds x {inner} call(s); setup {setup_s:.0f} s")
        log(f"  {'variant':18s} {'median ms':>10s} {'min ms':>9s} {'img/s':>8s} {'GFLOP/s':>8s} {'% mm peak':>9s}")
        for n, p in per.items():
            log(f"  {n:18s} {p['median_ms']:10.2f} {p['min_ms']:9.2f} {p['img_per_s']:8.1f} {p['gflops']:8.1f} "
                f"{p['pct_matmul_peak']:9.1f}")
        log("  speed-up of ours, theirs/ours per round: median (min-max)")
        for label, s in rows.items():
            log(f"  {label:40s} {_fmt_ratio(s)}")
        for k, val in info.items():
            if "ops" not in k:
                log(f"  {k}: {val if isinstance(val, str) else f'{val:.3g}'}")
    return out


# -- training section --------------------------------------------------------------------------------------
TRAIN_IMPLS = ["timm", "ours", "ours_lean", "ours_lean_ckpt3", "ours_lean_ckpt"]  # ckpt3: stages 0-2 only


def _child(impl: str, key: str, args: argparse.Namespace, steps: int, warmup: int, live: bool) -> dict[str, Any]:
    c = MODELS[key]
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--impl", impl, "--batch", str(c["train_batch"]),
           "--resolution", str(c["res"]), "--steps", str(steps), "--warmup", str(warmup), "--channels-last",
           "--threads", str(args.threads)] + (["--tour"] if key == "tour" else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    if live:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)  # every large tensor mmapped: RSS follows live tensors
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"train_step {impl} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_training(key: str, args: argparse.Namespace, log: Callable) -> dict[str, Any]:
    steps, warmup, reps = (2, 1, 1) if args.quick else (4, 1, 2)
    impls = TRAIN_IMPLS if key == "b0" else TRAIN_IMPLS[:3]
    res: dict[str, dict[str, Any]] = {i: {"times": [], "cpu_times": [], "peak_rss_mib": [], "train_mib": []}
                                      for i in impls}
    for rep in range(reps):  # alternate the order so drift hits both sides
        for impl in (impls if rep % 2 == 0 else impls[::-1]):
            r = _child(impl, key, args, steps, warmup, live=False)
            res[impl]["times"] += r["times"]
            res[impl]["cpu_times"] += r["cpu_times"]
            res[impl]["peak_rss_mib"].append(r["peak_rss_mib"])
            res[impl]["train_mib"].append(r["peak_rss_mib"] - r["rss_after_model_mib"])
            res[impl]["rss_after_model_mib"] = r["rss_after_model_mib"]
    for impl in impls:  # live-tensor peak: one short child each
        r = _child(impl, key, args, 1, 1, live=True)
        res[impl]["live_train_mib"] = r["peak_rss_mib"] - r["rss_after_model_mib"]
    c = MODELS[key]
    log(f"\n{c['label']}: training step, batch {c['train_batch']}, SGD, channels_last, {args.threads} thread(s), "
        f"{reps} child process(es) x {steps} steps per configuration")
    log(f"  {'impl':16s} {'median s':>9s} {'min s':>7s} {'cpu s':>7s} {'peak RSS MiB':>13s} {'train MiB':>10s} "
        f"{'live MiB':>9s} {'time/timm':>10s} {'cpu/timm':>9s} {'RSS/timm':>9s} {'live/timm':>9s}")
    t = res["timm"]
    summary = {}
    for impl in impls:
        r = res[impl]
        row = {"median_s": statistics.median(r["times"]), "min_s": min(r["times"]),
               "median_cpu_s": statistics.median(r["cpu_times"]),
               "peak_rss_mib": max(r["peak_rss_mib"]), "train_mib": max(r["train_mib"]),
               "live_train_mib": r["live_train_mib"]}
        row["time_vs_timm"] = row["median_s"] / statistics.median(t["times"])
        row["cpu_vs_timm"] = row["median_cpu_s"] / statistics.median(t["cpu_times"])
        row["peak_rss_vs_timm"] = row["peak_rss_mib"] / max(t["peak_rss_mib"])
        row["live_vs_timm"] = row["live_train_mib"] / t["live_train_mib"]
        summary[impl] = row
        log(f"  {impl:16s} {row['median_s']:9.3f} {row['min_s']:7.3f} {row['median_cpu_s']:7.3f} "
            f"{row['peak_rss_mib']:13.0f} {row['train_mib']:10.0f} {row['live_train_mib']:9.0f} "
            f"{row['time_vs_timm']:10.2f} {row['cpu_vs_timm']:9.2f} {row['peak_rss_vs_timm']:9.2f} "
            f"{row['live_vs_timm']:9.2f}")
    return {"summary": summary, "raw": res}


# -- main --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few rounds: checks that everything runs")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and ORT (default 2)")
    ap.add_argument("--models", default="b0,tour")
    ap.add_argument("--sections", default="eager,compile,onnx,int8,train")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--rounds-b1", type=int, default=30)
    ap.add_argument("--rounds-b16", type=int, default=8)
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    if args.no_compile:
        sections.discard("compile")
    if args.no_train:
        sections.discard("train")
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {bad}: expected some of {sorted(MODELS)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines, log = tee_log()

    import onnxruntime
    import timm

    t_start = time.perf_counter()
    record = RunRecord(argv=None if argv is None else [sys.argv[0], *argv])  # no seeds, epochs or init: no training
    cpu = cpu_name()
    log(f"mbconv bench{' (QUICK: few rounds, numbers are noise)' if args.quick else ''}: {cpu}, "
        f"{os.cpu_count()} cpus, {args.threads} thread(s); torch {torch.__version__}, timm {timm.__version__}, "
        f"onnxruntime {onnxruntime.__version__}; load average {os.getloadavg()[0]:.1f}")
    peak, bw = machine_roofs()
    log(f"machine: fp32 matmul 2048^2 {peak['best']:.1f} GFLOP/s (median {peak['median']:.1f}); "
        f"copy {bw['best']:.1f} GB/s (median {bw['median']:.1f})")
    result: dict[str, Any] = {"threads": args.threads, "quick": args.quick, "cpu": cpu, "matmul_gflops": peak,
                              "copy_gbs": bw, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for key in models:
            result["models"][key] = {}
            if sections & {"eager", "compile", "onnx", "int8"}:
                result["models"][key]["inference"] = run_inference(key, args, sections, Path(tmp), peak, log)
            if "train" in sections:
                result["models"][key]["train"] = run_training(key, args, log)
    peak2 = machine_roofs()[0]
    result["matmul_gflops_end"] = peak2
    result["wall_s"] = time.perf_counter() - t_start
    result["load_average_end"] = os.getloadavg()[0]
    log(f"\nmatmul peak at the end {peak2['best']:.1f} GFLOP/s; load average {os.getloadavg()[0]:.1f}; "
        f"wall {result['wall_s']:.0f} s")
    write_result(out / "speed.json", result, record)
    (out / "speed.txt").write_text("\n".join(lines) + "\n")
    log(f"wrote {out / 'speed.json'} and {out / 'speed.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
