"""The one definition of each block type's layout: the modules, the plan and the cost all follow it."""

import pytest
import torch

from mbconv import create_model
from mbconv.cost import spec_cost
from mbconv.layers import FusedMBConv, MBConv, block_layout, se_channels, se_site, step_names
from mbconv.spec import plan_blocks, plan_layout


def test_orders_for_each_block_type_and_se_position():
    names = lambda *a, **k: step_names(block_layout(*a, **k))  # noqa: E731
    assert names("ir", 16, 24, 64, se_chs=4) == ("expand", "depthwise", "se", "project")
    assert names("ir", 16, 24, 64, se_chs=4, se_position="before_dw") == ("expand", "se", "depthwise", "project")
    assert names("ir", 16, 24, 16, expand=False, se_chs=4) == ("depthwise", "se", "project")
    assert names("ds", 16, 24, se_chs=4, se_position="before_dw") == ("se", "depthwise", "project")
    assert names("er", 16, 24, 64, se_chs=4) == ("expand", "se", "project")
    assert names("er", 16, 24, 64, se_chs=4, se_position="before_dw") == ("se", "expand", "project")
    assert names("cn", 16, 24) == ("conv",)
    assert names("ir", 16, 24, 64) == ("expand", "depthwise", "project")


def test_fused_se_before_the_spatial_conv_gates_the_block_input():
    fused = block_layout("er", 16, 24, 64, se_chs=4, se_position="before_dw")
    assert fused[0].kind == "se" and fused[0].in_chs == 16 and fused[0].gates == "in"
    mb = block_layout("ir", 16, 24, 64, se_chs=4, se_position="before_dw")
    assert mb[1].kind == "se" and mb[1].in_chs == 64 and mb[1].gates == "mid"
    assert se_channels("er", 16, 64, "before_dw") == 16 and se_channels("er", 16, 64, "after_dw") == 64
    assert se_site("ir", "before_dw") == "mid"
    dw = block_layout("ir", 16, 24, 64)[1]
    assert dw.is_depthwise and dw.groups == 64


@pytest.mark.parametrize("kw,match", [
    (dict(block="xx", in_chs=8, out_chs=8), "block type"),
    (dict(block="ir", in_chs=8, out_chs=8, se_position="middle"), "se_position"),
    (dict(block="ds", in_chs=8, out_chs=8, mid_chs=16), "mid_chs"),
])
def test_bad_layouts_name_the_problem(kw, match):
    with pytest.raises(ValueError, match=match):
        block_layout(**kw)


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnetv2_s", "mobilenetv3_large_100", "mobilenetv2_100",
                                  "efficientnet_lite0"])
@pytest.mark.parametrize("pos", ["after_dw", "before_dw"])
def test_modules_plan_and_cost_share_one_layout(name, pos):
    model = create_model(name, se_position=pos)
    spec = model.spec
    plans = plan_blocks(spec)
    assert [b.layout for b in model.blocks()] == [plan_layout(p, spec) for p in plans]
    # each conv step is a submodule of that name with the layout's geometry
    for b in model.blocks():
        for s in b.layout:
            mod = getattr(b, s.name)
            if s.kind == "conv":
                assert (mod.conv.in_channels, mod.conv.out_channels, mod.conv.groups) == (s.in_chs, s.out_chs,
                                                                                         s.groups)
            else:
                assert mod.conv_reduce.in_channels == s.in_chs and mod.conv_reduce.out_channels == s.rd_chs
    # the analytic cost lists the block's convs in the module's forward order
    cost_names = [layer.name for layer in spec_cost(spec).layers if layer.name.startswith("stages.")]
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: order.append(n)) for n, m in model.named_modules()
             if n.startswith("stages.") and isinstance(m, torch.nn.modules.conv._ConvNd)]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert [n.removesuffix(".conv") for n in order] == cost_names


def test_forward_runs_the_steps_in_order():
    torch.manual_seed(0)
    for block in (MBConv(8, 8, 16, se_chs=2, se_position="before_dw"), FusedMBConv(8, 8, 16, se_chs=2,
                                                                                 se_position="before_dw")):
        block.eval()
        x = torch.randn(2, 8, 6, 6)
        y = x
        for name in block.steps:
            y = getattr(block, name)(y)
        torch.testing.assert_close(block(x), y + x)
