"""User image folders (one sub-folder per class) as dataset sources, and the image reader behind them.

Images are read with Pillow when it is installed, else with scikit-image; grayscale unless any image is colour;
odd sizes are resized to the most common one. A ``val/`` sub-folder whose own sub-folders are named like the classes
is the validation split (not a class); without one, the validation split is carved from the training split
(`splits.carve_validation`). The pool is cached in memory, keyed by the folder's file list,
sizes and modification times, so an edited folder is read again.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from .datasets import DatasetInfo
from .hashing import stratified_split
from .sources import Source, freeze_arrays, import_optional
from .splits import carve_validation
from .transforms import resize_batch

__all__ = ["IMAGE_EXTENSIONS", "VAL_FOLDER", "load_image_folder", "read_image"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
VAL_FOLDER = "val"  # root/val/<class>/... holds the validation images when present


def _read_with_pil(path: Path, image_mod: ModuleType) -> tuple[np.ndarray, bool]:
    with image_mod.open(path) as im:
        mode = im.mode
        if mode in ("1", "L", "LA", "La"):
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0, False
        if mode.startswith("I"):  # 16-bit PNGs open as "I" / "I;16*"
            return np.asarray(im, dtype=np.float32) / 65535.0, False
        if mode == "F":
            return np.asarray(im, dtype=np.float32), False
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if mode == "P" and np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].copy(), False  # palette image whose palette is all gray
    return rgb, True


def _read_with_skimage(path: Path) -> tuple[np.ndarray, bool]:
    skio = import_optional("skimage.io", "scikit-image")
    arr = np.asarray(skio.imread(str(path)))
    if arr.dtype == np.uint8:
        a = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        a = arr.astype(np.float32) / 65535.0
    else:
        a = arr.astype(np.float32)
    if a.ndim == 2:
        return a, False
    if a.ndim == 3 and a.shape[-1] in (1, 2):  # gray (+ alpha)
        return a[..., 0].copy(), False
    if a.ndim == 3 and a.shape[-1] in (3, 4):  # RGB (+ alpha, dropped)
        return a[..., :3].copy(), True
    raise ValueError(f"unsupported image array shape {arr.shape}")


def read_image(path: Path) -> tuple[np.ndarray, bool]:
    """Read one image as float32 (H, W) or (H, W, 3) in [0, 1]; returns (array, is_colour).

    Uses Pillow when installed, else scikit-image. Raises ValueError naming the file when it cannot be decoded,
    ImportError when neither reader is installed.
    """
    try:
        from PIL import Image as pil_image
    except ImportError:
        pil_image = None
    try:
        if pil_image is not None:
            return _read_with_pil(path, pil_image)
        return _read_with_skimage(path)
    except ImportError:
        raise
    except Exception as err:  # decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise ValueError(f"cannot read image file {path}: {err}") from err


def _class_files(d: Path) -> list[Path]:
    files = sorted(
        f
        for f in d.rglob("*")
        if f.is_file()
        and f.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in f.relative_to(d).parts)
    )
    if not files:
        raise ValueError(f"class folder {d} contains no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def _sub_dirs(d: Path) -> list[Path]:
    return [e for e in sorted(d.iterdir()) if e.is_dir() and not e.name.startswith(".")]


def _scan_image_folder(root: Path) -> tuple[list[tuple[str, list[Path]]], list[tuple[str, list[Path]]] | None]:
    """Validate the folder layout; (class name, sorted image files) for each class, and the same for the classes of
    a ``val/`` validation folder (None when there is none)."""
    entries = [e for e in sorted(root.iterdir()) if not e.name.startswith(".")]
    if not entries:
        raise ValueError(f"image folder {root} is empty")
    class_dirs = [e for e in entries if e.is_dir()]
    val_dir = root / VAL_FOLDER
    names = {d.name for d in class_dirs} - {VAL_FOLDER}
    # val/ is the validation split when its sub-folders are named like classes; else it is a class of its own
    val_subs = _sub_dirs(val_dir) if val_dir in class_dirs else []
    is_val = bool(val_subs) and all(d.name in names for d in val_subs)
    if is_val:
        class_dirs = [d for d in class_dirs if d != val_dir]
    if not class_dirs:
        raise ValueError(f"image folder {root} has no class sub-folders (expected one sub-folder per class)")
    val = [(d.name, _class_files(d)) for d in val_subs] if is_val else None
    return [(d.name, _class_files(d)) for d in class_dirs], val


def _folder_fingerprint(classes: list[tuple[str, list[Path]]], val: list[tuple[str, list[Path]]] | None) -> tuple:
    # Part of the cache key so that edits to the folder invalidate the in-memory cache.
    groups = classes + (val or [])
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for _, files in groups for f in files)


@functools.lru_cache(maxsize=4)
def _load_image_folder_cached(root_str: str, fingerprint: tuple) -> Source:
    root = Path(root_str)
    classes, val = _scan_image_folder(root)
    label_of = {name: i for i, (name, _) in enumerate(classes)}
    images, labels, colour = [], [], False
    for name, files in classes + (val or []):  # the val/ images last: pool indices n_pool..
        for f in files:
            arr, is_colour = read_image(f)
            images.append(arr)
            labels.append(label_of[name])
            colour = colour or is_colour
    in_chans = 3 if colour else 1
    # Images may differ in size: the most common size is the native one, the rest are resized to it.
    native = Counter(a.shape[:2] for a in images).most_common(1)[0][0]
    x = np.empty((len(images), in_chans, *native), dtype=np.float32)
    for i, a in enumerate(images):
        t = torch.from_numpy(a)
        t = t.permute(2, 0, 1) if t.ndim == 3 else t[None]
        if t.shape[0] != in_chans:  # gray image in a colour folder
            t = t.expand(in_chans, -1, -1)
        x[i] = resize_batch(t[None], native)[0].numpy()
    y = np.asarray(labels, dtype=np.int64)
    n_pool = sum(len(files) for _, files in classes)
    tr, te = stratified_split(y[:n_pool], 0.2, seed=0)
    if val is None:
        tr, va = carve_validation(y, tr)
        how = "carved from train (hash seed 1, 10% of each class rounded)"
    else:
        va = np.arange(n_pool, len(y))
        how = f"the {VAL_FOLDER}/ sub-folder"
    freeze_arrays(x, y, tr, te, va)
    names = tuple(name for name, _ in classes)
    info = DatasetInfo(
        name=root.name or str(root),
        num_classes=len(names),
        in_chans=in_chans,
        dims=2,
        native_size=tuple(int(s) for s in native),
        description=(
            f"image folder {root} ({len(y)} images, {len(names)} classes, "
            f"{'RGB' if colour else 'grayscale'}); "
            f"fixed stratified split (hash permutation, seed 0, 20% of each class rounded, at least one "
            f"per side for classes with >= 2 images), validation {how}: {len(tr)} train / {len(va)} val / "
            f"{len(te)} test."
        ),
    )
    return Source(x, y, tr, te, info, names, "reflect", val_idx=va)


def load_image_folder(path: str | os.PathLike) -> Source:
    root = Path(path).expanduser().resolve()
    classes, val = _scan_image_folder(root)
    return _load_image_folder_cached(str(root), _folder_fingerprint(classes, val))
