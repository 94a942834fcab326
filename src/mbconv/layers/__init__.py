"""Dimension-generic building blocks; they know nothing of specs, training or analysis."""

from .blocks import ConvBlock, DepthwiseSeparable, DropPath, FusedMBConv, MBConv, drop_path
from .conv import CONV, NORM, ConvNormAct, LayerOpts, SamePad, create_act, init_weights_tf, tf_same_pads
from .se import SqueezeExcite

__all__ = [
    "CONV", "NORM", "ConvBlock", "ConvNormAct", "DepthwiseSeparable", "DropPath", "FusedMBConv", "LayerOpts",
    "MBConv", "SamePad", "SqueezeExcite", "create_act", "drop_path", "init_weights_tf", "tf_same_pads",
]
