"""1-D and 3-D model families: EfficientNet-style nets for signals and volumes, plus their plain-CNN baselines.

In mbconv the dimension is one field of the spec (`NetSpec.dims`), so every model here is built, costed,
trained, analysed and exported by the same code as the 2-D zoo. `ND_MODELS` maps the names below to their spec
factories; `mbconv.zoo` registers them (so `create_model`, `get_spec` and `list_models` see them):

=============================== ==== ============ ===============================================================
name                            dims default size what it is
=============================== ==== ============ ===============================================================
``efficientnet1d_b0`` ... ``b7`` 1    40 ... 107   compact 1-D base (B0's first four stages, k=5, stride-1 stem),
                                                   scaled by the official (width, depth, resolution) triples
``efficientnet3d_b0`` ... ``b7`` 3    48 ... 129   B0's exact block table with ``dims=3`` (MONAI-style 3-D B0),
                                                   scaled by the official triples; resolution = r_2d * 48 / 224
``mbconv1d_se4``                1    40           the 4-block 1-D MBConv-SE net of ``benchmarks/accuracy.py``
``cnn1d_plain``                 1    40           plain 1-D CNN baseline (conv-BN-ReLU, no expansion/DW/SE)
``mbconv3d_small``              3    16           small 3-D MBConv-SE net for 8^3-32^3 volumes
``cnn3d_plain``                 3    16           plain 3-D CNN baseline of the same depth layout
=============================== ==== ============ ===============================================================

Design notes (why, briefly):

* 1-D base. Signals such as MNIST-1D have 40 samples; B0's stride-2 stem and five downsamplings would leave two
  positions, so the 1-D base keeps B0's first four stages (channels 16/24/40/80, t = 1/6/6/6, repeats 1/2/2/3,
  SE 0.25) with a stride-1 stem: total stride 8. A 1-D depthwise kernel of 5 costs 5 MACs per position (a 2-D 5x5
  costs 25), so all kernels are 5. The nets are fully convolutional with global pooling: any length works (the
  tests cost them from 40 to 16k samples); ``resolution`` is only the default length.
* ``depth_rounding='round'`` for the small 1-D base: TF's ``ceil`` cannot shrink stages of 1-3 repeats at negative
  phi (ceil(0.69 * 3) = 3) and doubles a 1-repeat stage at phi = 1, so the phi = -2..2 family would not be a
  smooth ladder. The 3-D family keeps B0's TF rules exactly.
* The plain CNNs are specs too (``cn`` blocks, ``head_type='none'``), so their cost is exact and their training
  uses the same trainer: the comparison differs only in the blocks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from .efficientnet import EFFICIENTNET_PARAMS, efficientnet_b0_spec
from .scaling import compound_scale, scale_spec
from .spec import NetSpec, parse_arch

__all__ = [
    "EFFICIENTNET1D_B0_BLOCKS", "EFFICIENTNET1D_BASE_LENGTH", "EFFICIENTNET3D_BASE_SIZE", "MBCONV1D_SE4_ARCH",
    "B_VARIANTS", "efficientnet1d_base_spec", "efficientnet1d_spec", "efficientnet3d_base_spec",
    "efficientnet3d_spec", "mbconv1d_se4_spec", "plain_cnn_spec", "cnn1d_plain_spec", "mbconv3d_small_spec",
    "cnn3d_plain_spec", "compound_family", "ND_MODELS",
]

B_VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")

# B0's first four stages (16/24/40/80 channels, t = 1/6/6/6, repeats 1/2/2/3, SE 0.25), all kernels 5.
EFFICIENTNET1D_B0_BLOCKS = [
    "ds_r1_k5_s1_c16_se0.25", "ir_r2_k5_s2_e6_c24_se0.25", "ir_r2_k5_s2_e6_c40_se0.25", "ir_r3_k5_s2_e6_c80_se0.25",
]
EFFICIENTNET1D_BASE_LENGTH = 40  # MNIST-1D's length; B7's default is 40 * 600 / 224 = 107
EFFICIENTNET3D_BASE_SIZE = 48  # B0 at 48^3 ... B7 at 129^3 (the official 224 ... 600 px ratios)

# The MNIST-1D net of benchmarks/accuracy.py (99.4 % after 20 epochs there).
MBCONV1D_SE4_ARCH = ("ir_r1_k5_s1_e4_c32_se0.25;ir_r1_k5_s2_e4_c48_se0.25;ir_r1_k5_s1_e4_c48_se0.25;"
                     "ir_r1_k5_s2_e4_c64_se0.25")


def _scaled_res(base: int, variant: str) -> int:
    """The variant's default size: the base size times the official resolution ratio r / 224."""
    return max(1, round(base * EFFICIENTNET_PARAMS[variant][2] / 224))


def efficientnet1d_base_spec(num_classes: int = 10, in_chans: int = 1) -> NetSpec:
    """The 1-D base (phi = 0, = ``efficientnet1d_b0``) from which the 1-D family is compound-scaled."""
    return NetSpec(stages=parse_arch([[b] for b in EFFICIENTNET1D_B0_BLOCKS]), name="efficientnet1d_b0", dims=1,
                   in_chans=in_chans, num_classes=num_classes, stem_chs=32, stem_kernel=5, stem_stride=1,
                   head_chs=320, act="swish", se_base="in", drop_rate=0.1, resolution=EFFICIENTNET1D_BASE_LENGTH,
                   depth_rounding="round")


def efficientnet1d_spec(variant: str) -> NetSpec:
    """``efficientnet1d_<variant>``: the 1-D base scaled by the official B-series (width, depth, res) triple."""
    if variant not in B_VARIANTS:
        raise ValueError(f"unknown 1-D variant {variant!r}; expected one of {B_VARIANTS}")
    w, d, _, drop = EFFICIENTNET_PARAMS[variant]
    # Half the official dropout (0.1 for B0 = the base's): small 10-class signal nets, not 1000-class ImageNet.
    spec = scale_spec(efficientnet1d_base_spec(), w, d, _scaled_res(EFFICIENTNET1D_BASE_LENGTH, variant),
                      drop_rate=drop / 2)
    return dataclasses.replace(spec, name=f"efficientnet1d_{variant}")


def efficientnet3d_base_spec(num_classes: int = 10, in_chans: int = 1) -> NetSpec:
    """B0's exact block table and TF scaling rules with ``dims=3`` (as MONAI's EfficientNetBN(spatial_dims=3))."""
    return dataclasses.replace(efficientnet_b0_spec(), name="efficientnet3d_b0", dims=3, in_chans=in_chans,
                               num_classes=num_classes, resolution=EFFICIENTNET3D_BASE_SIZE)


def efficientnet3d_spec(variant: str) -> NetSpec:
    """``efficientnet3d_<variant>``: the 3-D B0 scaled by the official B-series triple."""
    if variant not in B_VARIANTS:
        raise ValueError(f"unknown 3-D variant {variant!r}; expected one of {B_VARIANTS}")
    w, d, _, drop = EFFICIENTNET_PARAMS[variant]
    spec = scale_spec(efficientnet3d_base_spec(), w, d, _scaled_res(EFFICIENTNET3D_BASE_SIZE, variant),
                      drop_rate=drop)
    return dataclasses.replace(spec, name=f"efficientnet3d_{variant}")


def mbconv1d_se4_spec(num_classes: int = 10, in_chans: int = 1) -> NetSpec:
    """The 4-block 1-D MBConv-SE net of ``benchmarks/accuracy.py`` (98,130 params, 1.54 M MACs at length 40)."""
    return NetSpec(stages=parse_arch(MBCONV1D_SE4_ARCH), name="mbconv1d_se4", dims=1, in_chans=in_chans,
                   num_classes=num_classes, stem_chs=32, stem_stride=1, head_chs=256, resolution=40, drop_rate=0.1)


def plain_cnn_spec(dims: int, widths: Sequence[int], strides: Sequence[int], kernel: int = 3, stem_chs: int = 16,
                   stem_kernel: int | None = None, num_classes: int = 10, in_chans: int = 1, resolution: int = 40,
                   act: str = "relu", name: str = "plain_cnn", drop_rate: float = 0.1) -> NetSpec:
    """A plain CNN as a spec: stem, then one conv-BN-act layer (``cn`` block) per entry of `widths` with the
    matching stride, global average pooling and a linear classifier (no expansion, depthwise, SE or skips)."""
    if len(widths) != len(strides) or not widths:
        raise ValueError(f"invalid widths={list(widths)!r} / strides={list(strides)!r}: need equal, non-empty "
                         "lists (one stride per conv layer)")
    stages = [[f"cn_r1_k{kernel}_s{s}_c{w}"] for w, s in zip(widths, strides)]
    return NetSpec(stages=parse_arch(stages), name=name, dims=dims, in_chans=in_chans, num_classes=num_classes,
                   stem_chs=stem_chs, stem_kernel=stem_kernel or kernel, stem_stride=1, head_type="none",
                   head_chs=0, act=act, drop_rate=drop_rate, resolution=resolution)


def cnn1d_plain_spec(width: float = 1.0, num_classes: int = 10, in_chans: int = 1) -> NetSpec:
    """The plain 1-D CNN baseline for MNIST-1D: k=5 convs 64-64-128-128-128 (strides 1,1,2,1,2), ReLU, BN.

    `width` scales every layer (rounded to multiples of 8) for accuracy-vs-cost sweeps.
    """
    def c(n: int) -> int:
        return max(8, int(round(n * width / 8)) * 8)

    spec = plain_cnn_spec(1, [c(64), c(128), c(128), c(128)], [1, 2, 1, 2], kernel=5, stem_chs=c(64),
                          num_classes=num_classes, in_chans=in_chans, resolution=40, name="cnn1d_plain")
    return spec if width == 1.0 else dataclasses.replace(spec, name=f"cnn1d_plain_w{width:g}")


def mbconv3d_small_spec(num_classes: int = 10, in_chans: int = 1) -> NetSpec:
    """A small 3-D MBConv-SE net for 8^3-32^3 volumes: stride-1 stem, three stages (total stride 4)."""
    return NetSpec(stages=parse_arch("ds_r1_k3_s1_c16_se0.25;ir_r2_k3_s2_e4_c24_se0.25;ir_r2_k3_s2_e4_c40_se0.25"),
                   name="mbconv3d_small", dims=3, in_chans=in_chans, num_classes=num_classes, stem_chs=16,
                   stem_stride=1, head_chs=128, resolution=16, drop_rate=0.1)


def cnn3d_plain_spec(width: float = 1.0, num_classes: int = 10, in_chans: int = 1) -> NetSpec:
    """The plain 3-D CNN baseline: 3x3x3 convs 32 / 64-64 / 128-128 (total stride 4), ReLU, BN."""
    def c(n: int) -> int:
        return max(8, int(round(n * width / 8)) * 8)

    spec = plain_cnn_spec(3, [c(32), c(64), c(64), c(128), c(128)], [1, 2, 1, 2, 1], kernel=3, stem_chs=c(32),
                          num_classes=num_classes, in_chans=in_chans, resolution=16, name="cnn3d_plain")
    return spec if width == 1.0 else dataclasses.replace(spec, name=f"cnn3d_plain_w{width:g}")


def compound_family(base: NetSpec, phis: Sequence[float] = (-2, -1, 0, 1, 2)) -> list[NetSpec]:
    """``compound_scale(base, phi)`` for each phi (alpha, beta, gamma = 1.2, 1.1, 1.15): a cost/accuracy ladder."""
    return [compound_scale(base, float(p)) for p in phis]


def _models() -> dict[str, Callable[[], NetSpec]]:
    reg: dict[str, Callable[[], NetSpec]] = {}
    for v in B_VARIANTS:
        reg[f"efficientnet1d_{v}"] = lambda v=v: efficientnet1d_spec(v)
        reg[f"efficientnet3d_{v}"] = lambda v=v: efficientnet3d_spec(v)
    reg["mbconv1d_se4"] = mbconv1d_se4_spec
    reg["cnn1d_plain"] = cnn1d_plain_spec
    reg["mbconv3d_small"] = mbconv3d_small_spec
    reg["cnn3d_plain"] = cnn3d_plain_spec
    return reg


#: name -> spec factory of every 1-D/3-D model; `mbconv.zoo` adds them to its registry.
ND_MODELS = _models()
