"""mbconv: efficient inverted-residual networks, from the single block to the int8 chip."""

from .net import MBConvNet
from .spec import BlockSpec, NetSpec, StageSpec, parse_arch, plan_blocks

__version__ = "0.1.0"

__all__ = ["BlockSpec", "MBConvNet", "NetSpec", "StageSpec", "create_model", "list_models", "parse_arch",
           "plan_blocks"]


def __getattr__(name: str):
    # The zoo imports scaling; keep `import mbconv` light and cycle-free.
    if name in ("create_model", "list_models", "get_spec"):
        from . import zoo
        return getattr(zoo, name)
    raise AttributeError(name)
