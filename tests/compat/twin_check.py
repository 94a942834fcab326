"""Helpers of the weight-import tests: random BN statistics, and the output comparison of two networks."""

from __future__ import annotations

import torch
from torch import nn

TOL = 1e-4  # max abs difference of eval logits and features


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine params and running stats (and conv/linear biases), so that a BN mapped to the wrong layer,
    a wrong eps or unused running stats change the output. Ranges keep a random-init net's activations O(1)
    (with gamma ~ U(0.5, 1.5) V2-S features reach 1e5 and an absolute tolerance would mean nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.3, 0.8, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.05, 1.5, generator=g)  # small variances make eps errors visible
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0.0, 0.1, generator=g)
    return model


@torch.no_grad()
def compare(ours: nn.Module, their_features, their_logits, x: torch.Tensor) -> tuple[float, float, float]:
    """(max |diff| of logits, max |diff| of the feature maps before pooling, max |their feature|)."""
    fa, la = their_features(x), their_logits(x)
    fb = ours.forward_features(x)
    lb = ours.forward_head(fb)
    return (la - lb).abs().max().item(), (fa - fb).abs().max().item(), fa.abs().max().item()


def assert_same_function(ours: nn.Module, their_features, their_logits, x: torch.Tensor, what: str) -> None:
    d_logits, d_feat, scale = compare(ours.eval(), their_features, their_logits, x)
    assert 1e-2 < scale < 1e3, f"{what}: degenerate activations ({scale}); the comparison would be weak"
    assert d_logits <= TOL and d_feat <= TOL, f"{what}: logits differ by {d_logits}, features by {d_feat}"
