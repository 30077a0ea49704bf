"""Datasets of image files: decode once, then the same splits for every source.

Images are PNG/JPEG/TIFF/BMP, ``.npy`` (2D) or NIfTI volumes (3D, read with nibabel and
reoriented to the closest canonical RAS+ orientation) or DICOM series. The ``folder``,
``manifest``, ``nifti``, ``nnunet`` and ``dicom`` sources list their samples as ``Record`` s;
``records_to_splits``
decodes them, optionally resamples volumes to ``data.spacing`` or cuts them into 2D slices
(``data.slice_axis``), resizes to ``data.image_size`` (``null``: native size, see ``native.py``;
never after ``data.spacing``), normalises, maps labels to classes, assigns
splits (explicit, from ``data.splits``, or grouped by patient and stratified by label), audits
them for leakage, and returns tensors. Ids written anywhere are salted hashes of the relative
paths, and patient ids are hashed before they are used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medimg_cli.data import DataInfo, Splits, fingerprint
from medimg_cli.data.cache import cached, cached_json
from medimg_cli.data.dicom import apply_window, read_segmentation, read_series
from medimg_cli.data.fingerprinting import fingerprint_records
from medimg_cli.data.native import MULTIPLE, check_spacing, stack_native, stored_size
from medimg_cli.data.plan import DEFAULT_MEMORY_GB, PLANNED, make_plan, wants_plan
from medimg_cli.data.readers import (
    IMAGE_SUFFIXES,
    VOLUME_SUFFIXES,
    denoise,
    full_suffix,
    normalise,
    read_any,
    read_mask,
    resize,
)
from medimg_cli.data.splits import (
    SPLIT_NAMES,
    SPLIT_ORDER_SALT,
    anonymise,
    audit,
    grouped_split,
    read_fixed_splits,
    salt_of,
)
from medimg_cli.errors import ConfigError, unknown_choice

NORMALISATIONS = ("minmax", "zscore", "ct", "none")
BAD_FILE_POLICIES = ("error", "skip")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One sample as a source lists it; paths are absolute, ``name`` is relative to the dataset root."""

    name: str
    images: tuple[Path, ...]  # one file per channel group (nnU-Net's _0000, _0001 ...), stacked
    label: str | None = None
    mask: Path | None = None
    roi: Path | None = None  # a region-of-interest mask (field of view, body): nonzero pixels count
    case: str | None = None  # the user's own name of the case, used instead of the hashed id
    patient: str | None = None
    split: str | None = None
    kind: str = "file"  # "dicom": ``images`` are the slice files of one series, in spatial order
    meta: tuple[tuple[str, str], ...] = ()  # other manifest columns (site, scanner, sex...)


@dataclass
class Decoded:
    """One record decoded: its ``(image (C, *spatial), mask (1 or 2, *spatial) or None)`` samples
    (one, or one per slice) and their geometry."""

    samples: list[tuple[np.ndarray, np.ndarray | None]]
    spacing: tuple[float, ...] | None  # the record's voxel spacing in mm, as in the file
    sample_spacing: tuple[float, ...] | None  # mm per pixel of each sample (after data.spacing and slicing)
    native_shape: tuple[int, ...]  # each sample's spatial shape on the file's own grid
    affine: list[list[float]] | None  # voxel-to-world of a whole NIfTI volume; None for slices and 2D
    original: np.ndarray | None = None  # a resampled whole volume's mask (and ROI) on the file's grid


def _decode(record: Record, cfg: Mapping, task: str) -> Decoded:
    """Decode one record, resampled to ``data.spacing`` and cut into slices as the config says."""
    affine = None
    if record.kind == "dicom":
        image, spacing = read_series(record.images)
    else:
        parts = [read_any(path, cfg["channels"]) for path in record.images]
        image, spacing, affine = np.concatenate([p[0] for p in parts]), parts[0][1], parts[0][2]
    image, mask = _image_and_mask(record, image, cfg, task)
    native_shape = tuple(image.shape[1:])
    sample_spacing = spacing if spacing is not None and len(spacing) == image.ndim - 1 else None
    original = None
    if sample_spacing is not None and cfg.get("spacing"):  # resample to the target spacing
        original = mask
        sample_spacing = tuple(float(t) for t in cfg["spacing"])
        shape = [round(n * s / t) for n, s, t in zip(image.shape[1:], spacing, cfg["spacing"], strict=True)]
        image = resize(image, shape).numpy()
        mask = resize(mask, shape, nearest=True).numpy().astype(np.int64) if mask is not None else None
    axis = cfg.get("slice_axis")
    if image.ndim == 4 and axis is not None:  # 2D slices of a volume, for 2D models
        slices = [
            (image.take(k, axis=1 + axis), mask.take(k, axis=1 + axis) if mask is not None else None)
            for k in range(image.shape[1 + axis])
        ]
        in_plane = tuple(s for i, s in enumerate(sample_spacing) if i != axis) if sample_spacing else None
        native_plane = tuple(n for i, n in enumerate(native_shape) if i != axis)
        return Decoded(slices, spacing, in_plane, native_plane, None)
    return Decoded([(image, mask)], spacing, sample_spacing, native_shape, affine, original)


def _image_and_mask(record: Record, image: np.ndarray, cfg: Mapping, task: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The record's channels, CT window and denoising applied, and its mask (with the ROI as a
    second channel until the samples are stacked), checked against the image's shape."""
    if cfg["channels"] == 3 and image.shape[0] == 1:  # grayscale as RGB, for ImageNet backbones
        image = np.repeat(image, 3, axis=0)
    if cfg.get("window") is not None:  # CT window in HU -> [0, 1]
        image = apply_window(image, cfg["window"])
    if cfg.get("denoise"):
        image = denoise(image, cfg["denoise"], cfg.get("denoise_size", 1.0))
    if task == "classification":
        return image, None
    if record.kind == "dicom" and full_suffix(record.mask) not in VOLUME_SUFFIXES:
        mask = read_segmentation(record.mask, record.images)
    else:
        mask = read_mask(record.mask, cfg.get("mask_classes"))[None]
    if mask.shape[1:] != image.shape[1:]:
        raise ConfigError(f"{record.mask}: mask shape {mask.shape[1:]} differs from image shape {image.shape[1:]}")
    if record.roi is not None:
        roi = (read_mask(record.roi) > 0).astype(np.int64)[None]
        if roi.shape[1:] != image.shape[1:]:
            raise ConfigError(f"{record.roi}: ROI shape {roi.shape[1:]} differs from image shape {image.shape[1:]}")
        mask = np.concatenate([mask, roi])
    return image, mask


def records_to_splits(records: Sequence[Record], cfg: Mapping, source: str) -> Splits:
    """Decode ``records`` and build the train/val/test tensors as the data config says."""
    task = cfg["task"]
    plan = None
    if wants_plan(cfg):
        cfg, plan = _planned(records, cfg, source)
    classes = _check_records(records, cfg, source)
    decoded = cached(cfg, _source_files(records), lambda: _decode_all(records, cfg, task, source))
    kept = decoded["kept"]
    if decoded["skipped"]:
        log.warning(
            "skipped %d bad file(s) (data.on_bad_file=skip); first: %s", len(decoded["skipped"]), decoded["skipped"][0]
        )
    records = [records[i] for i in kept]
    images, masks, owners, digests = decoded["images"], decoded["masks"], decoded["owners"], decoded["digests"]
    if not records:
        raise ConfigError(f"{source}: every file was skipped as bad")
    salt = salt_of(cfg)
    record_ids = [r.case or anonymise(r.name, salt) for r in records]
    patients = [anonymise(r.patient, salt) if r.patient else None for r in records]
    record_splits = _assign_splits(records, record_ids, cfg, source)
    audit_counts = audit(record_splits, patients, digests)
    if all(p is None for p in patients):  # no patient ids: patient counts would mean nothing
        audit_counts = {k: v for k, v in audit_counts.items() if not k.startswith("patients_")}
    splits = [record_splits[i] for i in owners]

    tensors: dict[str, torch.Tensor] = {"image": images}
    if task != "segmentation":
        tensors["label"] = torch.tensor([classes.index(records[i].label) for i in owners], dtype=torch.int64)
    if task != "classification":
        tensors["mask"] = masks
    if decoded["roi"] is not None:  # native sizes padded to one, or ROIs from files (data/native.py)
        tensors["roi"] = decoded["roi"]
    by_split = {name: [i for i, s in enumerate(splits) if s == name] for name in SPLIT_NAMES}
    for name, indices in by_split.items():
        if not indices:
            raise ConfigError(f"{source}: the {name} split is empty; add images or change data.split")
    num_seg = _mask_classes(cfg.get("mask_classes"), tensors["mask"], source) if "mask" in tensors else 0
    info = DataInfo(
        task=task,
        spatial_dims=images.dim() - 2,
        in_channels=images.shape[1],
        num_classes=len(classes),
        num_seg_classes=max(num_seg, 2) if num_seg else 0,
        class_names=tuple(classes),
    )
    arrays = {key: value.numpy() for key, value in tensors.items()} | {"split": np.array(splits)}
    return Splits(
        **{name: {k: v[idx] for k, v in tensors.items()} for name, idx in by_split.items()},
        info=info,
        fingerprint=fingerprint(arrays),
        # record-level ids (a sliced volume is one entry), so data.splits can reuse the file
        ids={name: [i for i, s in zip(record_ids, record_splits, strict=True) if s == name] for name in SPLIT_NAMES},
        names={
            name: [r.name for r, s in zip(records, record_splits, strict=True) if s == name] for name in SPLIT_NAMES
        },
        audit=audit_counts,
        skipped=decoded["skipped"],
        spacings=decoded["spacings"],
        pixel_spacing={name: [decoded["pixel_spacings"][i] for i in idx] for name, idx in by_split.items()},
        sizes={name: [decoded["sizes"][i] for i in idx] for name, idx in by_split.items()},
        affines={name: [decoded["affines"][i] for i in idx] for name, idx in by_split.items()},
        originals={name: [decoded["originals"][i] for i in idx] for name, idx in by_split.items()},
        meta=_metadata(records, owners, by_split),
        plan=plan,
    )


def _mask_classes(declared: int | None, masks: torch.Tensor, source: str) -> int:
    """The number of mask classes: ``data.mask_classes``, or the largest mask value + 1 when the
    values present fill most of ``0..largest`` (``{0, 128}`` would be 129 classes, 127 never seen)."""
    if declared is not None:
        return int(declared)
    present = torch.unique(masks).tolist()
    if len(present) * 2 < present[-1] + 1:
        raise ConfigError(
            f"{source}: the masks hold the values {present[:6]}{'...' if len(present) > 6 else ''}, which would "
            f"make {present[-1] + 1} classes, {len(present)} of them used; relabel them 0, 1, 2, ... "
            "or set data.mask_classes"
        )
    return present[-1] + 1


def _planned(records: Sequence[Record], cfg: Mapping, source: str) -> tuple[dict, dict]:
    """The config with its ``auto`` keys filled from a plan of the training cases, and the plan."""
    if cfg["task"] != "segmentation":
        auto = [k for k in PLANNED if cfg.get(k) == "auto"]
        raise ConfigError(f"data.{auto[0]}=auto plans segmentation; data.task={cfg['task']} needs an explicit value")
    salt = salt_of(cfg)
    ids = [r.case or anonymise(r.name, salt) for r in records]
    splits = _assign_splits(records, ids, cfg, source)
    train = [r for r, s in zip(records, splits, strict=True) if s == "train"]
    # computed once per dataset and kept beside the decoded data (cache_dir) as JSON
    found = cached_json(cfg, _source_files(train), lambda: fingerprint_records(train, cfg), "fingerprint")
    plan = make_plan(found, cfg.get("memory_gb") or DEFAULT_MEMORY_GB)
    resolved = dict(cfg)
    for key in PLANNED:
        if cfg.get(key) == "auto":
            resolved[key] = plan[key]
    if cfg.get("normalize") == "auto":
        resolved["intensity"] = plan["intensity"]
    log.info("plan: spacing %s, patch %s, batch %d, normalize %s", plan["spacing"], plan["patch_size"],
             plan["batch_size"], plan["normalize"])  # fmt: skip
    return resolved, plan


def _carve_validation(records: Sequence[Record], explicit: list[str], cfg: Mapping) -> list[str]:
    """``explicit`` with part of its train records moved to val: ``data.split``'s val share of
    train + val, grouped by patient and stratified by label (``grouped_split``, whose test share
    is merged into val so both halves of the share are stratified)."""
    members = [i for i, s in enumerate(explicit) if s == "train"]
    train, val = cfg["split"][0], cfg["split"][1]
    share = val / (train + val)
    labels = [records[i].label for i in members]
    every_group = _split_groups(records)
    groups = [every_group[i] for i in members]
    carved = grouped_split(labels, groups, (1 - share, share / 2, share / 2), cfg["seed"])
    found = list(explicit)
    for index, split in zip(members, carved, strict=True):
        found[index] = "train" if split == "train" else "val"
    return found


def _check_records(records: Sequence[Record], cfg: Mapping, source: str) -> list[str]:
    """Refuse records the config cannot use; returns the class names (``data.classes`` or the labels found)."""
    task = cfg["task"]
    if not records:
        raise ConfigError(f"{source}: no images found (suffixes {', '.join(IMAGE_SUFFIXES + VOLUME_SUFFIXES)})")
    if cfg["normalize"] not in NORMALISATIONS:
        raise unknown_choice("data.normalize", cfg["normalize"], NORMALISATIONS)
    if cfg["channels"] not in (1, 3):
        raise ConfigError(f"data.channels={cfg['channels']} must be 1 or 3")
    if task != "segmentation" and any(r.label is None for r in records):
        raise ConfigError(f"{source}: data.task={task} needs a label for every image")
    if task != "classification" and any(r.mask is None for r in records):
        raise ConfigError(f"{source}: data.task={task} needs a mask for every image")
    classes = list(cfg.get("classes") or sorted({r.label for r in records if r.label is not None}))
    for record in records:
        if record.label is not None and record.label not in classes:
            raise ConfigError(f"{record.images[0]}: label '{record.label}' is not in data.classes {classes}")
    return classes


def _metadata(records: Sequence[Record], owners: list[int], by_split: dict[str, list[int]]) -> dict | None:
    """``{split: {column: [value per sample]}}`` for the metadata columns, or ``None`` without any."""
    columns = sorted({key for r in records for key, _ in r.meta})
    if not columns:
        return None
    values = [dict(records[i].meta) for i in owners]
    return {name: {c: [values[i].get(c, "") for i in idx] for c in columns} for name, idx in by_split.items()}


def _source_files(records: Sequence[Record]) -> list[Path]:
    return [p for r in records for p in (*r.images, *(q for q in (r.mask, r.roi) if q is not None))]


PER_SAMPLE = ("images", "masks", "owners", "pixel_spacings", "sizes", "affines", "originals")


def _decode_all(records: Sequence[Record], cfg: Mapping, task: str, source: str) -> dict:
    """Decode every record (a volume may become several slices) into stacked tensors.

    Returns:
        ``images`` ``(N, C, *size)``, ``masks`` ``(N, 1, *size)`` or ``None``, ``roi``
        (``(N, 1, *size)`` when native sizes differ or ROIs come from files, see ``data/native.py``,
        else ``None``); per kept record ``kept`` (its index in ``records``), ``digests`` (a content
        hash) and ``spacings`` (its spacing as in the file); per sample ``owners`` (its index into
        ``kept``), ``pixel_spacings`` (mm per pixel as stored, or ``None``), ``sizes`` (its extent
        inside the stack and its shape on the file's own grid, before ``data.spacing`` and
        ``data.image_size``), ``affines`` (the NIfTI voxel-to-world affine of a whole volume, else
        ``None``), ``originals`` (a resampled whole volume's ``(1 or 2, *file grid)`` mask and ROI
        with its file spacing, else ``None``); and ``skipped`` (one message per bad file when
        ``data.on_bad_file=skip``).
    """
    if cfg.get("on_bad_file", "error") not in BAD_FILE_POLICIES:
        raise unknown_choice("data.on_bad_file", cfg["on_bad_file"], BAD_FILE_POLICIES)
    check_spacing(cfg)
    found: dict[str, list] = {key: [] for key in (*PER_SAMPLE, "kept", "digests", "spacings", "skipped")}
    for index, record in enumerate(records):
        try:
            one = _decode(record, cfg, task)
        except ConfigError as error:
            if cfg.get("on_bad_file", "error") != "skip":
                raise
            found["skipped"].append(str(error))
            continue
        found["digests"].append(hashlib.sha256(b"".join(image.tobytes() for image, _ in one.samples)).hexdigest())
        for image, mask in one.samples:
            _add_sample(found, one, image, mask, stored_size(cfg, image, record.images[0]), cfg)
        found["kept"].append(index)
        found["spacings"].append(list(one.spacing) if one.spacing else None)
    images, masks = found["images"], found["masks"]
    if len({(i.shape[0], i.dim()) for i in images}) > 1:
        raise ConfigError(f"{source}: images differ in channels or dimensions; use one kind of image per dataset")
    rois = [m[1:] for m in masks] if masks and masks[0].shape[0] == 2 else None
    # whole native images are padded to a size U-Nets take; patches and resized images need no rounding
    multiple = MULTIPLE if cfg["image_size"] is None and not cfg.get("patch_size") else 1
    found["images"], found["masks"], found["roi"] = (
        (torch.zeros(0), None, None) if not images else stack_native(images, [m[:1] for m in masks], multiple, rois)
    )
    return found


def _add_sample(found: dict[str, list], one: Decoded, image: np.ndarray, mask: np.ndarray | None,
                size: Sequence[int], cfg: Mapping) -> None:  # fmt: skip
    """Resize and normalise one decoded sample into ``found``'s per-sample lists."""
    found["sizes"].append([list(size), list(one.native_shape)])
    found["affines"].append(one.affine)
    original = None if one.original is None else torch.from_numpy(one.original).to(torch.uint8)
    found["originals"].append(None if original is None else (original, list(one.spacing)))
    found["images"].append(normalise(resize(image, size), cfg["normalize"], cfg.get("intensity")))
    found["pixel_spacings"].append(
        [s * n / m for s, n, m in zip(one.sample_spacing, image.shape[1:], size, strict=True)]
        if one.sample_spacing
        else None
    )
    if mask is not None:
        found["masks"].append(resize(mask, size, nearest=True).to(torch.uint8))
    found["owners"].append(len(found["kept"]))


def _assign_splits(records: Sequence[Record], ids: list[str], cfg: Mapping, source: str) -> list[str]:
    """Explicit splits, then a ``data.splits`` file, else a grouped stratified split."""
    explicit = [r.split for r in records]
    if any(s is not None for s in explicit):
        bad = next((r for r in records if r.split not in SPLIT_NAMES), None)
        if bad is not None:
            raise ConfigError(f"{source}: {bad.images[0]} has split '{bad.split}'; use train, val or test in every row")
        if "val" not in explicit:  # official train/test splits: validation comes out of train
            return _carve_validation(records, explicit, cfg)
        return explicit
    if cfg.get("splits"):
        path = Path(cfg["splits"]).expanduser()
        try:
            mapping = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"data.splits={path}: cannot read the splits file ({error})") from None
        return read_fixed_splits(mapping, ids, str(path))
    return grouped_split([r.label for r in records], _split_groups(records), tuple(cfg["split"]), cfg["seed"])


def _split_groups(records: Sequence[Record]) -> list[str]:
    """The patient (else the sample) of each record as the automatic split groups and orders them:
    hashed with a fixed public salt and never written, so a split depends on ``data.seed`` alone,
    not on this installation's secret salt, and equals the split earlier medimg versions drew."""
    return [
        anonymise(r.patient, SPLIT_ORDER_SALT)
        if r.patient
        else f"sample:{r.case or anonymise(r.name, SPLIT_ORDER_SALT)}"
        for r in records
    ]
