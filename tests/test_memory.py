"""Memory-lean training: the same gradients, running statistics and names as the plain model, less stored.

These tests pin PyTorch's-ops paths (`BNActFn`, bitwise-equal forwards): the native BN + activation kernels,
which the lean layers take first where they are built, are switched off here and tested in
tests/layers/test_native.py."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mbconv import create_model
from mbconv.layers import ConvNormAct, LayerOpts, MBConv, SqueezeExcite, fuse_bn
from mbconv.layers.memory import (
    ACTS,
    LEAN_BLOCK,
    LEAN_MIN_NUMEL,
    NATIVE_ACT_NAMES,
    BNActFn,
    CheckpointedSequential,
    GatedConvFn,
    LeanBlockForward,
    LeanConvNormAct,
    LeanMBConv,
    LeanSqueezeExcite,
    MemoryEfficientSiLU,
    SiLUFn,
    checkpoint_stages,
    lean_layers,
    memory_efficient,
)
from mbconv.layers.native import use_native
from mbconv.prune import prune
from mbconv.train import TrainConfig, Trainer


@pytest.fixture(autouse=True)
def pytorch_ops_only():
    with use_native(False):
        yield

SIZE = {1: (40,), 2: (32, 32), 3: (12, 12, 12)}


def model(name, dims=2):
    torch.manual_seed(0)
    return create_model(name, num_classes=5, dims=dims, drop_rate=0.0, drop_path_rate=0.0).train()


def step(m, x):
    y = m(x)
    (y.square().sum() + y.sum()).backward()
    return y


def assert_same_grads(a, b):
    """Equal up to float rounding, measured against the largest gradient: many BN biases have a mathematically
    zero gradient (a BN follows), so their float values are rounding noise of the size of the others' rounding."""
    gmax = max(p.grad.abs().max() for p in b.parameters())
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5 * float(gmax), rtol=0, msg=n)


def saved_bytes(m, x):
    """Bytes of distinct activation storages (not parameters) autograd keeps for backward after one forward."""
    seen = {}
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    return sum(seen.values())


@pytest.mark.parametrize("name,dims", [("efficientnet_b0", 2), ("tf_mobilenetv3_small_100", 2),
                                       ("tf_efficientnetv2_s", 2), ("efficientnet_b0", 1), ("efficientnet_b0", 3)])
def test_memory_efficient_equal_gradients_stats_and_names(name, dims):
    plain = model(name, dims)
    lean = copy.deepcopy(plain)
    opt = torch.optim.SGD(lean.parameters(), lr=0.1)  # built before the swap: must still drive the model
    memory_efficient(lean)
    kinds = {type(m) for m in lean.modules()}
    assert LeanConvNormAct in kinds and kinds & set(LEAN_BLOCK.values())
    assert (MemoryEfficientSiLU in kinds) == ("mobilenetv3" not in name)  # SE activations (MobileNetV3: ReLU)
    plain_convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    for (n, a), (_, b) in zip(plain.named_modules(), lean.named_modules()):  # class swaps only, same structure
        if isinstance(b, LeanConvNormAct):  # the plain BN and activation the Function recognises
            assert type(b.bn) is type(a.bn) and type(b.act) is type(a.act) in {**ACTS, **NATIVE_ACT_NAMES}, n
        if isinstance(b, LeanBlockForward):  # the plain SE and project conv
            assert type(b.se) is SqueezeExcite and type(b.project.conv) in plain_convs, n
        assert type(b) is type(a) or type(b) in (LeanConvNormAct, MemoryEfficientSiLU, *LEAN_BLOCK.values()), n
    assert list(plain.state_dict()) == list(lean.state_dict())
    x = torch.randn(4, 3, *SIZE[dims])
    if dims == 2:
        plain, lean = plain.to(memory_format=torch.channels_last), lean.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y0, y1 = step(plain, x), step(lean, x)
    assert torch.equal(y0, y1)  # forward is bitwise the same
    assert_same_grads(lean, plain)  # measured: 0 contiguous, 1.2e-6 of the largest gradient channels_last
    for (n, b0), (_, b1) in zip(plain.named_buffers(), lean.named_buffers()):
        assert torch.equal(b0, b1), n  # running statistics updated exactly once, identically
    plain.eval(), lean.eval()  # eval / no-grad: the plain module paths
    with torch.no_grad():
        torch.testing.assert_close(lean(x), plain(x), atol=1e-6, rtol=1e-5)
    w = lean.stem.conv.weight.detach().clone()
    opt.step()
    assert not torch.equal(w, lean.stem.conv.weight)


def test_memory_efficient_stores_less():
    plain = model("efficientnet_b0")
    lean = memory_efficient(copy.deepcopy(plain))
    x = torch.randn(2, 3, 64, 64)
    a, b = saved_bytes(plain, x), saved_bytes(lean, x)
    assert b < 0.7 * a  # measured 0.62 on B0: the BN outputs and SE products are not stored


def test_memory_efficient_kinds_and_folding(graph_nodes):
    plain = model("efficientnet_b0")
    x = torch.randn(2, 3, 32, 32)
    bn_only = memory_efficient(copy.deepcopy(plain), se_gate=False, silu=False)
    nodes = graph_nodes(bn_only(x))
    assert "BNActFnBackward" in nodes and "GatedConvFnBackward" not in nodes
    assert not any(isinstance(m, (LeanBlockForward, MemoryEfficientSiLU)) for m in bn_only.modules())
    se_only = memory_efficient(copy.deepcopy(plain), bn_act=False, silu=False)
    nodes = graph_nodes(se_only(x))
    assert "GatedConvFnBackward" in nodes and "BNActFnBackward" not in nodes
    assert not any(isinstance(m, LeanConvNormAct) for m in se_only.modules())
    # the class-only result folds like the plain model (the old module replacement broke fuse_bn)
    lean = memory_efficient(copy.deepcopy(plain))
    step(lean, x)
    step(plain, x)  # the same running statistics on both
    lean.eval(), plain.eval()
    fused = fuse_bn(lean)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())  # every BN folded
    # and its BN surgery prunes it (the old BatchNormAct made prune raise a TypeError)
    small = memory_efficient(create_model("efficientnet_b0", num_classes=5, width_mult=0.25).train())
    result = prune(small, "bn", 0.25)
    assert result.params_after < result.params_before and result.model(x).shape == (2, 5)
    with pytest.raises(ValueError, match="kinds"):
        lean_layers(nn.Sequential(), 0, kinds=("bn_act", "gelu"))


def test_checkpoint_stages_equal_and_bn_updated_once():
    plain = model("efficientnet_b0")
    ck = checkpoint_stages(memory_efficient(copy.deepcopy(plain)), stages=[1, 2, 3])
    assert isinstance(ck.stages[1], CheckpointedSequential) and not isinstance(ck.stages[0], CheckpointedSequential)
    assert list(plain.state_dict()) == list(ck.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert saved_bytes(ck, x) < 0.6 * saved_bytes(plain, x)
    for mod in list(plain.modules()) + list(ck.modules()):  # saved_bytes ran a forward; reset the statistics
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
    y0, y1 = step(plain, x), step(ck, x)
    assert torch.equal(y0, y1)
    assert_same_grads(ck, plain)
    for (n, b0), (_, b1) in zip(plain.named_buffers(), ck.named_buffers()):
        assert torch.equal(b0, b1), n  # the recomputation did not update BN statistics a second time
    with pytest.raises(ValueError, match="stage index"):
        checkpoint_stages(ck, stages=[99])
    with pytest.raises(ValueError, match="stages"):
        checkpoint_stages(nn.Linear(2, 2))


def test_functions_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(SiLUFn.apply, (x,))
    w = torch.rand(3, dtype=torch.double, requires_grad=True)
    b = torch.randn(3, dtype=torch.double, requires_grad=True)
    for kind in (nn.SiLU, nn.ReLU, nn.Hardswish, nn.ReLU6):
        xs = (torch.randn(4, 3, 5, dtype=torch.double) * 2).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, ww, bb, k=kind: BNActFn.apply(a, ww, bb, None, None, 0.1, 1e-5, k),
                                        (xs, w, b))
    g = torch.rand(2, 3, 1, 1, dtype=torch.double, requires_grad=True)
    wc = torch.randn(4, 3, 1, 1, dtype=torch.double, requires_grad=True)
    bc = torch.randn(4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, gg, ww, bb: GatedConvFn.apply(a, gg, ww, bb, (1, 1), (0, 0), (1, 1), 1),
                                    (x, g, wc, bc))


def test_silu_module_and_bad_input():
    a = torch.randn(10, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    MemoryEfficientSiLU()(a).sum().backward()
    nn.SiLU()(b).sum().backward()
    assert torch.equal(a.grad, b.grad)
    with pytest.raises(ValueError, match="nn.Module"):
        memory_efficient("not a model")


# -- the size rule and the structure-preserving classes the Trainer applies --------------------------------------
def lean_inputs(m, x):
    """Element counts of the inputs the lean Functions would see: each LeanConvNormAct's BN input and each lean
    block's project input."""
    sizes = []
    hooks = [mod.conv.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel()))
             for mod in m.modules() if isinstance(mod, LeanConvNormAct)]
    m(x)
    for h in hooks:
        h.remove()
    return sorted(sizes)


@pytest.mark.parametrize("name,dims", [("efficientnet_b0", 2), ("tf_mobilenetv3_small_100", 2),
                                       ("tf_efficientnetv2_s", 2), ("efficientnet_b0", 1), ("efficientnet_b0", 3)])
def test_lean_layers_equal_on_both_sides_of_the_threshold(name, dims, graph_nodes):
    plain = model(name, dims)
    x = torch.randn(4, 3, *SIZE[dims])
    if dims == 2:
        plain = plain.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    lean = copy.deepcopy(plain)
    opt = torch.optim.SGD(lean.parameters(), lr=0.1)  # built before the swap: the same Parameter objects
    kinds = ("bn_act", "se_gate")  # the kinds with a size rule (an SE node rounds its MLP differently)
    n = lean_layers(lean, 0, kinds=kinds)
    sizes = lean_inputs(lean, x)
    threshold = sizes[len(sizes) // 2]  # half the layers on each side
    lean_layers(lean, threshold, kinds=kinds)
    assert n > 0 and all(m.min_numel == threshold for m in lean.modules()
                         if isinstance(m, (LeanConvNormAct, LeanBlockForward)))
    for mod in lean.modules():  # only classes changed: plain submodules, state dict and Parameters kept
        if isinstance(mod, LeanConvNormAct):
            assert type(mod.bn) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
            assert type(mod.act) in {**ACTS, **NATIVE_ACT_NAMES}
    assert list(plain.state_dict()) == list(lean.state_dict())
    for mod in list(plain.modules()) + list(lean.modules()):  # lean_inputs ran a forward
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
    y0, y1 = step(plain, x), step(lean, x)
    nodes = graph_nodes(y1)
    n_lean, n_plain = nodes.count("BNActFnBackward"), len([k for k in nodes if k.startswith("NativeBatchNorm")])
    assert n_lean > 0 and n_plain > 0  # both paths ran in one model
    assert torch.equal(y0, y1)
    assert_same_grads(lean, plain)
    for (k, b0), (_, b1) in zip(plain.named_buffers(), lean.named_buffers()):
        assert torch.equal(b0, b1), k
    w = lean.stem.conv.weight.detach().clone()
    opt.step()
    assert not torch.equal(w, lean.stem.conv.weight)


def test_each_path_by_size(graph_nodes):
    torch.manual_seed(0)
    cna = ConvNormAct(8, 16, 3, act="swish", opts=LayerOpts(dims=2)).train()
    block = MBConv(16, 16, 32, kernel=3, se_chs=4, opts=LayerOpts(dims=2)).train()
    lean_layers(cna, 16 * 8 * 8)
    lean_layers(block, 32 * 8 * 8)
    assert type(cna) is LeanConvNormAct and type(block) is LeanMBConv and isinstance(block, MBConv)
    small, large = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 8, 8)
    assert type(cna(large).grad_fn).__name__ == "BNActFnBackward"
    assert type(cna(small).grad_fn).__name__ != "BNActFnBackward"
    assert "GatedConvFnBackward" in graph_nodes(block(torch.randn(1, 16, 8, 8)))
    assert "GatedConvFnBackward" not in graph_nodes(block(torch.randn(1, 16, 6, 6)))
    with torch.no_grad():  # no autograd: always the plain ops
        assert cna(large).grad_fn is None
    cna.eval()  # eval (frozen BN): plain, running statistics untouched
    stats = cna.bn.running_mean.clone()
    assert type(cna(large).grad_fn).__name__ != "BNActFnBackward"
    assert torch.equal(stats, cna.bn.running_mean)
    cna.train()
    seen = []
    h = cna.act.register_forward_hook(lambda *a: seen.append(1))  # a hooked activation must be called
    assert type(cna(large).grad_fn).__name__ != "BNActFnBackward" and seen
    h.remove()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(cna(large).grad_fn).__name__ != "BNActFnBackward"
    scripted = torch.jit.script(cna.eval())  # TorchScript compiles the plain forward
    torch.testing.assert_close(scripted(large), cna(large))


def test_se_node_path(graph_nodes):
    """`lean_layers` makes every SqueezeExcite a LeanSqueezeExcite (kind "se", on any size): one autograd node in a
    training step, equal to the plain module; the plain forward in eval, no-grad, with a hook on the SE, with the
    kind left out, and inside a lean block's gated project on large maps."""
    torch.manual_seed(0)
    block = MBConv(16, 16, 32, kernel=3, se_chs=4, opts=LayerOpts(dims=2)).train()
    plain = copy.deepcopy(block)
    assert lean_layers(block, 32 * 8 * 8, kinds=("se",)) == 1
    assert type(block.se) is LeanSqueezeExcite and isinstance(block.se, SqueezeExcite) and type(block) is MBConv
    x = torch.randn(2, 16, 6, 6)
    torch.manual_seed(1)
    y0 = plain(x)
    torch.manual_seed(1)
    y1 = block(x)
    nodes = graph_nodes(y1)
    assert "SqueezeExciteFnBackward" in nodes and "SigmoidBackward0" not in nodes
    torch.testing.assert_close(y1, y0)
    y0.square().sum().backward()
    y1.square().sum().backward()
    assert_same_grads(block, plain)
    se, mid = block.se, torch.randn(2, 32, 6, 6, requires_grad=True)
    assert "SqueezeExciteFnBackward" in graph_nodes(se(mid))
    with torch.no_grad():
        assert se(mid).grad_fn is None
    seen = []
    h = se.register_forward_hook(lambda *a: seen.append(1))
    assert "SqueezeExciteFnBackward" not in graph_nodes(se(mid)) and seen
    h.remove()
    se.eval()
    assert "SqueezeExciteFnBackward" not in graph_nodes(se(mid))
    se.train()
    lean_layers(block, 0)  # every kind, every size: the SE is fused into the project conv instead
    nodes = graph_nodes(block(torch.randn(2, 16, 8, 8)))
    assert "GatedConvFnBackward" in nodes and "SqueezeExciteFnBackward" not in nodes
    assert lean_layers(plain, 0, kinds=("bn_act",)) > 0 and type(plain.se) is SqueezeExcite


def test_lean_layers_keep_the_model_ready_for_folding_and_surgery():
    plain = model("efficientnet_b0").eval()
    lean = copy.deepcopy(plain)
    lean_layers(lean, 0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fuse_bn(lean)(x), plain(x), atol=1e-4, rtol=1e-4)
    # surgery that replaces the BN or the project conv simply takes the plain path: same result as the plain model
    lean.train(), plain.train()
    for m in (lean, plain):
        blk = m.stages[1][0]
        blk.project.conv = nn.Conv2d(blk.project.conv.in_channels, blk.project.conv.out_channels, 1, bias=False)
        blk.expand.bn = nn.BatchNorm2d(blk.expand.bn.num_features)
        torch.manual_seed(1)
        blk.project.conv.reset_parameters()
    torch.testing.assert_close(lean(x), plain(x))
    assert lean_layers(lean, None) == 0  # back to the plain classes
    assert not any(isinstance(m, (LeanConvNormAct, LeanBlockForward, LeanSqueezeExcite)) for m in lean.modules())
    assert type(lean.stages[1][0]) is MBConv


def test_memory_efficient_min_numel(graph_nodes):
    plain = model("efficientnet_b0")
    lean = memory_efficient(copy.deepcopy(plain), min_numel=10**9)  # nothing is that large: plain ops
    x = torch.randn(2, 3, 32, 32)
    y0, y1 = step(plain, x), step(lean, x)
    nodes = graph_nodes(y1)
    assert "BNActFnBackward" not in nodes and "GatedConvFnBackward" not in nodes
    assert torch.equal(y0, y1)
    assert_same_grads(lean, plain)
    assert "BNActFnBackward" in graph_nodes(memory_efficient(copy.deepcopy(plain))(x))  # default 0: always


def test_bad_min_numel_and_mode():
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(ValueError, match="min_numel"):
            lean_layers(nn.Sequential(), bad)
        with pytest.raises(ValueError, match="min_numel"):
            memory_efficient(nn.Sequential(), min_numel=bad)
    with pytest.raises(ValueError, match="nn.Module"):
        lean_layers("not a model")
    for bad in ("yes", None, ["auto"]):
        with pytest.raises(ValueError, match="memory_lean"):
            TrainConfig(memory_lean=bad)


def image_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    return TensorDataset(torch.randn(n, 3, 16, 16, generator=g) + y.float()[:, None, None, None] / 4, y)


def test_trainer_applies_lean_layers_by_default_and_resumes_exactly(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def trainer(mode, out=None, max_steps=0, resume=False):
            torch.manual_seed(0)
            net = create_model("efficientnet_b0", num_classes=4, width_mult=0.25, drop_rate=0.0)
            cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, seed=3, deterministic=True, progress="none",
                              tune_threads=False, memory_lean=mode, out_dir=out, resume=resume, max_steps=max_steps)
            return Trainer(net, image_data(32, 0), image_data(16, 1), cfg)

        auto, off = trainer("auto").model, trainer("off").model
        kinds = {type(m) for m in auto.modules()}
        assert LeanConvNormAct in kinds and LeanMBConv in kinds
        assert all(m.min_numel == LEAN_MIN_NUMEL for m in auto.modules() if isinstance(m, LeanConvNormAct))
        assert not any(isinstance(m, (LeanConvNormAct, LeanBlockForward)) for m in off.modules())
        assert list(auto.state_dict()) == list(off.state_dict())
        # every layer lean ("on"): a run stopped after its first epoch and resumed ends bit-identical to a
        # straight run
        straight = trainer("on", str(tmp_path / "a"))
        straight.fit()
        trainer("on", str(tmp_path / "b"), max_steps=4).fit()
        resumed = trainer("on", str(tmp_path / "b"), resume=True)
        resumed.fit()
        for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
            assert torch.equal(a, b), k
    finally:
        torch.set_num_threads(n)
