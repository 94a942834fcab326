"""Memory-lean training: the same gradients, running statistics and names as the plain model, less stored."""

import copy

import pytest
import torch
from torch import nn

from mbconv import create_model
from mbconv.layers.memory import (
    BatchNormAct,
    BNActFn,
    CheckpointedSequential,
    DeferredSE,
    GatedConvFn,
    MemoryEfficientSiLU,
    SiLUFn,
    checkpoint_stages,
    memory_efficient,
)

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
    assert BatchNormAct in kinds and DeferredSE in kinds
    assert any(k.__name__ == f"GatedConv{dims}d" for k in kinds)
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
    assert b < 0.7 * a  # measured ~0.63 on B0: the BN outputs and SE products are not stored


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
    with pytest.raises(ValueError, match="BatchNormAct supports"):
        BatchNormAct(nn.BatchNorm2d(3), nn.GELU())
