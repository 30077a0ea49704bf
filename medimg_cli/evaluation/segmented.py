"""The segmentation part of ``medimg eval``: per-case metrics of a split with bootstrap CIs,
pooled pixel AUC/AP of binary masks, and the written masks and probability maps."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_average_precision, compute_roc_auc

from medimg_cli.data import DataInfo, Splits
from medimg_cli.evaluation.document import Evaluation, Settings
from medimg_cli.evaluation.segmentation import case_metrics
from medimg_cli.evaluation.uncertainty import Predictions
from medimg_cli.evaluation.written import to_original, write_masks, write_probabilities
from medimg_cli.reporting.stats import percentile_interval


def _segmentation(result: Evaluation, values: dict[str, np.ndarray], indices: np.ndarray, unit: str) -> None:
    """Means over cases (per class, then over classes) with CIs into ``result``."""
    classes = values["dice"].shape[1]
    found = {}
    for name, per_case in values.items():  # (N, C - 1) each
        boot = per_case[indices].mean(axis=1)  # (R, C - 1)
        point = per_case.mean(axis=0)
        interval = percentile_interval(boot.mean(axis=1))
        found[name] = {"value": float(point.mean()), "low": interval[0], "high": interval[1]}
        result.add(name, "all", float(point.mean()), interval, len(per_case))
        for c in range(classes) if classes > 1 else ():
            result.add(name, str(c + 1), float(point[c]), percentile_interval(boot[:, c]), len(per_case))
    result.document.setdefault("metrics", {}).update(found)
    result.document["distance_unit"] = unit


def _segmentation_outputs(
    predictions: Predictions,
    masks: torch.Tensor,
    roi: torch.Tensor | None,
    num_classes: int,
    spacing: list[list[float]],
    batch_size: int,
    settings: Settings,
) -> dict[str, np.ndarray]:
    """Per-case, per-foreground-class Dice, IoU, HD95, ASD, NSD (and clDice with ``eval.cldice``)
    ``(N, C - 1)``, batch by batch, inside the ``(N, *spatial)`` ROI when there is one."""
    parts = [
        case_metrics(
            predictions.seg_labels[start : start + batch_size],
            masks[start : start + batch_size],
            num_classes,
            spacing[start : start + batch_size],
            None if roi is None else roi[start : start + batch_size],
            settings.nsd_tolerance,
            settings.cldice,
        )
        for start in range(0, len(masks), batch_size)
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _original_grid_outputs(
    probs: torch.Tensor, originals: list, sizes: list, num_classes: int, settings: Settings
) -> dict[str, np.ndarray]:
    """Per-case metrics ``(N, C - 1)`` on each file's own grid: the ``(N, C, *stored)`` class
    probabilities resampled back (linearly, then the argmax, as nnU-Net does) and scored against
    the mask (and ROI) as the file holds them, in the file's spacing."""
    parts = []
    for case, (original, spacing) in enumerate(originals):
        labels = to_original(probs[case].float(), sizes[case], labels=False).argmax(0)
        roi = original[1:2] if original.shape[0] > 1 else None
        parts.append(case_metrics(labels[None], original[:1], num_classes, [spacing], roi, settings.nsd_tolerance,
                                  settings.cldice))  # fmt: skip
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def segmentation_split(
    result: Evaluation,
    out: Path,
    predictions: Predictions,
    data: Splits,
    split: str,
    info: DataInfo,
    settings: Settings,
    batch_size: int,
    indices: np.ndarray,
    ids: list[str],
) -> dict[str, np.ndarray]:
    """The segmentation metrics of ``split`` into ``result`` and the mask (and probability) files;
    returns the per-case values ``(N, C - 1)`` per metric."""
    tensors, count = data.split(split), len(ids)
    spacing = (data.pixel_spacing or {}).get(split) or [None] * count
    unit = "mm" if all(s is not None for s in spacing) else "pixels"
    spacing = [s if s is not None else [1.0] * info.spatial_dims for s in spacing]
    masks, roi = tensors["mask"][:, 0], _roi(tensors)
    sizes = (data.sizes or {}).get(split)
    sizes = sizes if sizes and len(sizes) == count else None
    originals = (data.originals or {}).get(split)
    if sizes and originals and all(o is not None for o in originals):  # undo a data.spacing resampling
        values = _original_grid_outputs(predictions.seg_probs, originals, sizes, info.num_seg_classes, settings)
        unit, result.document["grid"] = "mm", "original: predictions resampled back to each file's grid"
    else:
        values = _segmentation_outputs(predictions, masks, roi, info.num_seg_classes, spacing, batch_size, settings)
        result.document["grid"] = "stored: the grid the model sees (the file's own unless data.image_size resized it)"
    if info.num_seg_classes == 2:
        _pixel_scores(result, predictions.seg_probs, masks, roi)
    _segmentation(result, values, indices, unit)
    if settings.masks:
        affines = (data.affines or {}).get(split) if sizes else None
        write_masks(out / "masks", predictions.seg_labels, ids, spacing, info.num_seg_classes, sizes, affines)
    if settings.save_probabilities:
        write_probabilities(out / "probabilities", predictions.seg_probs, ids, sizes)
    return values


def _pixel_scores(result: Evaluation, probs: torch.Tensor, masks: torch.Tensor, roi: torch.Tensor | None) -> None:
    """Pixel AUC and average precision of binary masks, pooled over every pixel inside the ROI of
    every case (as retinal-vessel papers report them); no bootstrap CI: pixels are not independent
    cases, and resampling cases would recompute a ranking of millions of pixels each time."""
    inside = roi.bool() if roi is not None else torch.ones_like(masks, dtype=torch.bool)
    scores, truth = probs[:, 1][inside].float(), (masks[inside] > 0).long()
    if truth.unique().numel() < 2:
        return  # both need foreground and background pixels
    auc, ap = float(compute_roc_auc(scores, truth)), float(compute_average_precision(scores, truth))
    for name, value in (("pixel_auc", auc), ("pixel_ap", ap)):
        result.add(name, "all", value, (math.nan, math.nan, 0), len(masks))
        result.document.setdefault("metrics", {})[name] = {"value": value, "low": math.nan, "high": math.nan}
    result.document["pixel_metrics"] = "pooled over the pixels inside the ROI of every case; no CI"


def _roi(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The split's ``(N, *spatial)`` region of interest, or ``None``."""
    return tensors["roi"][:, 0] if "roi" in tensors else None
