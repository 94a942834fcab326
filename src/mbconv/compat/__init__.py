"""Weights from the implementations users have: timm, torchvision, efficientnet_pytorch (and the Lite packages
built on it), Keras applications, and mbconv's own; their evaluation configs; ImageNet class names.

`load_weights(model, source)` is the one entry point: it recognises the scheme from the keys and maps them by
the model's structure. One module per scheme holds that scheme's names (`timm_scheme`, `torchvision_scheme`,
`efficientnet_pytorch_scheme`, `keras_scheme`), each with the other library's models that equal a zoo model
("twins") and what differs from the zoo entry. The library needs only torch; timm, torchvision, safetensors and
h5py are imported when a function needs them.
"""

from __future__ import annotations

from .convert import ConvertedRun, convert_weights, pretrained_data_meta
from .efficientnet_pytorch_scheme import EFFICIENTNET_PYTORCH
from .imagenet import imagenet_classes
from .keras_scheme import KERAS
from .keymap import KeyMap, Scheme, Twin
from .loading import load_state, load_timm_weights, load_weights, match_twins, resolve_scheme, verify_conventions
from .pretrained import (
    PretrainedConfig,
    eval_transform,
    get_pretrained_config,
    list_pretrained_configs,
    normalize,
    resize_crop,
)
from .schemes import SCHEMES, detect_scheme, find_twin, get_scheme, same_structure, twin_spec
from .sources import WeightSource, packaged_weights, read_state_dict
from .timm_models import from_timm
from .timm_scheme import (
    TIMM,
    TIMM_CONV_NAMES,
    mbconv_to_timm_state_dict,
    module_name_map,
    timm_block_class,
    timm_to_mbconv_state_dict,
)
from .torchvision_scheme import TORCHVISION

__all__ = [
    "EFFICIENTNET_PYTORCH", "KERAS", "SCHEMES", "TIMM", "TIMM_CONV_NAMES", "TORCHVISION", "ConvertedRun", "KeyMap",
    "PretrainedConfig", "Scheme", "Twin", "WeightSource", "convert_weights", "detect_scheme", "eval_transform",
    "find_twin", "from_timm", "get_pretrained_config", "get_scheme", "imagenet_classes", "list_pretrained_configs",
    "load_state", "load_timm_weights", "load_weights", "match_twins", "mbconv_to_timm_state_dict",
    "module_name_map", "normalize", "packaged_weights", "pretrained_data_meta", "read_state_dict", "resize_crop",
    "resolve_scheme", "same_structure", "timm_block_class", "timm_to_mbconv_state_dict", "twin_spec",
    "verify_conventions",
]
