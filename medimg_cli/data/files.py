"""Datasets of image files (PNG/JPEG/TIFF/BMP or ``.npy``): decode once, then the same splits.

The ``folder`` and ``manifest`` sources list their samples as ``Record`` s; ``records_to_splits``
decodes them, resizes to ``data.image_size``, normalises, maps labels to classes, assigns
splits (explicit, from ``data.splits``, or grouped by patient and stratified by label), audits
them for leakage, and returns tensors. Ids written anywhere are salted hashes of the relative
paths, and patient ids are hashed before they are used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from medimg_cli.data import DataInfo, Splits, fingerprint
from medimg_cli.data.splits import SPLIT_NAMES, anonymise, audit, grouped_split, read_fixed_splits
from medimg_cli.errors import ConfigError, unknown_choice

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")
NORMALISATIONS = ("minmax", "zscore", "none")


@dataclass(frozen=True)
class Record:
    """One sample as a source lists it; paths are absolute, ``name`` is relative to the dataset root."""

    name: str
    image: Path
    label: str | None = None
    mask: Path | None = None
    patient: str | None = None
    split: str | None = None


def read_image(path: Path, channels: int) -> np.ndarray:
    """Decode an image file to float32 ``(channels, H, W)`` with its original intensities."""
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path).astype(np.float32)
            array = array[None] if array.ndim == 2 else array
            if array.shape[0] != channels:
                raise ValueError(f"has {array.shape[0]} channels, data.channels={channels}")
            return array
        with Image.open(path) as image:
            mode = "RGB" if channels == 3 else ("I" if image.mode.startswith("I") else "L")
            array = np.asarray(image.convert(mode), dtype=np.float32)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, ValueError, UnidentifiedImageError) as error:
        raise ConfigError(f"{path}: cannot read the image ({error})") from None
    array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    if not np.isfinite(array).all():
        raise ConfigError(f"{path}: the image has NaN or infinite values")
    return array


def read_mask(path: Path) -> np.ndarray:
    """Decode a label mask to int64 ``(H, W)``; a 0/255 mask becomes 0/1."""
    mask = read_image(path, 1)[0]
    if set(np.unique(mask).tolist()) <= {0.0, 255.0}:
        mask = mask / 255
    return mask.astype(np.int64)


def _resize(array: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """``(C, H, W)`` -> ``(C, size, size)``; ``nearest`` keeps mask labels exact."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None].float()
    if mode == "nearest":
        return F.interpolate(tensor, size=(size, size), mode="nearest")[0]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def normalise(image: torch.Tensor, how: str) -> torch.Tensor:
    """Per image: ``minmax`` to [0, 1] (seed 001, eq. 2), ``zscore`` to mean 0 and sd 1, or ``none``."""
    if how == "minmax":
        low, high = image.min(), image.max()
        return (image - low) / (high - low) if high > low else torch.zeros_like(image)
    if how == "zscore":
        return (image - image.mean()) / image.std().clamp(min=1e-8)
    return image


def records_to_splits(records: Sequence[Record], cfg: Mapping, source: str) -> Splits:
    """Decode ``records`` and build the train/val/test tensors as the data config says."""
    task = cfg["task"]
    if not records:
        raise ConfigError(f"{source}: no images found (suffixes {', '.join(IMAGE_SUFFIXES)})")
    if cfg["normalize"] not in NORMALISATIONS:
        raise unknown_choice("data.normalize", cfg["normalize"], NORMALISATIONS)
    if cfg["channels"] not in (1, 3):
        raise ConfigError(f"data.channels={cfg['channels']} must be 1 or 3")
    if task != "segmentation" and any(r.label is None for r in records):
        raise ConfigError(f"{source}: data.task={task} needs a label for every image")
    if task != "classification" and any(r.mask is None for r in records):
        raise ConfigError(f"{source}: data.task={task} needs a mask for every image")

    size, images, masks, digests = cfg["image_size"], [], [], []
    for record in records:
        raw = read_image(record.image, cfg["channels"])
        digests.append(hashlib.sha256(raw.tobytes()).hexdigest())
        images.append(normalise(_resize(raw, size, "bilinear"), cfg["normalize"]))
        if task != "classification":
            mask = read_mask(record.mask)
            if mask.shape != raw.shape[1:]:
                raise ConfigError(f"{record.mask}: mask shape {mask.shape} differs from image shape {raw.shape[1:]}")
            masks.append(_resize(mask[None], size, "nearest").to(torch.uint8))

    classes = list(cfg.get("classes") or sorted({r.label for r in records if r.label is not None}))
    for record in records:
        if record.label is not None and record.label not in classes:
            raise ConfigError(f"{record.image}: label '{record.label}' is not in data.classes {classes}")
    salt = cfg["salt"]
    ids = [anonymise(r.name, salt) for r in records]
    patients = [anonymise(r.patient, salt) if r.patient else None for r in records]
    splits = _assign_splits(records, ids, patients, cfg, source)
    audit(splits, patients, digests)

    image_tensor = torch.stack(images)
    tensors: dict[str, torch.Tensor] = {"image": image_tensor}
    if task != "segmentation":
        tensors["label"] = torch.tensor([classes.index(r.label) for r in records], dtype=torch.int64)
    if task != "classification":
        tensors["mask"] = torch.stack(masks)
    by_split = {name: [i for i, s in enumerate(splits) if s == name] for name in SPLIT_NAMES}
    for name, indices in by_split.items():
        if not indices:
            raise ConfigError(f"{source}: the {name} split is empty; add images or change data.split")
    num_seg = int(max(cfg.get("mask_classes") or 0, int(tensors["mask"].max()) + 1)) if "mask" in tensors else 0
    info = DataInfo(
        task=task,
        spatial_dims=2,
        in_channels=cfg["channels"],
        num_classes=len(classes),
        num_seg_classes=max(num_seg, 2) if num_seg else 0,
        class_names=tuple(classes),
    )
    arrays = {key: value.numpy() for key, value in tensors.items()} | {"split": np.array(splits)}
    return Splits(
        **{name: {k: v[idx] for k, v in tensors.items()} for name, idx in by_split.items()},
        info=info,
        fingerprint=fingerprint(arrays),
        ids={name: [ids[i] for i in idx] for name, idx in by_split.items()},
    )


def _assign_splits(
    records: Sequence[Record], ids: list[str], patients: list[str | None], cfg: Mapping, source: str
) -> list[str]:
    """Explicit splits, then a ``data.splits`` file, else a grouped stratified split."""
    explicit = [r.split for r in records]
    if any(s is not None for s in explicit):
        bad = next((r for r in records if r.split not in SPLIT_NAMES), None)
        if bad is not None:
            raise ConfigError(f"{source}: {bad.image} has split '{bad.split}'; use train, val or test in every row")
        return explicit
    if cfg.get("splits"):
        path = Path(cfg["splits"]).expanduser()
        try:
            mapping = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"data.splits={path}: cannot read the splits file ({error})") from None
        return read_fixed_splits(mapping, ids, str(path))
    groups = [p if p is not None else f"sample:{i}" for i, p in zip(ids, patients, strict=True)]
    return grouped_split([r.label for r in records], groups, tuple(cfg["split"]), cfg["seed"])
