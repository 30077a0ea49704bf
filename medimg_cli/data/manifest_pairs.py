"""Registration pairs listed in a manifest (``data=manifest data.task=registration``).

Columns: ``moving`` and ``fixed`` (image paths), optionally ``moving_mask`` and ``fixed_mask``
(label maps, scored as the warped-label Dice), ``moving_landmarks`` and ``fixed_landmarks`` (CSV
files of corresponding points, one per row, in the pixel coordinates of the image array as medimg
reads it; scored as the target registration error), and ``patient_id``, ``split``, metadata as in
any manifest. A manifest without ``moving``/``fixed`` columns gives pairs of its images instead
(``data.pairs``, ``data/pairs.py``).

Each side is decoded like any manifest's images (resized to ``data.image_size``, normalised,
cached) with the pair's id as its case name, so both sides land in the same split and order;
landmarks follow the resize (pixel centres scale with the size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from medimg_cli.data import SPLITS, Splits
from medimg_cli.data.files import Record, records_to_splits
from medimg_cli.data.splits import anonymise, salt_of
from medimg_cli.errors import ConfigError

SIDES = ("moving", "fixed")
PAIR_COLUMNS = (*SIDES, *(f"{side}_{kind}" for kind in ("mask", "landmarks") for side in SIDES))


def lists_pairs(rows: list[dict[str, str]]) -> bool:
    """Whether the manifest's rows are registration pairs (``moving`` and ``fixed`` columns)."""
    return bool(rows) and all(side in rows[0] for side in SIDES)


def manifest_pairs(rows: list[dict[str, str]], path: Path, cfg: Mapping) -> Splits:
    """The pairs of ``rows`` as registration splits (``image`` ``(N, 2C, *spatial)``, ``mask``
    ``(N, 2, *spatial)`` and ``landmarks`` ``(N, 2, K, D)`` where the columns exist)."""
    if cfg.get("slice_axis") is not None or cfg.get("spacing"):
        raise ConfigError("data.task=registration from a manifest of pairs takes whole images: unset data.slice_axis "
                          "and data.spacing (data.image_size resizes both sides alike)")  # fmt: skip
    masks = all(f"{side}_mask" in rows[0] for side in SIDES)
    landmarks = all(f"{side}_landmarks" in rows[0] for side in SIDES)
    salt, base = salt_of(cfg), path.parent
    ids = [anonymise(f"{row['moving']}|{row['fixed']}", salt) for row in rows]
    # without label maps each side is read as one-class classification, which needs no masks
    task = "segmentation" if masks else "classification"
    sides = {side: records_to_splits(_records(rows, ids, side, base, masks), {**cfg, "task": task}, str(path))
             for side in SIDES}  # fmt: skip
    moving, fixed = sides["moving"], sides["fixed"]
    if moving.ids != fixed.ids:
        raise ConfigError(
            f"{path}: the moving and fixed images of a pair fell into different splits; give a split column"
        )
    for name in SPLITS:
        pair = {"image": torch.cat([moving.split(name)["image"], fixed.split(name)["image"]], dim=1)}
        if masks:
            pair["mask"] = torch.cat([moving.split(name)["mask"], fixed.split(name)["mask"]], dim=1)
        if landmarks:
            pair["landmarks"] = _landmarks(rows, ids, moving.ids[name], base, (moving, fixed), name)
        setattr(moving, name, pair)
    classes = max(moving.info.num_seg_classes, fixed.info.num_seg_classes) if masks else 0
    moving.info = dataclasses.replace(
        moving.info, task="registration", in_channels=2 * moving.info.in_channels, num_classes=0,
        num_seg_classes=classes, class_names=(), landmarks=landmarks,
    )  # fmt: skip
    moving.fingerprint = anonymise(f"{moving.fingerprint}:{fixed.fingerprint}", "pairs")
    return moving


def _records(rows: list[dict[str, str]], ids: list[str], side: str, base: Path, masks: bool) -> list[Record]:
    """One side of every pair as manifest records, named by the pair's id."""
    others = (*PAIR_COLUMNS, "patient_id", "split", "case", "label")
    return [
        Record(
            name=row[side],
            images=(base / row[side],),
            label=None if masks else "pair",
            mask=base / row[f"{side}_mask"] if masks else None,
            case=pair_id,
            patient=row.get("patient_id") or None,
            split=row.get("split") or None,
            meta=tuple((k, v) for k, v in row.items() if k not in others),
        )
        for row, pair_id in zip(rows, ids, strict=True)
    ]


def _landmarks(
    rows: list[dict], ids: list[str], order: list[str], base: Path, sides: tuple, split: str
) -> torch.Tensor:
    """``(N, 2, K, D)`` landmarks of the pairs ``order`` (ids) of ``split``, moved to the stored grid
    (``x * stored / file - `` the half-pixel offset of a resize), NaN-padded to the most points."""
    by_id = dict(zip(ids, rows, strict=True))
    pairs = []
    for index, pair_id in enumerate(order):
        points = []
        for side, splits in zip(SIDES, sides, strict=True):
            file = base / by_id[pair_id][f"{side}_landmarks"]
            stored, native = (np.asarray(s, dtype=float) for s in splits.sizes[split][index])
            points.append((_read_points(file, len(native)) + 0.5) * stored / native - 0.5)
        if len(points[0]) != len(points[1]):
            raise ConfigError(
                f"{file}: {len(points[1])} fixed landmarks for {len(points[0])} moving ones; list pairs of points"
            )
        pairs.append(np.stack(points))
    most = max(len(p[0]) for p in pairs)
    padded = np.full((len(pairs), 2, most, pairs[0].shape[-1]), np.nan)
    for index, points in enumerate(pairs):
        padded[index, :, : points.shape[1]] = points
    return torch.from_numpy(padded).float()


def _read_points(file: Path, dims: int) -> np.ndarray:
    """``(K, dims)`` points of a landmark CSV (one point per row, an optional header line)."""
    if not file.is_file():
        raise ConfigError(f"{file}: landmark file not found")
    lines = [line.split(",") for line in file.read_text().splitlines() if line.strip()]
    if lines and not _numbers(lines[0]):  # a header
        lines = lines[1:]
    if not lines or not all(_numbers(line) and len(line) == dims for line in lines):
        raise ConfigError(f"{file}: landmarks must be rows of {dims} numbers (pixel coordinates, one per image axis)")
    return np.array([[float(v) for v in line] for line in lines])


def _numbers(values: list[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True
