"""Atomic, pickle-free checkpoints.

A checkpoint is a directory::

    <name>/
      model.safetensors   model.state_dict() (parameters and persistent buffers)
      state.safetensors   every other tensor: optimizer state, EMA weights and buffers, RNG states (uint8)
      meta.json           everything else: format version, SHA-256 of both .safetensors files, the caller's
                          `extra` (epoch, step, best metric, ...) at top level, the network `spec`, optimizer
                          param-group hyperparameters, scheduler state, python/numpy RNG state

Nothing is pickled and nothing is unpickled: tensors go through safetensors, the rest through JSON.
Non-tensor containers are stored with a small tagged encoding (``{"__tensor__": key}`` points into
state.safetensors, ``{"__tuple__": [...]}`` keeps tuples tuples, ``{"__items__": [[k, v], ...]}`` keeps
non-string dict keys such as the optimizer's integer parameter ids), so ``optimizer.state_dict()`` and
``scheduler.state_dict()`` come back exactly, types included.

Atomic replacement (one writer per checkpoint path), for ``save_checkpoint(".../last", ...)``:

1. write all three files into a fresh sibling ``.last.tmp-<pid>-<rand>/`` (same filesystem), fsync each
   file and the directory;
2. if ``last/`` exists: drop the old ``last.prev/`` (renamed to a ``.last.trash-*`` name first, so it is
   never seen half-deleted), then rename ``last/`` -> ``last.prev/`` and fsync the parent;
3. rename the temp dir -> ``last/`` and fsync the parent.

A kill at any instant therefore leaves a complete ``last/`` or (between 2 and 3) a complete
``last.prev/``; the previous checkpoint stays as ``last.prev/`` until the next save, as a fallback should
``last/`` ever fail verification. Hidden leftovers (``.last.tmp-*``, ``.last.trash-*``) are never
considered checkpoints and are swept by the next save. :func:`latest_checkpoint` picks the newest
checkpoint (highest ``step``) that verifies, so resuming after a crash is just
``load_checkpoint(latest_checkpoint(run_dir), ...)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "FORMAT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "read_meta",
    "latest_checkpoint",
    "verify_checkpoint",
    "unwrap_model",
]

FORMAT = "mbconv-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
META_FILE = "meta.json"
_FILES = (MODEL_FILE, STATE_FILE)
# meta.json keys owned by this module; `extra` may not use them.
_RESERVED = {
    "format", "format_version", "files", "spec", "optimizer", "scheduler", "ema", "rng",
    "torch_version", "saved_at",
}
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with, or does not fit the model it is loaded into."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the plain module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


# ----------------------------------------------------------------------------- tagged JSON encoding


def _encode(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """Turn `obj` into JSON-able data; tensors are moved into `tensors` under readable keys."""
    if isinstance(obj, torch.Tensor):
        k, n = key, 1
        while k in tensors:  # a str dict key containing "." could collide with a nested path
            k, n = f"{key}#{n}", n + 1
        tensors[k] = obj
        return {_TENSOR: k}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        return {_ITEMS: [[_encode(k, tensors, f"{key}.k{i}"), _encode(v, tensors, f"{key}.{k}")]
                         for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store a {type(obj).__name__} (at {key!r}) in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if _TENSOR in obj:
        key = obj[_TENSOR]
        if key not in tensors:
            raise CheckpointError(f"{where}: meta.json refers to tensor {key!r}, which {STATE_FILE} lacks")
        return tensors[key]
    if _TUPLE in obj:
        return tuple(_decode(v, tensors, where) for v in obj[_TUPLE])
    if _ITEMS in obj:
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in obj[_ITEMS]}
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


# ----------------------------------------------------------------------------- RNG


def _rng_state(tensors: dict[str, torch.Tensor]) -> dict:
    tensors["rng.torch"] = torch.get_rng_state()
    n_cuda = 0
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
            n_cuda += 1
    algo, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype="<u4").view(np.uint8).copy())
    py_version, py_state, py_gauss = random.getstate()
    return {
        "cuda_devices": n_cuda,
        "numpy": {"algorithm": algo, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": cached},
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
    }


def _restore_rng(meta_rng: dict, tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"].cpu())
    if torch.cuda.is_available():
        n = min(int(meta_rng.get("cuda_devices", 0)), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"].cpu(), i)
    npm = meta_rng["numpy"]
    keys = tensors["rng.numpy.keys"].numpy().view("<u4").astype(np.uint32)
    np.random.set_state((npm["algorithm"], keys, npm["pos"], npm["has_gauss"], npm["cached_gaussian"]))
    py = meta_rng["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


# ----------------------------------------------------------------------------- file helpers


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; rename is still the best we can do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256_and_fsync(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
        os.fsync(f.fileno())
    return h.hexdigest()


def _plain_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, storage-disjoint copies as safetensors requires (tied weights get cloned)."""
    out, seen = {}, set()
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state entry {k!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def _remove_tree(path: Path) -> None:
    """Delete a directory so that no half-deleted copy is ever visible under its name."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.trash-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _sweep_leftovers(path: Path) -> None:
    """Remove temp/trash dirs left by a writer that was killed (single writer per path assumed)."""
    for pat in (f".{path.name}.tmp-*", f".{path.name}.trash-*", f".{path.name}.prev.trash-*"):
        for p in path.parent.glob(pat):
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- save


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    ema: Any | None = None,
    extra: dict | None = None,
    spec: dict | None = None,
    rng: bool = True,
    keep_prev: bool = True,
) -> Path:
    """Atomically write a checkpoint directory at `path` (see the module docstring for the scheme).

    Args:
        path: the checkpoint directory to create or replace, e.g. ``run/last``.
        model: its ``state_dict()`` goes to model.safetensors (DDP/compile wrappers are unwrapped).
        optimizer, scheduler: anything with ``state_dict()``; stored exactly.
        ema: an object with ``state_dict() -> dict[str, Tensor]`` (e.g. ``ModelEma`` or an ``nn.Module``).
        extra: JSON-able values stored at the top level of meta.json (epoch, step, best metric, ...).
        spec: the network spec as a JSON-able dict, stored as ``meta["spec"]``.
        rng: also store torch CPU/CUDA, numpy and python ``random`` RNG states.
        keep_prev: keep the replaced checkpoint as ``<name>.prev`` (otherwise it is deleted at the end).

    Returns:
        The checkpoint directory path.
    """
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not (path / META_FILE).exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{path} exists and is not a checkpoint directory; refusing to replace it")
    extra = dict(extra or {})
    clash = _RESERVED & set(extra)
    if clash:
        raise ValueError(f"extra uses reserved meta.json keys: {sorted(clash)}")

    model_tensors = _plain_tensors(unwrap_model(model).state_dict())
    state: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
    meta.update(extra)
    meta["spec"] = spec
    if optimizer is not None:
        meta["optimizer"] = {"class": type(optimizer).__name__,
                             "state_dict": _encode(optimizer.state_dict(), state, "optim")}
    if scheduler is not None:
        meta["scheduler"] = {"class": type(scheduler).__name__,
                             "state_dict": _encode(scheduler.state_dict(), state, "sched")}
    if ema is not None:
        ema_sd = ema.state_dict()
        meta["ema"] = {"keys": list(ema_sd)}
        state.update({f"ema.{k}": v for k, v in ema_sd.items()})
    if rng:
        meta["rng"] = _rng_state(state)
    meta["torch_version"] = torch.__version__
    meta["saved_at"] = time.time()
    try:
        meta_text = json.dumps(meta, indent=1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"extra/spec must be JSON-able: {e}") from e
    state = _plain_tensors(state)

    _sweep_leftovers(path)
    tmp = parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = {}
        for name, tensors in ((MODEL_FILE, model_tensors), (STATE_FILE, state)):
            safetensors.torch.save_file(tensors, str(tmp / name), metadata={"format": "pt"})
            files[name] = {"sha256": _sha256_and_fsync(tmp / name), "bytes": (tmp / name).stat().st_size}
        # checksums live in meta.json, so rewrite it now that they are known
        meta["files"] = files
        meta_text = json.dumps(meta, indent=1)
        with open(tmp / META_FILE, "w") as f:
            f.write(meta_text)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    prev = path.with_name(path.name + ".prev")
    if path.exists():
        _remove_tree(prev)
        os.replace(path, prev)
        _fsync_dir(parent)
    os.replace(tmp, path)
    _fsync_dir(parent)
    if not keep_prev:
        _remove_tree(prev)
    return path


# ----------------------------------------------------------------------------- read / verify


def _meta_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.name == META_FILE else p / META_FILE


def read_meta(path: str | os.PathLike) -> dict:
    """Read and sanity-check ``meta.json`` of a checkpoint directory (or the meta.json file itself).

    Raises:
        CheckpointError: missing file, invalid JSON, or not a (supported) mbconv checkpoint.
    """
    mp = _meta_path(path)
    text = _read_bytes(mp, f" (is {mp.parent} a checkpoint directory?)").decode("utf-8", errors="replace")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mp}: not valid JSON ({e}); the file is truncated or corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{mp}: not an mbconv checkpoint (format={meta.get('format')!r})"
                              if isinstance(meta, dict) else f"{mp}: not an mbconv checkpoint")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{mp}: format_version {version!r} is not supported "
                              f"(this mbconv reads up to {FORMAT_VERSION})")
    files = meta.get("files")
    if not isinstance(files, dict) or any(
        not isinstance(files.get(n), dict) or not isinstance(files[n].get("sha256"), str) for n in _FILES
    ):
        raise CheckpointError(f"{mp}: 'files' entry is missing or malformed")
    return meta


def _read_bytes(fp: Path, hint: str = "") -> bytes:
    """A file's bytes, or a CheckpointError naming it (missing / unreadable)."""
    try:
        return fp.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{fp}: missing{hint}") from None
    except OSError as e:
        raise CheckpointError(f"{fp}: cannot read: {e}") from None


def _read_verified(ckpt: Path, name: str, meta: dict) -> bytes:
    fp = ckpt / name
    data = _read_bytes(fp)
    want = meta["files"][name]
    if len(data) != want.get("bytes", len(data)):
        raise CheckpointError(f"{fp}: size {len(data)} bytes, meta.json says {want['bytes']} "
                              "(truncated or modified)")
    got = hashlib.sha256(data).hexdigest()
    if got != want["sha256"]:
        raise CheckpointError(f"{fp}: SHA-256 checksum mismatch (file is corrupt or was modified)")
    return data


def _parse_safetensors(data: bytes, where: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own Rust-side error types
        raise CheckpointError(f"{where}: not a readable safetensors file ({e})") from None


def verify_checkpoint(path: str | os.PathLike, meta: dict | None = None) -> dict:
    """Check meta.json and both files' checksums and structure; return the meta. Raises CheckpointError."""
    ckpt = Path(path)
    meta = read_meta(ckpt) if meta is None else meta
    for name in _FILES:
        _parse_safetensors(_read_verified(ckpt, name, meta), ckpt / name)
    return meta


def latest_checkpoint(dir: str | os.PathLike, verify: bool = True) -> Path | None:
    """Newest valid checkpoint in a run directory (or `dir` itself if it is one), or None.

    Candidates are `dir` and its non-hidden subdirectories holding a meta.json (``last``, ``last.prev``,
    ``best``, ...); the one with the highest ``step`` (then latest ``saved_at``) that passes
    verification wins, so a corrupt or half-replaced ``last`` falls back to ``last.prev``.
    """
    root = Path(dir)
    if not root.is_dir():
        return None
    cands = [root] if (root / META_FILE).exists() else []
    cands += [p for p in sorted(root.iterdir())
              if p.is_dir() and not p.name.startswith(".") and (p / META_FILE).exists()]
    ranked = []
    for p in cands:
        try:
            meta = read_meta(p)
        except CheckpointError:
            continue
        step = meta.get("step")
        ranked.append(((step if isinstance(step, (int, float)) else -1, meta.get("saved_at", 0.0)), p, meta))
    # newest first; only read and hash the .safetensors files until one verifies
    for _, p, meta in sorted(ranked, key=lambda r: r[0], reverse=True):
        try:
            if verify:
                verify_checkpoint(p, meta)
            return p
        except CheckpointError:
            continue
    return None


# ----------------------------------------------------------------------------- load


def _load_state_checked(module: nn.Module, sd: dict[str, torch.Tensor], strict: bool, where: str) -> dict:
    """load_state_dict that reports every mismatched/missing/unexpected key in one CheckpointError."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"{where}: state does not fit {type(module).__name__}:"]
        lines += [f"  shape mismatch {k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in mismatched]
        if strict or mismatched:
            lines += [f"  missing in checkpoint: {k}" for k in missing]
            lines += [f"  unexpected in checkpoint: {k}" for k in unexpected]
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        module.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def load_weights(path_or_file: str | os.PathLike, model: nn.Module, strict: bool = True) -> dict:
    """Load model weights from a checkpoint directory or a bare ``.safetensors`` file.

    A directory's checksum is verified against its meta.json. Shape mismatches always raise; with
    ``strict=False`` missing/unexpected keys are tolerated and returned as ``{"missing", "unexpected"}``.
    """
    p = Path(path_or_file)
    if p.is_dir():
        meta = read_meta(p)
        data, where = _read_verified(p, MODEL_FILE, meta), p / MODEL_FILE
    else:
        try:
            data, where = p.read_bytes(), p
        except OSError as e:
            raise CheckpointError(f"{p}: cannot read: {e}") from None
    sd = _parse_safetensors(data, where)
    return _load_state_checked(unwrap_model(model), sd, strict, str(where))


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    ema: Any | None = None,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = True,
) -> dict:
    """Verify and load a checkpoint; returns its meta dict (``extra`` keys at top level).

    `path` is a checkpoint directory, or a run directory (its :func:`latest_checkpoint` is used).
    Everything passed in is restored exactly; RNG states too when ``restore_rng``. Both files are
    checksum-verified before anything is touched. Raises CheckpointError on any problem.
    """
    ckpt = Path(path)
    if not (ckpt / META_FILE).exists() and ckpt.is_dir():
        found = latest_checkpoint(ckpt)
        if found is None:
            raise CheckpointError(f"{ckpt}: no valid checkpoint found")
        ckpt = found
    meta = read_meta(ckpt)
    model_sd = _parse_safetensors(_read_verified(ckpt, MODEL_FILE, meta), ckpt / MODEL_FILE)
    state = _parse_safetensors(_read_verified(ckpt, STATE_FILE, meta), ckpt / STATE_FILE)
    if map_location is not None and str(map_location) != "cpu":
        state = {k: (v if k.startswith("rng.") else v.to(map_location)) for k, v in state.items()}
    where = str(ckpt)

    if model is not None:
        _load_state_checked(unwrap_model(model), model_sd, True, f"{ckpt / MODEL_FILE}")
    if optimizer is not None:
        if "optimizer" not in meta:
            raise CheckpointError(f"{where}: has no optimizer state")
        saved = meta["optimizer"]["class"]
        if saved != type(optimizer).__name__:
            raise CheckpointError(f"{where}: optimizer state is for {saved}, not {type(optimizer).__name__}")
        try:
            optimizer.load_state_dict(_decode(meta["optimizer"]["state_dict"], state, where))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{where}: optimizer state does not fit: {e}") from None
    if scheduler is not None:
        if "scheduler" not in meta:
            raise CheckpointError(f"{where}: has no scheduler state")
        scheduler.load_state_dict(_decode(meta["scheduler"]["state_dict"], state, where))
    if ema is not None:
        if "ema" not in meta:
            raise CheckpointError(f"{where}: has no EMA state")
        ema_sd = {k: state[f"ema.{k}"] for k in meta["ema"]["keys"]}
        target = ema.module if hasattr(ema, "module") and isinstance(ema.module, nn.Module) else ema
        if isinstance(target, nn.Module):
            _load_state_checked(target, ema_sd, True, f"{ckpt / STATE_FILE} (EMA)")
        else:
            ema.load_state_dict(ema_sd)
    if restore_rng and "rng" in meta:
        _restore_rng(meta["rng"], state)
    return meta
