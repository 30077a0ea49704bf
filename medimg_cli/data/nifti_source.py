"""The ``nifti`` data source: NIfTI volumes (``.nii``, ``.nii.gz``) read with nibabel.

    <root>/<class>/.../<case>.nii.gz       classification: labels are the class folders
    <root>/<case>.nii.gz + <mask_root>/<case>.nii.gz   segmentation

Volumes are reoriented to the closest canonical (RAS+) orientation, optionally resampled to
``data.spacing`` (mm), and either kept 3D or cut into 2D slices along ``data.slice_axis``.
"""

from __future__ import annotations

from collections.abc import Mapping

from medimg_cli.data import SOURCES, Splits
from medimg_cli.data.files import records_to_splits
from medimg_cli.data.folder_source import list_records
from medimg_cli.data.readers import VOLUME_SUFFIXES


@SOURCES.register("nifti")
def nifti_splits(cfg: Mapping) -> Splits:
    """List the volumes under ``cfg["root"]`` and build splits from them."""
    return records_to_splits(list_records(cfg, VOLUME_SUFFIXES), cfg, f"data.root={cfg['root']}")
