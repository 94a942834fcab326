"""Evaluation configs of pretrained weights: input size, resize before the centre crop, interpolation, mean/std.

Values are timm's `pretrained_cfg` (timm 1.0.31) for every zoo name timm knows (its default tag, plus the
AutoAugment tags `tf_efficientnet_b*.aa_in1k` that efficientnet_pytorch's B weights are), and torchvision's
`ImageClassification` transforms of each model's DEFAULT weights (torchvision 0.29), and TF-slim's evaluation
preprocessing for Keras' MobileNetV2. They are copied here so the library needs neither package;
tests/compat/test_pretrained.py checks every timm and torchvision row against the installed packages. `resize` is
the shorter side before the centre crop: timm's floor(input_size / crop_pct), or
torchvision's `resize_size`.

`resize_crop` + `normalize` (= `eval_transform`) reproduce the transform on (N, C, H, W) tensors in [0, 1] with
torch's antialiased interpolation (timm and torchvision resize PIL images; the two differ by rounding only).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PretrainedConfig", "eval_transform", "get_pretrained_config",
           "list_pretrained_configs", "normalize", "resize_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # TF's inception-style scaling to [-1, 1]
CROP_MODES = ("center", "squash")
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class PretrainedConfig:
    """How images are prepared for a pretrained network.

    `key`: 'timm:ARCH.TAG' or 'torchvision:NAME.WEIGHTS'; `input_size`: the square crop fed to the network;
    `resize`: the shorter side is resized to this before the centre crop ('center'), or both sides ('squash');
    `interpolation`: 'bilinear' or 'bicubic'; `mean`/`std`: per-channel normalisation of [0, 1] pixels.
    """

    key: str
    input_size: int
    resize: int
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or not isinstance(self.resize, int) or not (
                1 <= self.input_size <= self.resize):
            raise ValueError(f"invalid input_size={self.input_size!r}, resize={self.resize!r}: need integers "
                             "1 <= input_size <= resize")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"invalid crop_mode={self.crop_mode!r}: expected one of {CROP_MODES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"invalid interpolation={self.interpolation!r}: expected one of {INTERPOLATIONS}")
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise ValueError(f"invalid mean={self.mean!r} / std={self.std!r}: same length, std > 0")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def crop_pct(self) -> float:
        """The fraction of the resized image kept by the crop (timm's crop_pct)."""
        return self.input_size / self.resize

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in a converted run's meta)."""
        d = asdict(self)
        d.update(mean=list(self.mean), std=list(self.std))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainedConfig:
        known = {"key", "input_size", "resize", "crop_mode", "interpolation", "mean", "std"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown pretrained config keys {unknown}; known: {sorted(known)}")
        return cls(**{**d, "mean": tuple(d.get("mean", IMAGENET_MEAN)), "std": tuple(d.get("std", IMAGENET_STD))})


def _row(key: str, size: int, resize: int, mode: str, interp: str, mean: tuple = IMAGENET_MEAN,
         std: tuple = IMAGENET_STD) -> PretrainedConfig:
    return PretrainedConfig(key, size, resize, mode, interp, mean, std)


# Default tag first for each timm architecture.
_CONFIGS = (
    _row("timm:efficientnet_b0.ra_in1k", 224, 256, "center", "bicubic"),
    _row("timm:efficientnet_b1.ra4_e3600_r240_in1k", 240, 266, "center", "bicubic", *HALF),
    _row("timm:efficientnet_b2.ra_in1k", 256, 292, "center", "bicubic"),
    _row("timm:efficientnet_b3.ra2_in1k", 288, 329, "center", "bicubic"),
    _row("timm:efficientnet_b4.ra2_in1k", 320, 365, "center", "bicubic"),
    _row("timm:efficientnet_b5.sw_in12k_ft_in1k", 448, 448, "squash", "bicubic"),
    _row("timm:efficientnet_b6.untrained", 528, 560, "center", "bicubic"),
    _row("timm:efficientnet_b7.untrained", 600, 632, "center", "bicubic"),
    _row("timm:efficientnet_b8.untrained", 672, 704, "center", "bicubic"),
    _row("timm:efficientnet_l2.untrained", 800, 832, "center", "bicubic"),
    _row("timm:efficientnet_lite0.ra_in1k", 224, 256, "center", "bicubic"),
    _row("timm:efficientnet_lite1.untrained", 240, 272, "center", "bicubic"),
    _row("timm:efficientnet_lite2.untrained", 260, 292, "center", "bicubic"),
    _row("timm:efficientnet_lite3.untrained", 300, 331, "center", "bicubic"),
    _row("timm:efficientnet_lite4.untrained", 380, 412, "center", "bicubic"),
    _row("timm:efficientnetv2_l.untrained", 384, 384, "center", "bicubic"),
    _row("timm:efficientnetv2_m.untrained", 320, 320, "center", "bicubic"),
    _row("timm:efficientnetv2_s.untrained", 288, 288, "center", "bicubic"),
    _row("timm:mobilenetv2_050.lamb_in1k", 224, 256, "center", "bicubic"),
    _row("timm:mobilenetv2_100.ra_in1k", 224, 256, "center", "bicubic"),
    _row("timm:mobilenetv2_140.ra_in1k", 224, 256, "center", "bicubic"),
    _row("timm:mobilenetv3_large_100.ra_in1k", 224, 256, "center", "bicubic"),
    _row("timm:mobilenetv3_small_100.lamb_in1k", 224, 256, "center", "bicubic"),
    _row("timm:tf_efficientnet_b0.ns_jft_in1k", 224, 256, "center", "bicubic"),
    _row("timm:tf_efficientnet_b0.aa_in1k", 224, 256, "center", "bicubic"),
    _row("timm:tf_efficientnet_b1.ns_jft_in1k", 240, 272, "center", "bicubic"),
    _row("timm:tf_efficientnet_b1.aa_in1k", 240, 272, "center", "bicubic"),
    _row("timm:tf_efficientnet_b2.ns_jft_in1k", 260, 292, "center", "bicubic"),
    _row("timm:tf_efficientnet_b2.aa_in1k", 260, 292, "center", "bicubic"),
    _row("timm:tf_efficientnet_b3.ns_jft_in1k", 300, 331, "center", "bicubic"),
    _row("timm:tf_efficientnet_b3.aa_in1k", 300, 331, "center", "bicubic"),
    _row("timm:tf_efficientnet_b4.ns_jft_in1k", 380, 412, "center", "bicubic"),
    _row("timm:tf_efficientnet_b4.aa_in1k", 380, 412, "center", "bicubic"),
    _row("timm:tf_efficientnet_b5.ns_jft_in1k", 456, 488, "center", "bicubic"),
    _row("timm:tf_efficientnet_b5.aa_in1k", 456, 488, "center", "bicubic"),
    _row("timm:tf_efficientnet_b6.ns_jft_in1k", 528, 560, "center", "bicubic"),
    _row("timm:tf_efficientnet_b6.aa_in1k", 528, 560, "center", "bicubic"),
    _row("timm:tf_efficientnet_b7.ns_jft_in1k", 600, 632, "center", "bicubic"),
    _row("timm:tf_efficientnet_b7.aa_in1k", 600, 632, "center", "bicubic"),
    _row("timm:tf_efficientnet_b8.ap_in1k", 672, 704, "center", "bicubic", *HALF),
    _row("timm:tf_efficientnet_l2.ns_jft_in1k_475", 475, 507, "center", "bicubic"),
    _row("timm:tf_efficientnet_lite0.in1k", 224, 256, "center", "bicubic", *HALF),
    _row("timm:tf_efficientnet_lite1.in1k", 240, 272, "center", "bicubic", *HALF),
    _row("timm:tf_efficientnet_lite2.in1k", 260, 292, "center", "bicubic", *HALF),
    _row("timm:tf_efficientnet_lite3.in1k", 300, 331, "center", "bilinear", *HALF),
    _row("timm:tf_efficientnet_lite4.in1k", 380, 413, "center", "bilinear", *HALF),
    _row("timm:tf_efficientnetv2_l.in21k_ft_in1k", 384, 384, "squash", "bicubic", *HALF),
    _row("timm:tf_efficientnetv2_m.in21k_ft_in1k", 384, 384, "squash", "bicubic", *HALF),
    _row("timm:tf_efficientnetv2_s.in21k_ft_in1k", 300, 300, "center", "bicubic", *HALF),
    _row("timm:tf_mobilenetv3_large_100.in1k", 224, 256, "center", "bilinear", *HALF),
    _row("timm:tf_mobilenetv3_small_100.in1k", 224, 256, "center", "bilinear", *HALF),
    _row("torchvision:efficientnet_b0.IMAGENET1K_V1", 224, 256, "center", "bicubic"),
    _row("torchvision:efficientnet_b1.IMAGENET1K_V2", 240, 255, "center", "bilinear"),
    _row("torchvision:efficientnet_b2.IMAGENET1K_V1", 288, 288, "center", "bicubic"),
    _row("torchvision:efficientnet_b3.IMAGENET1K_V1", 300, 320, "center", "bicubic"),
    _row("torchvision:efficientnet_b4.IMAGENET1K_V1", 380, 384, "center", "bicubic"),
    _row("torchvision:efficientnet_b5.IMAGENET1K_V1", 456, 456, "center", "bicubic"),
    _row("torchvision:efficientnet_b6.IMAGENET1K_V1", 528, 528, "center", "bicubic"),
    _row("torchvision:efficientnet_b7.IMAGENET1K_V1", 600, 600, "center", "bicubic"),
    _row("torchvision:efficientnet_v2_s.IMAGENET1K_V1", 384, 384, "center", "bilinear"),
    _row("torchvision:efficientnet_v2_m.IMAGENET1K_V1", 480, 480, "center", "bilinear"),
    _row("torchvision:efficientnet_v2_l.IMAGENET1K_V1", 480, 480, "center", "bicubic", *HALF),
    _row("torchvision:mobilenet_v2.IMAGENET1K_V2", 224, 232, "center", "bilinear"),
    _row("torchvision:mobilenet_v3_large.IMAGENET1K_V2", 224, 232, "center", "bilinear"),
    _row("torchvision:mobilenet_v3_small.IMAGENET1K_V1", 224, 256, "center", "bilinear"),
    # Keras' MobileNetV2 ImageNet weights come from TF-slim, evaluated with its inception preprocessing: central
    # crop 0.875, bilinear, pixels scaled to [-1, 1] (keras.applications.mobilenet_v2.preprocess_input).
    _row("keras:mobilenet_v2", 224, 256, "center", "bilinear", *HALF),
)
CONFIGS: dict[str, PretrainedConfig] = {c.key: c for c in _CONFIGS}
# zoo name -> its timm default tag's config
_ZOO_DEFAULT: dict[str, str] = {}
for _c in _CONFIGS:
    if _c.key.startswith("timm:"):
        _ZOO_DEFAULT.setdefault(_c.key[5:].split(".")[0], _c.key)


def list_pretrained_configs() -> list[str]:
    """The keys of every known config."""
    return list(CONFIGS)


def get_pretrained_config(name: str) -> PretrainedConfig:
    """A config by key ('timm:tf_efficientnet_lite0.in1k', 'torchvision:efficientnet_b0.IMAGENET1K_V1'), by key
    without the tag ('torchvision:efficientnet_b0': the first listed, the default) or by zoo name (timm's default
    tag of that model); ValueError naming the unknown name."""
    if name in CONFIGS:
        return CONFIGS[name]
    if name in _ZOO_DEFAULT:
        return CONFIGS[_ZOO_DEFAULT[name]]
    tagged = [k for k in CONFIGS if k.startswith(name + ".")]  # 'torchvision:mobilenet_v2': its one entry
    if ":" in name and tagged:
        return CONFIGS[tagged[0]]
    raise ValueError(f"no pretrained evaluation config for {name!r}: give a zoo name timm knows or one of "
                     f"mbconv.compat.list_pretrained_configs()")


def resize_crop(x: torch.Tensor, cfg: PretrainedConfig) -> torch.Tensor:
    """Resize (shorter side to `cfg.resize`, or both sides when squashing) and centre-crop `cfg.input_size`:
    (N, C, H, W) pixels in [0, 1] -> (N, C, S, S), still in [0, 1]."""
    if x.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if cfg.crop_mode == "squash":
        size = (cfg.resize, cfg.resize)
    elif h <= w:  # torchvision's Resize(int): the longer side int(resize * long / short)
        size = (cfg.resize, int(cfg.resize * w / h))
    else:
        size = (int(cfg.resize * h / w), cfg.resize)
    if size != (h, w):
        x = F.interpolate(x, size=size, mode=cfg.interpolation, align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)  # bicubic overshoots; PIL clips to the pixel range
    s = cfg.input_size
    top, left = int(round((size[0] - s) / 2.0)), int(round((size[1] - s) / 2.0))
    return x[..., top:top + s, left:left + s]


def normalize(x: torch.Tensor, cfg: PretrainedConfig) -> torch.Tensor:
    """(x - mean) / std per channel; the channel count must be the config's."""
    if x.shape[1] != len(cfg.mean):
        raise ValueError(f"images have {x.shape[1]} channel(s) but the config {cfg.key!r} normalises "
                         f"{len(cfg.mean)}")
    shape = (1, -1, 1, 1)
    return (x - torch.tensor(cfg.mean).view(shape)) / torch.tensor(cfg.std).view(shape)


def eval_transform(x: torch.Tensor, cfg: PretrainedConfig) -> torch.Tensor:
    """The whole evaluation transform: `resize_crop` then `normalize`."""
    return normalize(resize_crop(x, cfg), cfg)


def timm_resize(input_size: int, crop_pct: float) -> int:
    """timm's shorter side before the crop for an input size and crop_pct (floor(size / crop_pct))."""
    return math.floor(input_size / crop_pct)
