"""Per-case, per-class segmentation metrics: Dice, IoU, HD95, average surface distance and the
normalised surface distance (NSD: the share of both boundaries within a tolerance of the other,
as the Metrics Reloaded recommendations (Maier-Hein et al. 2024) ask for boundary quality) and, on
request, clDice (Shit et al. 2021) for tubular structures, which Metrics Reloaded recommends there.

Overlaps come from MONAI's ``compute_dice``/``compute_iou``; distances from MONAI's
``compute_hausdorff_distance`` (95th percentile, symmetric) and
``compute_average_surface_distance`` (symmetric) and ``compute_surface_dice`` (NSD), in
millimetres through each case's pixel spacing. clDice is written here on scikit-image's
skeletons: MONAI has only the soft clDice *loss*, whose soft skeleton is an approximation.
Empty structures follow one rule for every metric:

- both empty (no lesion, none predicted): Dice, IoU, NSD and clDice 1, distances 0;
- one empty: Dice, IoU, NSD and clDice 0, distances the image diagonal in mm, the largest distance the
  image can hold, so a missed or invented structure is penalised rather than dropped.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)


def case_metrics(
    pred: torch.Tensor,
    mask: torch.Tensor,
    num_classes: int,
    spacing: Sequence[Sequence[float]],
    roi: torch.Tensor | None = None,
    tolerance: float = 1.0,
    cldice: bool = False,
    keys: Sequence[str] = ("dice", "iou", "hd95", "asd", "nsd"),
) -> dict[str, np.ndarray]:
    """Metrics of a batch of label maps.

    Args:
        pred: ``(B, *spatial)`` predicted labels.
        mask: ``(B, *spatial)`` true labels.
        num_classes: labels including background 0.
        spacing: per case, the pixel spacing in mm of each spatial axis.
        roi: ``(B, *spatial)``, 1 where pixels count (padding of native sizes, a field of view);
            labels outside it count as background in both maps.
        tolerance: the NSD's boundary tolerance, in the unit of ``spacing`` (mm, or pixels).
        cldice: also ``cldice``, the centreline Dice (slower: a skeleton per case and class).
        keys: the metrics to compute (the surface distances cost most; registration's per-epoch
            scores need no ASD or NSD).

    Returns:
        ``keys`` (and ``cldice``) as ``(B, num_classes - 1)`` arrays (foreground classes).
    """
    pred_1hot = F.one_hot(pred.long(), num_classes).movedim(-1, 1).float()
    true_1hot = F.one_hot(mask.long(), num_classes).movedim(-1, 1).float()
    if roi is not None:
        pred_1hot, true_1hot = pred_1hot * roi[:, None], true_1hot * roi[:, None]
    spacing = [list(map(float, s)) for s in spacing]
    measures = {
        "dice": lambda: compute_dice(pred_1hot, true_1hot, include_background=False, ignore_empty=False),
        "iou": lambda: compute_iou(pred_1hot, true_1hot, include_background=False, ignore_empty=False),
        "hd95": lambda: compute_hausdorff_distance(
            pred_1hot, true_1hot, include_background=False, percentile=95, spacing=spacing
        ),
        "asd": lambda: compute_average_surface_distance(
            pred_1hot, true_1hot, include_background=False, symmetric=True, spacing=spacing
        ),
        "nsd": lambda: compute_surface_dice(pred_1hot, true_1hot, [tolerance] * (num_classes - 1), spacing=spacing),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty structure; handled below
        found = {key: measures[key]().cpu().double().numpy() for key in keys}
    pred_empty = (pred_1hot[:, 1:].flatten(2).sum(2) == 0).cpu().numpy()
    true_empty = (true_1hot[:, 1:].flatten(2).sum(2) == 0).cpu().numpy()
    diagonal = np.array([math.hypot(*(n * s for n, s in zip(mask.shape[1:], case, strict=True))) for case in spacing])
    one_empty = pred_empty != true_empty
    for key in ("hd95", "asd"):
        if key in found:
            found[key] = np.where(pred_empty & true_empty, 0.0, found[key])
            found[key] = np.where(one_empty, diagonal[:, None], found[key])
    if "nsd" in found:
        found["nsd"] = np.where(pred_empty & true_empty, 1.0, np.where(one_empty, 0.0, found["nsd"]))
    if cldice:
        pred_np, true_np = pred_1hot[:, 1:].bool().cpu().numpy(), true_1hot[:, 1:].bool().cpu().numpy()
        found["cldice"] = np.array([[centreline_dice(p, t) for p, t in zip(*case, strict=True)] for case in
                                    zip(pred_np, true_np, strict=True)])  # fmt: skip
    return found


def centreline_dice(pred: np.ndarray, true: np.ndarray) -> float:
    """clDice of two binary maps (2D or 3D): the harmonic mean of topology precision (the share of
    the prediction's skeleton inside the true structure) and topology sensitivity (the share of the
    true skeleton inside the prediction). A vessel predicted too thick or too thin still scores 1
    when its centreline is right; a broken vessel loses the missing stretch of centreline."""
    from skimage.morphology import skeletonize

    if not pred.any() or not true.any():
        return float(pred.any() == true.any())
    pred_skeleton, true_skeleton = skeletonize(pred), skeletonize(true)
    precision = (pred_skeleton & true).sum() / max(pred_skeleton.sum(), 1)
    sensitivity = (true_skeleton & pred).sum() / max(true_skeleton.sum(), 1)
    return float(2 * precision * sensitivity / (precision + sensitivity)) if precision + sensitivity else 0.0
