"""The block step (mbconv.layers.block_step): an inverted-residual block's training step as one autograd node,
against the same block's layers one by one (`use_native_block(False)`): outputs, every gradient, running
statistics; where it applies and where the layers run as before."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from mbconv import create_model
from mbconv.layers import native
from mbconv.layers.block_step import block_step, block_step_applies
from mbconv.layers.blocks import DepthwiseSeparable, MBConv
from mbconv.layers.conv import LayerOpts
from mbconv.layers.depthwise import use_fast_backward
from mbconv.layers.memory import checkpoint_stages, lean_layers
from mbconv.layers.pointwise import fast_pointwise

pytestmark = pytest.mark.skipif(not native.native_enabled(), reason="native kernels unavailable (no C compiler)")


def lean(block: nn.Module) -> nn.Module:
    """The block as the Trainer runs it (products for small 1x1 convs, lean classes), channels-last, training."""
    block = block.train().to(memory_format=torch.channels_last)
    fast_pointwise(block)
    lean_layers(block)
    with torch.no_grad():  # BN away from its initial state, so that its affine gradients are not trivial
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return block


def step(block: nn.Module, x: torch.Tensor, gy: torch.Tensor, on: bool, graph_nodes: Callable) -> tuple:
    x = x.detach().clone().requires_grad_(True)
    with native.use_native_block(on):
        torch.manual_seed(7)  # the same drop-path draws
        y = block(x)
        names = graph_nodes(y)
        y.backward(gy)
    grads = {k: p.grad.clone() for k, p in block.named_parameters()}
    return y.detach(), x.grad, grads, {k: b.clone() for k, b in block.named_buffers()}, names


def assert_same(a: tuple, b: tuple) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a[1], b[1], rtol=1e-3, atol=1e-4)
    for k in a[2]:
        ref = b[2][k]  # relative to the parameter's largest gradient (a BN bias before a BN sums to ~0)
        assert (a[2][k] - ref).abs().max() <= 1e-3 * (ref.abs().max() + 1e-2), k
    for k in a[3]:
        torch.testing.assert_close(a[3][k].float(), b[3][k].float(), rtol=1e-4, atol=1e-5, msg=k)


BLOCKS = {
    "mbconv k3 s1 residual, drop path": lambda: MBConv(24, 24, 144, kernel=3, se_chs=6, drop_path=0.3),
    "mbconv k5 s2": lambda: MBConv(24, 40, 144, kernel=5, stride=2, se_chs=6),
    "depthwise-separable": lambda: DepthwiseSeparable(20, 16, kernel=3, se_chs=5),
    "relu / hardsigmoid SE, hardswish": lambda: MBConv(16, 16, 40, kernel=3, act="hard_swish", se_chs=8,
                                                        se_act="relu", se_gate="hard_sigmoid"),
}


@pytest.mark.parametrize("name", list(BLOCKS))
@pytest.mark.parametrize("size", [9, 2, 1])  # 2 and 1: kernels cropped to their live taps (5x5 -> 3x3, 1x1)
def test_equals_the_layers_one_by_one(name: str, size: int, graph_nodes: Callable) -> None:
    torch.manual_seed(0)
    block = lean(BLOCKS[name]())
    other = copy.deepcopy(block)
    x = torch.randn(6, block.depthwise.conv.in_channels if block.expand is None else block.expand.conv.in_channels,
                    size, size).contiguous(memory_format=torch.channels_last)
    assert block_step_applies(block, x)
    gy = torch.randn_like(copy.deepcopy(block)(x)).contiguous(memory_format=torch.channels_last)
    on, off = step(block, x, gy, True, graph_nodes), step(other, x, gy, False, graph_nodes)
    assert "BlockStepFnBackward" in on[4] and "BlockStepFnBackward" not in off[4]
    assert_same(on, off)
    assert on[0].is_contiguous(memory_format=torch.channels_last)


def test_a_whole_model_and_checkpointed_stages(graph_nodes: Callable) -> None:
    """A small EfficientNet as the Trainer runs it: loss, gradients and running statistics equal with the block
    step on and off, and with per-stage activation checkpointing (every saved tensor goes through
    save_for_backward, so the checkpoint's saved-tensor hooks see them all)."""
    torch.manual_seed(0)
    model = lean(create_model("efficientnet_b0", num_classes=5, width_mult=0.25, in_chans=1))
    x = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    target = torch.tensor([0, 1, 2, 3])

    def run(m: nn.Module, on: bool) -> tuple:
        with native.use_native_block(on):
            torch.manual_seed(3)
            loss = nn.functional.cross_entropy(m(x), target)
            names = graph_nodes(loss)
            loss.backward()
        return loss.detach(), None, {k: p.grad for k, p in m.named_parameters()}, None, names

    off = run(copy.deepcopy(model), False)
    on = run(copy.deepcopy(model), True)
    ckpt = run(checkpoint_stages(copy.deepcopy(model)), True)
    assert "BlockStepFnBackward" in on[4] and "BlockStepFnBackward" not in off[4]
    # per parameter relative to its largest gradient, plus 1e-4 of the model's largest: a BN bias whose output
    # feeds another BN has a gradient that is zero up to rounding, so only rounding-sized differences are allowed
    scale = max(g.abs().max().item() for g in off[2].values())
    for got in (on, ckpt):
        torch.testing.assert_close(got[0], off[0], rtol=1e-4, atol=1e-5)
        for k in off[2]:
            assert (got[2][k] - off[2][k]).abs().max() <= 1e-3 * off[2][k].abs().max() + 1e-4 * scale, k


def test_where_the_layers_run_one_by_one(graph_nodes: Callable) -> None:
    torch.manual_seed(0)
    block = lean(BLOCKS["mbconv k3 s1 residual, drop path"]())
    x = torch.randn(2, 24, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert "BlockStepFnBackward" in graph_nodes(block(x))
    assert "BlockStepFnBackward" not in graph_nodes(block(x.detach().contiguous().requires_grad_(True)))  # NCHW
    with native.use_native_block(False):
        assert "BlockStepFnBackward" not in graph_nodes(block(x))
    with native.use_native(False):
        assert "BlockStepFnBackward" not in graph_nodes(block(x))
    for switch in (native.use_native_depthwise(False), native.use_native_se(False), use_fast_backward(False)):
        with switch:  # a part taken off its native kernel takes the block off the node
            assert "BlockStepFnBackward" not in graph_nodes(block(x))
    with torch.no_grad():
        assert block(x).grad_fn is None
    h = block.depthwise.bn.register_forward_hook(lambda *a: None)
    assert not block_step_applies(block, x) and "BlockStepFnBackward" not in graph_nodes(block(x))
    h.remove()
    parametrize.register_parametrization(block.expand.conv, "weight", nn.Identity())
    assert not block_step_applies(block, x)
    parametrize.remove_parametrizations(block.expand.conv, "weight")
    assert block_step_applies(block, x)
    block.eval()
    assert "BlockStepFnBackward" not in graph_nodes(block(x))
    block.train()
    big = lean(BLOCKS["mbconv k3 s1 residual, drop path"]())
    lean_layers(big, 24 * 6 * 6 * 6)  # the expanded map reaches the lean size: the gated project instead
    names = graph_nodes(big(x))
    assert "BlockStepFnBackward" not in names and "GatedConvFnBackward" in names
    assert not block_step_applies(block, x.double())


def test_products_are_torch_mms_and_need_the_blas_sgemm(graph_nodes: Callable, monkeypatch) -> None:  # noqa: ANN001
    """block_step.c multiplies with the sgemm torch.mm calls: where every layer of the module path takes the
    native kernels too (maps of at least 2^14 elements), the two forwards and the input gradients agree bit for
    bit. Without that sgemm the block runs its layers one by one."""
    torch.manual_seed(0)
    block = lean(MBConv(16, 24, 64, kernel=3, opts=LayerOpts(dims=2)))
    x = torch.randn(8, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    gy = torch.randn(8, 24, 12, 12).contiguous(memory_format=torch.channels_last)
    on, off = step(copy.deepcopy(block), x, gy, True, graph_nodes), step(copy.deepcopy(block), x, gy, False,
                                                                           graph_nodes)
    assert "BlockStepFnBackward" in on[4] and "NativeBNActFnBackward" in off[4]
    assert torch.equal(on[0], off[0]) and torch.equal(on[1], off[1])
    assert native.native_sgemm_found()
    monkeypatch.setenv("MBCONV_NATIVE_SGEMM", "0")
    native.reset_native()
    try:
        assert native.native_enabled() and not native.native_sgemm_found() and not block_step_applies(block, x)
        assert native.native_status().endswith("(no BLAS sgemm found: the block step is off)")
        assert "BlockStepFnBackward" not in step(copy.deepcopy(block), x, gy, True, graph_nodes)[4]
    finally:
        monkeypatch.undo()
        native.reset_native()
    assert native.native_sgemm_found()


def test_direct_call_without_se_and_once_differentiable() -> None:
    """`block_step` on a block without SE (the lean classes only take blocks with one, the node does not need it);
    a second derivative raises instead of being wrong."""
    torch.manual_seed(0)
    block = MBConv(16, 16, 48, kernel=3, opts=LayerOpts(dims=2)).train().to(memory_format=torch.channels_last)
    x = torch.randn(3, 16, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert block.steps == ("expand", "depthwise", "project") and block_step_applies(block, x)
    plain = copy.deepcopy(block)
    y = block_step(block, x)
    assert type(y.grad_fn).__name__ == "BlockStepFnBackward"
    y0 = plain.project(plain.depthwise(plain.expand(x)))
    torch.testing.assert_close(y, y0, rtol=1e-4, atol=1e-4)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (g0,) = torch.autograd.grad(y0.square().sum(), x)
    torch.testing.assert_close(g, g0, rtol=1e-3, atol=1e-4)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_blocks_without_se_are_lean_for_the_block_step(graph_nodes: Callable) -> None:
    """Lean kind "block": an MBConv without SE (MobileNetV2's, EfficientNet-Lite's) becomes a lean block and takes
    the node on small maps, equal to its layers; without the kind it stays the plain class."""
    torch.manual_seed(0)
    plain = MBConv(16, 16, 48, kernel=5, opts=LayerOpts(dims=2))
    kept = copy.deepcopy(plain)
    lean_layers(kept, kinds=("bn_act", "se_gate", "se"))
    assert type(kept) is MBConv
    block = lean(plain)
    assert type(block).__name__ == "LeanMBConv"
    x = torch.randn(4, 16, 7, 7).contiguous(memory_format=torch.channels_last)
    gy = torch.randn_like(copy.deepcopy(block)(x)).contiguous(memory_format=torch.channels_last)
    other = copy.deepcopy(block)
    on, off = step(block, x, gy, True, graph_nodes), step(other, x, gy, False, graph_nodes)
    assert "BlockStepFnBackward" in on[4] and "BlockStepFnBackward" not in off[4]
    assert_same(on, off)


def test_under_ddp_gradients_in_the_parameters_layout(tmp_path, graph_nodes: Callable) -> None:  # noqa: ANN001
    """DistributedDataParallel (gloo, one process) over a small EfficientNet as the Trainer runs it: the block step
    runs inside DDP and its gradients equal the model's without DDP; every weight gradient comes back in its
    parameter's layout (channels-last weights: the node's, the 1x1 products' through `linear_weight`), as DDP's
    buckets expect (it warns about any other strides)."""
    import warnings

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = lean(create_model("efficientnet_b0", num_classes=3, width_mult=0.25, in_chans=1))
        ref = copy.deepcopy(model)
        x = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
        ddp = nn.parallel.DistributedDataParallel(model)
        torch.manual_seed(3)
        out = ddp(x)
        assert "BlockStepFnBackward" in graph_nodes(out)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*[Gg]rad strides do not match.*")
            out.square().mean().backward()
        torch.manual_seed(3)
        ref(x).square().mean().backward()
        for (k, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=k)
        for k, p in model.named_parameters():
            assert p.grad.stride() == p.stride(), k
    finally:
        dist.destroy_process_group()
