"""Where the time goes, for the rows of `make bench` that miss their target: ONNX Runtime per-op time of our
export and timm's, and the torch profiler's per-op time of one training step (timm vs ours vs ours memory-lean).

    .venv/bin/python -m benchmarks.profile [--threads 1] [--batch 1] [--train-batch 8] [--only ort|train]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from collections import Counter
from pathlib import Path

import torch


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--only", choices=("ort", "train"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.only != "train":
        ort_profile(args.batch, args.threads)
    if args.only != "ort":
        train_profile(args.train_batch, args.threads)


if __name__ == "__main__":
    main()
