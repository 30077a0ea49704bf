"""What ``medimg eval`` writes per case: predicted masks and class probabilities, at the size
each image had before medimg padded or resized it.

Each sample's ``Splits.sizes`` entry holds its extent inside the stack (native sizes are padded
to one) and its shape on the file's own grid, before ``data.spacing`` resampled it or
``data.image_size`` resized it: outputs are cropped to the first, then resampled to the second
(nearest neighbour for labels, linear for probabilities), so they lie on the original image's
grid. NIfTI masks carry the original volume's affine (``Splits.affines``), so they overlay the
image in any viewer; without one (DICOM series, slices) the affine holds the original spacing.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medimg_cli.fileio import atomic_file, write_atomic

# PNG palette of label maps with several classes: background black, then distinct colours
PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 255, 225, 25, 0, 130, 200, 245, 130, 48, 145, 30, 180, 70, 240, 240]


def mask_png(labels: np.ndarray, num_classes: int) -> bytes:
    """A ``(H, W)`` label map as a PNG that opens as a visible picture: 0/255 grayscale for one
    foreground class, else a palette image whose pixel indices are the labels."""
    if num_classes <= 2:
        picture = Image.fromarray((labels > 0).astype(np.uint8) * 255)
    else:
        picture = Image.fromarray(labels.astype(np.uint8))
        colours = PALETTE[3:] * (1 + 3 * num_classes // (len(PALETTE) - 3))  # cycled after 7 classes
        picture.putpalette(PALETTE[:3] + colours[: 3 * 255])  # an "L" image becomes "P"
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def to_original(values: torch.Tensor, size: Sequence[Sequence[int]] | None, labels: bool) -> torch.Tensor:
    """``(C, *stored)`` -> ``(C, *before)``: the stored extent cropped out of the padding, then
    resized back (``size`` is ``[extent, before]``; ``None`` leaves ``values`` as they are)."""
    if size is None:
        return values
    extent, before = size
    values = values[(slice(None), *(slice(0, n) for n in extent))]
    if list(values.shape[1:]) == list(before):
        return values
    mode = "nearest-exact" if labels else ("bilinear" if len(before) == 2 else "trilinear")
    resized = F.interpolate(values[None].float(), size=tuple(before), mode=mode)[0]
    return resized.to(values.dtype)


def write_masks(
    folder: Path,
    labels: torch.Tensor,
    ids: list[str],
    spacing: list[list[float]],
    num_classes: int,
    sizes: list | None = None,
    affines: list | None = None,
) -> None:
    """One file per case of ``labels`` ``(N, *spatial)``: a visible PNG (``mask_png``, 2D) or NIfTI
    (3D) with the case's original affine (else its spacing), at the case's original size and grid."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    for case, name in enumerate(ids):
        size = sizes[case] if sizes else None
        array = to_original(labels[case][None], size, labels=True)[0].numpy().astype(np.uint8)
        if array.ndim == 2:
            write_atomic(folder / f"{name}.png", mask_png(array, num_classes))
            continue
        if affines and affines[case] is not None:
            affine = np.asarray(affines[case])
        else:  # the stored spacing times stored pixels per original pixel
            scale = [extent / before for extent, before in zip(*size, strict=True)] if size else [1.0] * array.ndim
            affine = np.diag([*(s * k for s, k in zip(spacing[case], scale, strict=True)), 1.0])
        write_atomic(folder / f"{name}.nii.gz", gzip.compress(nib.Nifti1Image(array, affine).to_bytes()))


def write_probabilities(folder: Path, probs: torch.Tensor, ids: list[str], sizes: list | None = None) -> None:
    """``probabilities/<case>.npz`` per case, holding ``probabilities`` ``(C, *original spatial)`` float16."""
    folder.mkdir(parents=True, exist_ok=True)
    for case, name in enumerate(ids):
        values = to_original(probs[case].float(), sizes[case] if sizes else None, labels=False)
        with atomic_file(folder / f"{name}.npz") as file:
            np.savez_compressed(file, probabilities=values.numpy().astype(np.float16))
