"""Dimension-generic building blocks; they know nothing of specs, training or analysis."""

from .blocks import Block, ConvBlock, DepthwiseSeparable, DropPath, FusedMBConv, MBConv, build_step, drop_path
from .conv import CONV, NORM, ConvNormAct, LayerOpts, SamePad, StaticPad, create_act, init_weights_tf, tf_same_pads
from .fuse import fold_conv_bn, fuse_bn, strip_training
from .layout import BLOCK_TYPES, Step, block_layout, se_channels, se_site, se_step, step_names
from .se import SqueezeExcite

__all__ = [
    "Block", "block_layout", "BLOCK_TYPES", "build_step", "CONV", "ConvBlock", "ConvNormAct", "create_act",
    "DepthwiseSeparable", "drop_path", "DropPath", "fold_conv_bn", "fuse_bn", "FusedMBConv", "init_weights_tf",
    "LayerOpts", "MBConv", "NORM", "SamePad", "se_channels", "se_site", "se_step", "SqueezeExcite", "StaticPad",
    "Step", "step_names",
    "strip_training", "tf_same_pads",
]
