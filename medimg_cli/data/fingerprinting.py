"""The dataset fingerprint a plan is made from (``data/plan.py``), as nnU-Net computes it: the
shape and voxel spacing of every training case and the intensities inside its foreground. (The
module is not called ``fingerprint``, which would shadow ``medimg_cli.data.fingerprint``, the
content hash of the decoded arrays.)

Only training cases are read, so no validation or test label shapes the normalisation. The
foreground intensities are a seeded sample of at most ``VOXELS_PER_CASE`` voxels per case
(channel 0), enough for stable percentiles at a fraction of the memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medimg_cli.data.dicom import read_segmentation, read_series
from medimg_cli.data.readers import VOLUME_SUFFIXES, full_suffix, read_any, read_mask

VOXELS_PER_CASE = 10_000


def fingerprint_records(records: Sequence[Any], cfg: Mapping) -> dict[str, Any]:
    """Shapes ``(cases, dims)``, spacings (``None`` without any), foreground intensity statistics
    ``{low, high, mean, sd}`` (0.5 and 99.5 percentiles) and the modality (``data.modality``, else
    the DICOM header's; the nnU-Net source passes its dataset.json's)."""
    rng = np.random.default_rng(0)
    shapes, spacings, samples = [], [], []
    axis = cfg.get("slice_axis")
    modality = cfg.get("modality")
    for record in records:
        if record.kind == "dicom":
            image, spacing = read_series(record.images)
            modality = modality or _dicom_modality(record.images[0])
        else:
            image, spacing, _ = read_any(record.images[0], 1)
        shape = list(image.shape[1:])
        if record.mask is not None:
            foreground = image[0][_labels(record, cfg) > 0]
            if foreground.size:
                samples.append(rng.choice(foreground, min(VOXELS_PER_CASE, foreground.size), replace=False))
        if axis is not None and len(shape) == 3:  # the plan is for the 2D slices
            shape = [n for i, n in enumerate(shape) if i != axis]
            spacing = tuple(s for i, s in enumerate(spacing) if i != axis) if spacing else None
        shapes.append(shape)
        spacings.append(list(spacing) if spacing else None)
    values = np.concatenate(samples) if samples else np.zeros(1, np.float32)
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    return {
        "cases": len(records),
        "shapes": shapes,
        "spacings": spacings if all(s is not None for s in spacings) else None,
        "foreground": {
            "low": float(low),
            "high": float(high),
            "mean": float(clipped.mean()),
            "sd": float(clipped.std()),
        },
        "modality": modality,
    }


def _labels(record: Any, cfg: Mapping) -> np.ndarray:
    """The record's label map on its image's grid (a DICOM-SEG is aligned to its series)."""
    if record.kind == "dicom" and full_suffix(record.mask) not in VOLUME_SUFFIXES:
        return read_segmentation(record.mask, record.images)[0]
    return read_mask(record.mask, cfg.get("mask_classes"))


def _dicom_modality(path: Path) -> str | None:
    """The DICOM Modality attribute (CT, MR, US...) of a series' file."""
    import pydicom

    return getattr(pydicom.dcmread(path, stop_before_pixels=True), "Modality", None)
