"""RGB photo crops for evaluating pretrained ImageNet networks offline: the colour photographs that ship inside
scikit-image and matplotlib, cut into seeded square crops (random position, scale and horizontal flip) at a
pretrained network's input size.

Calibration and evaluation come from DISJOINT photos, so nothing tuned on the calibration split (quantization
ranges, recipe choices, distillation) has seen an evaluation photo:

=========== ==================================================================== ======================
split       photos (package)                                                      crops
=========== ==================================================================== ======================
train       astronaut, motorcycle_left, motorcycle_right (a stereo pair: kept      5 x 32 = 160
(calibrate) together), immunohistochemistry, hubble_deep_field (scikit-image)
val         the same calibration photos, other crops (seed 1)                     5 x 16 = 80
(choose)
test        chelsea, coffee, rocket, retina (scikit-image), grace_hopper           5 x 48 = 240
(evaluate)  (matplotlib)
=========== ==================================================================== ======================

Crop 0 of every train and test photo is the pretrained evaluation config's centre crop (224/256 of the shorter
side); the others are squares of 30-100 % of the shorter side at a random position, flipped with probability 1/2,
all resized to 224 x 224 (bicubic, antialiased, clipped to [0, 1]: the config's interpolation). The crop parameters
come from splitmix64 hashes of (seed, photo, crop), so the crops never change with a NumPy or torch upgrade. The
validation crops (other seed, no centre crop) are for choices such as a quantization recipe: they never show an
evaluation photo.

Labels: none real. Every sample is labelled 0 ("unlabelled") so that every command accepts the data; a number
like accuracy on these crops means nothing. Use the fp32 network's own top-1 as the reference (top-1 agreement):
`experiments/real_lite0.py` does. `crop_records(split)` tells which photo and crop each sample is.

Registry names (normalisation fixed by a pretrained config, not by the train split's statistics):
`photos` = TF-style [-1, 1] inputs (mean = std = 0.5, timm's `tf_efficientnet_lite0.in1k` config: the
EfficientNet-Lite weights); `photos_imagenet` = ImageNet mean/std (timm's and torchvision's other weights).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import DatasetInfo
from .hashing import sample_seed
from .sources import Source, freeze_arrays, import_optional

__all__ = ["CALIB_CROPS", "CALIB_PHOTOS", "EVAL_CROPS", "EVAL_PHOTOS", "PHOTO_INFOS", "PHOTO_LOADERS", "PHOTO_SIZE",
           "VAL_CROPS", "crop_params", "crop_records", "photo_crops", "read_photo"]

CALIB_PHOTOS = ("astronaut", "motorcycle_left", "motorcycle_right", "immunohistochemistry", "hubble_deep_field")
EVAL_PHOTOS = ("chelsea", "coffee", "rocket", "retina", "grace_hopper")
CALIB_CROPS = 32  # per calibration photo
VAL_CROPS = 16  # per calibration photo, another seed
EVAL_CROPS = 48  # per evaluation photo
PHOTO_SIZE = 224  # the Lite0 / B0 evaluation crop
MIN_SCALE = 0.3  # smallest crop side, as a fraction of the photo's shorter side
CENTRE_FRACTION = 224 / 256  # crop 0: the evaluation config's centre crop (input_size / resize)
SEED = 0
VAL_SEED = 1
# The normalisation of each registry name: the pretrained config whose mean/std it applies.
NORM_CONFIGS = {"photos": "timm:tf_efficientnet_lite0.in1k", "photos_imagenet": "timm:efficientnet_b0.ra_in1k"}
_MATPLOTLIB_PHOTOS = {"grace_hopper": "grace_hopper.jpg"}


def read_photo(name: str) -> np.ndarray:
    """One of the bundled colour photos as float32 (H, W, 3) in [0, 1]; ValueError for an unknown name."""
    if name not in CALIB_PHOTOS + EVAL_PHOTOS:
        raise ValueError(f"unknown photo {name!r}: expected one of {sorted(CALIB_PHOTOS + EVAL_PHOTOS)}")
    if name in _MATPLOTLIB_PHOTOS:
        cbook = import_optional("matplotlib.cbook", "matplotlib")
        from PIL import Image  # a matplotlib dependency

        with Image.open(cbook.get_sample_data(_MATPLOTLIB_PHOTOS[name], asfileobj=False)) as im:
            arr = np.asarray(im.convert("RGB"))
    else:
        skdata = import_optional("skimage.data", "scikit-image")
        if name.startswith("motorcycle_"):
            left, right, _ = skdata.stereo_motorcycle()
            arr = left if name == "motorcycle_left" else right
        else:
            arr = getattr(skdata, name)()  # these ship inside the scikit-image wheel: no download
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"photo {name!r} is not an 8-bit colour image: {arr.dtype} {arr.shape}")
    return arr[..., :3].astype(np.float32) / 255.0


def _uniform(seed: int, photo: int, index: int) -> float:
    """A float in [0, 1) fixed by (seed, photo, index) (splitmix64: stable across library versions)."""
    return sample_seed(seed, photo, index) / float(1 << 63)


def crop_params(height: int, width: int, photo: int, crop: int, seed: int = SEED,
                min_scale: float = MIN_SCALE, centre_first: bool = True) -> dict[str, Any]:
    """Where crop `crop` of photo number `photo` lies: {top, left, side, flip}. Crop 0 is the centre crop
    (unless not `centre_first`)."""
    short = min(height, width)
    if crop == 0 and centre_first:
        side = int(round(short * CENTRE_FRACTION))
        return {"top": (height - side) // 2, "left": (width - side) // 2, "side": side, "flip": False}
    u = [_uniform(seed, photo, 4 * crop + j) for j in range(4)]
    side = max(8, int(round(short * (min_scale + (1.0 - min_scale) * u[0]))))
    top = min(int(u[1] * (height - side + 1)), height - side)
    left = min(int(u[2] * (width - side + 1)), width - side)
    return {"top": top, "left": left, "side": side, "flip": u[3] < 0.5}


def photo_crops(photos: Sequence[str], per_photo: int, size: int = PHOTO_SIZE, seed: int = SEED,
                min_scale: float = MIN_SCALE, centre_first: bool = True) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """(crops (N, 3, size, size) in [0, 1], one record per crop: photo, crop, top, left, side, flip).

    `per_photo` crops of each photo in order; crop 0 of each is the centre crop if `centre_first`. Another `seed`
    (and `centre_first=False`) gives other crops of the same photos, e.g. more unlabeled images for distillation
    from the calibration photos."""
    if per_photo < 1 or size < 8:
        raise ValueError(f"invalid per_photo={per_photo!r} / size={size!r}: need per_photo >= 1, size >= 8")
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"invalid min_scale={min_scale!r}: expected a value in (0, 1]")
    everything = CALIB_PHOTOS + EVAL_PHOTOS
    out, records = [], []
    for name in photos:
        img = torch.from_numpy(read_photo(name)).permute(2, 0, 1)[None]
        h, w = img.shape[-2:]
        for k in range(per_photo):
            p = crop_params(h, w, everything.index(name), k, seed, min_scale, centre_first)
            c = img[..., p["top"]:p["top"] + p["side"], p["left"]:p["left"] + p["side"]]
            if p["flip"]:
                c = c.flip(-1)
            if p["side"] != size:
                c = F.interpolate(c, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
            out.append(c.clamp(0.0, 1.0))  # bicubic overshoots; the pixels stay in [0, 1]
            records.append({"photo": name, "crop": k, **p})
    return torch.cat(out), records


@functools.lru_cache(maxsize=1)
def _pool() -> tuple[np.ndarray, tuple[dict[str, Any], ...]]:
    """All crops, train then val then test, as one read-only float32 array (shared by both registry names)."""
    xc, rc = photo_crops(CALIB_PHOTOS, CALIB_CROPS)
    xv, rv = photo_crops(CALIB_PHOTOS, VAL_CROPS, seed=VAL_SEED, centre_first=False)
    xe, re = photo_crops(EVAL_PHOTOS, EVAL_CROPS)
    x = torch.cat([xc, xv, xe]).numpy()
    freeze_arrays(x)
    return x, tuple(rc + rv + re)


def _split_indices() -> dict[str, np.ndarray]:
    n_train, n_val = len(CALIB_PHOTOS) * CALIB_CROPS, len(CALIB_PHOTOS) * VAL_CROPS
    n_test = len(EVAL_PHOTOS) * EVAL_CROPS
    return {"train": np.arange(n_train), "val": np.arange(n_train, n_train + n_val),
            "test": np.arange(n_train + n_val, n_train + n_val + n_test)}


def crop_records(split: str) -> list[dict[str, Any]]:
    """Which photo and crop each sample of the `split` ('train', 'val' or 'test') is, in sample order."""
    idx = _split_indices()
    if split not in idx:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    records = _pool()[1]
    return [records[i] for i in idx[split]]


def _description(name: str) -> str:
    norm = "mean = std = 0.5 per channel ([-1, 1], TF style)" if name == "photos" else "ImageNet mean/std"
    return (f"RGB 224x224 crops (seeded position, 30-100 % scale, flips) of colour photos bundled with "
            f"scikit-image and matplotlib, normalised with {norm} ({NORM_CONFIGS[name]}). Disjoint photos: train "
            f"(calibration) = {', '.join(CALIB_PHOTOS)}, {CALIB_CROPS} crops each; val = other crops of the same "
            f"photos, {VAL_CROPS} each; test (evaluation) = {', '.join(EVAL_PHOTOS)}, {EVAL_CROPS} crops each. No "
            "real labels (all 0): compare with the fp32 network's own predictions.")


PHOTO_INFOS: dict[str, DatasetInfo] = {
    name: DatasetInfo(name=name, num_classes=1, in_chans=3, dims=2, native_size=(PHOTO_SIZE, PHOTO_SIZE),
                      description=_description(name))
    for name in NORM_CONFIGS
}


def _load(name: str) -> Source:
    from ..compat.pretrained import get_pretrained_config  # the mean/std a pretrained network was trained with

    x, _ = _pool()
    y = np.zeros(len(x), dtype=np.int64)
    idx = _split_indices()
    freeze_arrays(y, *idx.values())
    cfg = get_pretrained_config(NORM_CONFIGS[name])
    return Source(x, y, idx["train"], idx["test"], PHOTO_INFOS[name], ("unlabelled",), "reflect",
                  norm=(cfg.mean, cfg.std), val_idx=idx["val"])


@functools.lru_cache(maxsize=1)
def _load_photos() -> Source:
    return _load("photos")


@functools.lru_cache(maxsize=1)
def _load_photos_imagenet() -> Source:
    return _load("photos_imagenet")


PHOTO_LOADERS = {"photos": _load_photos, "photos_imagenet": _load_photos_imagenet}
