"""Reading image files: 2D pictures and ``.npy`` arrays, NIfTI volumes (reoriented to RAS+) and
label masks, with the checks that keep a bad file from becoming a wrong number; resizing,
denoising and per-image normalisation of the decoded arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from medimg_cli.errors import ConfigError, unknown_choice

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".npy")
VOLUME_SUFFIXES = (".nii.gz", ".nii")


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for compressed NIfTI, else the lower-case suffix."""
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def strip_suffix(path: Path) -> Path:
    """``path`` without its (full) suffix."""
    return path.with_name(path.name[: len(path.name) - len(full_suffix(path))])


def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A NIfTI file as float32 ``(C, X, Y, Z)`` in RAS+ orientation, and its voxel spacing in mm."""
    data, spacing, _ = read_nifti(path)
    return data, spacing


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...], list[list[float]]]:
    """``read_volume`` plus the 4x4 voxel-to-world affine of the RAS+ array, which puts a label map
    written on this grid exactly over the original image in any viewer."""
    import nibabel as nib

    try:
        image = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except Exception as error:  # nibabel raises many types for corrupt files (ImageFileError, EOFError, zlib...)
        raise ConfigError(f"{path}: cannot read the NIfTI volume ({type(error).__name__}: {error})") from None
    if data.ndim not in (3, 4):
        raise ConfigError(f"{path}: expected a 3D or 4D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ConfigError(f"{path}: the volume has NaN or infinite values")
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    channels_first = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
    return channels_first, spacing, image.affine.tolist()


def read_any(path: Path, channels: int) -> tuple[np.ndarray, tuple[float, ...] | None, list[list[float]] | None]:
    """Any supported file as ``(C, *spatial)`` float32, with its spacing and affine when it is a volume."""
    if full_suffix(path) in VOLUME_SUFFIXES:
        return read_nifti(path)
    return read_image(path, channels), None, None


def read_image(path: Path, channels: int) -> np.ndarray:
    """Decode an image file to float32 ``(channels, H, W)`` with its original intensities."""
    try:
        if path.suffix.lower() == ".npy":  # (H, W) or channels-first (C, H, W)
            array = np.load(path).astype(np.float32)
            array = array[None] if array.ndim == 2 else array
        else:
            with Image.open(path) as image:
                mode = "RGB" if channels == 3 else ("I" if image.mode.startswith("I") else "L")
                array = np.asarray(image.convert(mode), dtype=np.float32)
            array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, ValueError, UnidentifiedImageError) as error:
        raise ConfigError(f"{path}: cannot read the image ({error})") from None
    if not np.isfinite(array).all():
        raise ConfigError(f"{path}: the image has NaN or infinite values")
    return array


MAX_UNDECLARED_LABELS = 64  # more distinct values without data.mask_classes: a grey-level image, not labels


def read_mask(path: Path, classes: int | None = None) -> np.ndarray:
    """Decode a label mask to int64 ``(*spatial)``; a 0/255 mask becomes 0/1.

    Refuses what would silently change the labels: values that are negative or not whole numbers,
    values at or above ``classes`` (``data.mask_classes``, which nothing enlarges silently) and,
    without ``classes``, more than ``MAX_UNDECLARED_LABELS`` distinct values (a mask saved as JPEG,
    whose compression smears 0/255 into every grey level).
    """
    mask = read_any(path, 1)[0][0]
    values = np.unique(mask)
    if set(values.tolist()) <= {0.0, 255.0}:
        return (mask / 255).astype(np.int64)
    if values[0] < 0 or not np.array_equal(values, np.round(values)):
        bad = next(v for v in values if v < 0 or v != round(v))
        raise ConfigError(f"{path}: mask value {bad:g} is not a label (labels are 0, 1, 2, ...)")
    if classes is not None and values[-1] >= classes:
        raise ConfigError(
            f"{path}: mask value {values[-1]:g} >= data.mask_classes={classes}; raise data.mask_classes or fix the mask"
        )
    if classes is None and len(values) > MAX_UNDECLARED_LABELS:
        raise ConfigError(
            f"{path}: the mask has {len(values)} distinct values ({values[0]:g}-{values[-1]:g}), like a grey-level or "
            "JPEG-compressed image; save masks losslessly (PNG, NIfTI) or set data.mask_classes to the number of labels"
        )
    return mask.astype(np.int64)


def resize(array: np.ndarray, size: Sequence[int], nearest: bool = False) -> torch.Tensor:
    """``(C, *spatial)`` -> ``(C, *size)``: linear interpolation (antialiased in 2D), or nearest
    neighbour, which keeps mask labels exact."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None].float()
    if tuple(tensor.shape[2:]) == tuple(size):
        return tensor[0]
    if nearest:
        return F.interpolate(tensor, size=tuple(size), mode="nearest-exact")[0]
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(tensor, size=tuple(size), mode=mode, antialias=len(size) == 2, align_corners=False)[0]


DENOISERS = ("gaussian", "median")


def denoise(image: np.ndarray, how: str, size: float) -> np.ndarray:
    """Gomathi and Roopa Chandrika's eq. 1 noise reduction on ``(C, *spatial)``: Gaussian smoothing with sigma
    ``size`` (pixels), or a median filter of radius ``size``, with MONAI's transforms."""
    from monai.transforms import GaussianSmooth, MedianSmooth

    if how not in DENOISERS:
        raise unknown_choice("data.denoise", how, DENOISERS)
    smooth = GaussianSmooth(sigma=float(size)) if how == "gaussian" else MedianSmooth(radius=int(size))
    return np.asarray(smooth(torch.from_numpy(np.ascontiguousarray(image))), dtype=np.float32)


def normalise(image: torch.Tensor, how: str, intensity: Mapping[str, float] | None = None) -> torch.Tensor:
    """Per image: ``minmax`` to [0, 1] (the core source paper's eq. 2), ``zscore`` to mean 0 and
    sd 1, or ``none``; ``ct``: one dataset-wide mapping, as nnU-Net does for CT, whose Hounsfield
    units mean the same in every scan: clip to ``intensity`` ``low``-``high`` (foreground
    percentiles) and z-score with its foreground ``mean`` and ``sd``."""
    if how == "minmax":
        low, high = image.min(), image.max()
        return (image - low) / (high - low) if high > low else torch.zeros_like(image)
    if how == "zscore":
        return (image - image.mean()) / image.std().clamp(min=1e-8)
    if how == "ct":
        if not intensity:
            raise ConfigError(
                "data.normalize=ct needs data.intensity {low, high, mean, sd}; data.normalize=auto plans it"
            )
        clipped = image.clamp(intensity["low"], intensity["high"])
        return (clipped - intensity["mean"]) / max(intensity["sd"], 1e-8)
    return image
