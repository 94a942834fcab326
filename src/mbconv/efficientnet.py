"""EfficientNet's published base: the B0 block table, the official B-series (width, depth, resolution, dropout)
triples and the one B0 spec that every EfficientNet family here is scaled from.

Both zoos build on it: `mbconv.zoo` (the 2-D B0-B8/L2, tf_ variants) and `mbconv.zoo_nd` (the 1-D and 3-D
families, which reuse the triples and, in 3-D, B0's exact block table).
"""

from __future__ import annotations

from .spec import NetSpec, parse_arch

__all__ = ["EFFICIENTNET_B0_BLOCKS", "EFFICIENTNET_PARAMS", "efficientnet_b0_spec"]

# Tan & Le 2019 / tensorflow/tpu efficientnet_builder.efficientnet_params: width, depth, resolution, dropout.
EFFICIENTNET_PARAMS: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2), "b1": (1.0, 1.1, 240, 0.2), "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3), "b4": (1.4, 1.8, 380, 0.4), "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5), "b7": (2.0, 3.1, 600, 0.5), "b8": (2.2, 3.6, 672, 0.5),
    "l2": (4.3, 5.3, 800, 0.5),
}

# The original TF block strings of EfficientNet-B0 (tensorflow/tpu _DEFAULT_BLOCKS_ARGS).
EFFICIENTNET_B0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25", "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25", "r3_k5_s11_e6_i80_o112_se0.25", "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]


def efficientnet_b0_spec() -> NetSpec:
    """The one B0 spec from which the whole B-series (and any phi) is scaled."""
    return NetSpec(stages=parse_arch([[b] for b in EFFICIENTNET_B0_BLOCKS]), name="efficientnet_b0",
                   stem_chs=32, head_chs=1280, act="swish", se_base="in", drop_rate=0.2, resolution=224)
