"""DICOM series with pydicom: grouping, spatial ordering, rescaling, photometric handling.

A series is the files sharing a SeriesInstanceUID. Slices are ordered by the projection of
ImagePositionPatient on the slice normal (the cross product of the ImageOrientationPatient row
and column cosines), never by file name or InstanceNumber, and must be evenly spaced to be
read as a volume. Volumes get their RAS affine from the geometry and are reoriented to the
closest canonical orientation, so a DICOM series and a NIfTI mask of it line up. Pixel
values go through RescaleSlope/RescaleIntercept (CT in Hounsfield units); MONOCHROME1 is
inverted so that larger always means brighter. Compressed transfer syntaxes decode through
pydicom's pixel handlers (pylibjpeg for JPEG, JPEG-LS and JPEG 2000).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medimg_cli.errors import ConfigError, unknown_choice

# CT window presets: (level, width) in HU
WINDOWS = {"lung": (-600.0, 1500.0), "soft_tissue": (40.0, 400.0), "bone": (400.0, 1800.0), "brain": (40.0, 80.0)}


@dataclass(frozen=True)
class SeriesHeader:
    """What grouping and splitting need from a series, read without pixel data."""

    files: tuple[Path, ...]  # in spatial order
    series_uid: str
    study_uid: str
    patient_id: str | None


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, AttributeError):
        return None


def slice_position(ds) -> float | None:
    """Position of a slice along its normal (mm), or ``None`` without orientation and position."""
    orientation, position = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if orientation is None or position is None:
        return None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return float(np.dot(normal, np.asarray(position, float)))


def find_series(root: Path, unreadable: list[Path] | None = None) -> list[SeriesHeader]:
    """Every image series under ``root`` (a folder, searched recursively, or a DICOMDIR file);
    files named ``.dcm`` that are not DICOM are appended to ``unreadable`` when it is given."""
    if root.is_file():  # a DICOMDIR: the files its records reference
        from pydicom.fileset import FileSet

        try:
            paths: Iterable[Path] = [Path(instance.path) for instance in FileSet(root)]
        except Exception as error:  # pydicom raises several types for a broken DICOMDIR
            raise ConfigError(f"{root}: cannot read the DICOMDIR ({error})") from None
    else:
        paths = sorted(p for p in root.rglob("*") if p.is_file())
    groups: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    for path in paths:
        ds = _read_header(path)
        if ds is None and path.suffix.lower() == ".dcm" and unreadable is not None:
            unreadable.append(path)
        if ds is None or "PixelData" not in ds and "SeriesInstanceUID" not in ds:
            continue  # not DICOM, or a DICOMDIR/report without an image
        if ds.get("Rows") is None or ds.get("SeriesInstanceUID") is None:
            continue
        groups[str(ds.SeriesInstanceUID)].append((path, ds))
    series = []
    for uid, members in sorted(groups.items()):
        members = _spatial_order(members)
        first = members[0][1]
        series.append(
            SeriesHeader(
                files=tuple(p for p, _ in members),
                series_uid=uid,
                study_uid=str(first.get("StudyInstanceUID", "")),
                patient_id=str(first.get("PatientID")) if first.get("PatientID") else None,
            )
        )
    return series


def _spatial_order(members: list[tuple[Path, object]]) -> list[tuple[Path, object]]:
    """Sort slices along the slice normal; without positions, by InstanceNumber then path."""
    positions = [slice_position(ds) for _, ds in members]
    if len(members) > 1 and all(p is not None for p in positions):
        return [members[i] for i in np.argsort(positions, kind="stable")]
    return sorted(members, key=lambda m: (int(m[1].get("InstanceNumber", 0) or 0), str(m[0])))


def read_headers(files: Sequence[Path]) -> list:
    """The headers of ``files`` without their pixel data."""
    import pydicom

    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def slice_spacing(headers: Sequence, where: Path) -> float | None:
    """The even distance between consecutive slices (mm); uneven or repeated positions are an
    error naming ``where``. ``None`` for one slice or without positions."""
    positions = [slice_position(ds) for ds in headers]
    if len(headers) < 2 or None in positions:
        return None
    steps = np.diff(positions)
    if steps.min() <= 1e-3 or steps.max() - steps.min() > 0.01 * steps.max() + 1e-3:
        raise ConfigError(
            f"{where}: its series has uneven or repeated slice positions "
            f"(steps {steps.min():.3f} to {steps.max():.3f} mm); remove duplicate or missing slices"
        )
    return float(steps.mean())


def series_affine(headers: Sequence, where: Path | None = None) -> np.ndarray | None:
    """The RAS affine of a volume stored as ``(slices, rows, cols)`` in the spatial order of
    ``headers``, or ``None`` without orientation/position. DICOM positions are LPS; NIfTI's
    world is RAS."""
    ds = headers[0]
    orientation, position = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if orientation is None or position is None:
        return None
    along_cols, along_rows = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    row_spacing, col_spacing = (float(v) for v in ds.get("PixelSpacing", [1.0, 1.0]))
    depth = slice_spacing(headers, where or Path("series")) or float(ds.get("SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = np.cross(along_cols, along_rows) * depth  # slice axis
    lps[:3, 1] = along_rows * row_spacing  # row index moves along the column cosine
    lps[:3, 2] = along_cols * col_spacing
    lps[:3, 3] = np.asarray(position, float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """Reorient ``(C, slices, rows, cols)`` with ``affine`` to nibabel's closest canonical (RAS+)
    axes, as the NIfTI source does; returns ``(C, X, Y, Z)`` and the spacing of those axes."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.Nifti1Image(np.moveaxis(array, 0, -1), affine))
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return np.moveaxis(np.asarray(image.dataobj), -1, 0), spacing


def _read_file(path: Path):
    """One file read once: its dataset and its rescaled pixels ``(frames, rows, cols[, 3])``."""
    import pydicom
    from pydicom.pixels import apply_rescale

    ds = None
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as error:  # truncated files, unsupported compression...: pydicom raises many types
        # pydicom lists every decoder's complaint on its own line; the first one is the reason
        reasons = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = reasons[1] if len(reasons) > 1 and reasons[0].endswith(":") else reasons[0] if reasons else ""
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        encoding = (
            f" ({syntax.name}, {ds.get('BitsStored')}-bit)" if syntax is not None and syntax.is_compressed else ""
        )
        raise ConfigError(
            f"{path}: cannot decode the DICOM pixel data{encoding} ({type(error).__name__}: {reason}); "
            "convert it (e.g. gdcmconv --raw) or leave it out with data.on_bad_file=skip"
        ) from None
    pixels = apply_rescale(pixels, ds).astype(np.float32)
    return ds, pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[None]


def read_series(files: Sequence[Path]) -> tuple[np.ndarray, tuple[float, ...]]:
    """A series as float32 ``(C, X, Y, Z)`` in RAS+ orientation like a NIfTI volume (or
    ``(C, rows, cols)`` for one slice), and its spacing in mm along those axes.

    Each file is read once: pixels and geometry come from the same datasets. MONOCHROME1 is
    inverted over the whole series, so every slice keeps the same intensity scale.
    """
    datasets, stacks = zip(*(_read_file(path) for path in files), strict=True)
    shapes = {s.shape[1:] for s in stacks}
    if len(shapes) > 1:
        raise ConfigError(f"{files[0]}: its series mixes image sizes {sorted(shapes)}")
    volume = np.concatenate(stacks)  # (slices, rows, cols[, 3])
    if datasets[0].get("PhotometricInterpretation") == "MONOCHROME1":
        volume = volume.max() + volume.min() - volume
    volume = np.moveaxis(volume, -1, 0) if volume.ndim == 4 else volume[None]
    row, col = (float(v) for v in datasets[0].get("PixelSpacing", [1.0, 1.0]))
    if volume.shape[1] == 1:  # a single slice is a 2D image
        return volume[:, 0], (row, col)
    affine = series_affine(datasets, files[0])
    if affine is None:  # no geometry: keep the stored order
        return volume, (float(datasets[0].get("SliceThickness", 1.0) or 1.0), row, col)
    return to_canonical(volume, affine)


def read_segmentation(path: Path, files: Sequence[Path]) -> np.ndarray:
    """A DICOM-SEG of a series as an int64 label map ``(1, X, Y, Z)``, aligned like ``read_series``.

    highdicom maps the SEG's frames to the series' slices by their SOPInstanceUIDs; segment
    numbers become label values, and slices the SEG does not cover are background.
    """
    import highdicom as hd

    headers = read_headers(files)
    try:
        seg = hd.seg.segread(path)
        labels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in headers],
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    except Exception as error:  # not a SEG, or one of another series: highdicom raises several types
        raise ConfigError(
            f"{path}: cannot read it as a DICOM-SEG of its series ({type(error).__name__}: {error})"
        ) from None
    affine = series_affine(headers, files[0])
    stored = labels.astype(np.float32)[None]
    return (to_canonical(stored, affine)[0] if affine is not None else stored).round().astype(np.int64)


def apply_window(image: np.ndarray, window: str | Sequence[float]) -> np.ndarray:
    """Clip to a CT window (a preset name or ``[level, width]``) and scale it to [0, 1]."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise unknown_choice("data.window", window, WINDOWS)
        level, width = WINDOWS[window]
    else:
        level, width = (float(v) for v in window)
    low = level - width / 2
    return np.clip((image - low) / width, 0.0, 1.0).astype(np.float32)
