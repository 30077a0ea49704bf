"""Native resolution: samples of different sizes in one stack, with a region of interest.

With ``data.image_size=null`` (or ``data.spacing``) no sample is resized, so the samples of a
dataset may differ in size (the MSD Hippocampus volumes do). The splits stay stacked tensors, as
every loader, augmentation and metric expects: each sample is padded at the far end of every
axis to the largest size of the dataset, and a ``roi`` map ``(N, 1, *spatial)`` (uint8, 1 inside
the sample) says which pixels are real. The loss and the metrics count only pixels inside the
ROI, so the padding changes no number; geometric augmentation moves the ROI with the image.

Without patches the common size is also rounded up to a multiple of ``MULTIPLE``, so that
networks that halve the size several times (U-Net, UNETR) take the whole image; with patches
the sliding windows pad where they need to. Padding rather than lists of tensors keeps
batches one ``index_select`` on the device; it costs memory when sizes vary a lot (the largest
sample sets the size of all).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medimg_cli.errors import ConfigError

PIXEL_MAPS = ("mask", "roi")  # per-pixel maps that move with the image, by nearest neighbour
MULTIPLE = 32  # the largest total downsampling of the built-in networks (UNETR, Swin-UNETR: 32)


def stored_size(cfg: Mapping, image: np.ndarray, name: Path) -> tuple[int, ...]:
    """The size ``image`` ``(C, *spatial)`` is stored at: ``data.image_size``, or its own (native)."""
    size, dims = cfg["image_size"], image.ndim - 1
    if size is None:
        return tuple(image.shape[1:])
    size = tuple(size) if isinstance(size, Sequence) else (size,) * dims
    if len(size) != dims:
        raise ConfigError(f"data.image_size={list(size)} does not fit {name} ({dims}D)")
    return size


def check_spacing(cfg: Mapping) -> None:
    """``data.spacing`` delivers exactly that spacing, so a resize after it is refused, not done."""
    if cfg.get("spacing") and cfg.get("image_size") is not None:
        raise ConfigError(
            f"data.spacing={list(cfg['spacing'])} resamples every volume to that spacing and keeps the resampled "
            f"size; data.image_size={cfg['image_size']} would resize it again and change the spacing: "
            "add data.image_size=null (or drop data.spacing)"
        )


def pad_to(sample: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(C, *spatial)`` -> ``(C, *size)`` with zeros after the sample on every axis."""
    extra = [target - have for have, target in zip(sample.shape[1:], size, strict=True)]
    padding = [amount for axis in reversed(extra) for amount in (0, axis)]  # F.pad lists the last axis first
    return F.pad(sample, padding) if any(extra) else sample


def stack_native(
    images: list[torch.Tensor],
    masks: list[torch.Tensor] | None,
    multiple: int = MULTIPLE,
    rois: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Stack ``(C, *spatial_i)`` samples of any sizes.

    Returns:
        images ``(N, C, *size)``, masks ``(N, 1, *size)`` (or ``None``) and the ROI ``(N, 1, *size)``
        uint8, where ``size`` is the largest extent on each axis rounded up to a multiple of
        ``multiple``; the ROI is ``None`` when every sample already has that size (nothing is padded)
        and no ``rois`` ``(1, *spatial_i)`` were given (regions read from files, padded too).
    """
    shapes = [tuple(image.shape[1:]) for image in images]
    size = tuple(-(-max(axis) // multiple) * multiple for axis in zip(*shapes, strict=True))
    if all(shape == size for shape in shapes) and rois is None:
        return torch.stack(images), torch.stack(masks) if masks else None, None
    rois = rois or [torch.ones(1, *shape, dtype=torch.uint8) for shape in shapes]
    roi = [pad_to(region.to(torch.uint8), size) for region in rois]
    stacked_masks = torch.stack([pad_to(mask, size) for mask in masks]) if masks else None
    return torch.stack([pad_to(image, size) for image in images]), stacked_masks, torch.stack(roi)
