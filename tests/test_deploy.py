"""BN folding keeps outputs."""

import pytest
import torch

from mbconv import create_model
from mbconv.deploy import fuse_bn


@pytest.mark.parametrize("name,dims", [("efficientnet_b0", 2), ("mobilenetv3_small_100", 2), ("tf_efficientnetv2_s", 2),
                                       ("efficientnet_b0", 1), ("efficientnet_b0", 3)])
def test_fuse_bn_equal_outputs(name, dims):
    torch.manual_seed(0)
    m = create_model(name, num_classes=7, dims=dims).eval()
    for mod in m.modules():  # non-trivial running statistics, so a wrong fold would show
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.0)
            mod.bias.data.uniform_(-0.2, 0.2)
    size = {1: (40,), 2: (48, 48), 3: (16, 16, 16)}[dims]
    x = torch.randn(2, 3, *size)
    f = fuse_bn(m)
    assert not any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in f.modules())
    assert any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in m.modules())  # copy, not in place
    torch.testing.assert_close(f(x), m(x), atol=1e-4, rtol=1e-4)
