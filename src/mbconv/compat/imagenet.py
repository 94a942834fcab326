"""The 1000 ImageNet-1k class names, from torchvision's weights metadata (shipped inside torchvision: no download).
"""

from __future__ import annotations

import functools

__all__ = ["imagenet_classes"]


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> list[str] | None:
    """The ImageNet-1k class names in label order, or None when torchvision is not installed."""
    try:
        from torchvision.models import EfficientNet_B0_Weights
    except ImportError:
        return None
    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])
