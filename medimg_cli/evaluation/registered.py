"""``medimg eval`` of a registration model: per-case metrics with bootstrap CIs, the pictures
(moving, fixed, warped, a checkerboard of warped and fixed, the deformed grid) and, with
``eval.masks``, each pair's warped image and displacement field as NIfTI files.

The per-case values are ``deformation.registration_cases``'s (warped-label Dice, IoU and HD95 in
pixels; folding ratio; Jacobian determinant sd), beside the same label metrics before registration
(``identity_``), which the registration must beat.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medimg_cli.data import Splits
from medimg_cli.data.batches import TensorBatches
from medimg_cli.deformation import identity_cases, warp
from medimg_cli.evaluation.anomalous import split_cases
from medimg_cli.evaluation.document import Evaluation, Settings
from medimg_cli.evaluation.intervals import Rule
from medimg_cli.fileio import write_atomic
from medimg_cli.losses import TaskLoss
from medimg_cli.pictures import Tile, grid_figure
from medimg_cli.reporting.stats import percentile_interval
from medimg_cli.speed import Speed

GRID_STEP = 4  # pixels between the lines of the deformed-grid picture
CHECKER = 4  # checkerboard squares per image edge


def grid_lines(shape: tuple[int, ...], step: int = GRID_STEP) -> torch.Tensor:
    """``(1, *shape)``: 1 on every ``step``-th line of the first two spatial axes, else 0."""
    lines = torch.zeros(shape)
    lines[(slice(None, None, step),)] = 1
    lines[(slice(None), slice(None, None, step))] = 1
    return lines[None]


def checkerboard(first: torch.Tensor, second: torch.Tensor, squares: int = CHECKER) -> torch.Tensor:
    """``first`` and ``second`` ``(C, *spatial)`` in alternating squares (``squares`` per edge):
    edges that continue across squares are aligned."""
    index = [torch.arange(n) * squares // n for n in first.shape[1:]]
    parity = sum(torch.meshgrid(*index, indexing="ij")) % 2
    return torch.where(parity.bool(), second, first)


def pair_rows(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> tuple[list, list[str]]:
    """Rows of ``pictures.Tile`` for the pairs of ``batch`` and the model's ``outputs``: moving,
    fixed, warped (label maps over them where known), checkerboard of warped and fixed, deformed grid."""
    image, ddf, warped = batch["image"].cpu(), outputs["ddf"].float().cpu(), outputs["warped"].float().cpu()
    half = image.shape[1] // 2
    masks = batch.get("mask")
    moving_labels = fixed_labels = warped_labels = [None] * len(image)
    if masks is not None:
        masks = masks.cpu()
        moving_labels, fixed_labels = masks[:, 0], masks[:, 1]
        warped_labels = warp(masks[:, :1], ddf, labels=True)[:, 0]
    grids = warp(grid_lines(tuple(image.shape[2:])).expand(len(image), 1, *image.shape[2:]), ddf)
    rows = [
        [Tile(image[i, :half], moving_labels[i], f"pair {i}") for i in range(len(image))],
        [Tile(image[i, half:], fixed_labels[i]) for i in range(len(image))],
        [Tile(warped[i], warped_labels[i]) for i in range(len(image))],
        [Tile(checkerboard(warped[i], image[i, half:])) for i in range(len(image))],
        [Tile(grids[i]) for i in range(len(image))],
    ]
    return rows, ["moving", "fixed", "warped moving", "checkerboard warped/fixed", "deformation grid"]


def registration_outputs(
    result: Evaluation, out: Path, model: torch.nn.Module, data: Splits, split: str, settings: Settings,
    speed: Speed, batch_size: int, indices: np.ndarray, ids: list[str],
) -> tuple[dict[str, np.ndarray], Rule]:  # fmt: skip
    """Metrics with CIs, per-case columns (``result.columns``), ``registration.png`` and, with
    ``eval.masks``, ``warped/``; returns the per-case values for the subgroups."""
    tensors = data.split(split)
    evaluated = split_cases(model, TensorBatches(dict(tensors), batch_size, speed.device), TaskLoss(data.info), speed)
    cases = {key: value.double().numpy() for key, value in evaluated.cases().items()}
    before = identity_cases(tensors, data.info.num_seg_classes)
    cases |= {f"identity_{key}": value.double().numpy() for key, value in before.items() if key != "iou"}
    result.document["task"], result.document["distance_unit"] = "registration", "pixels"
    metrics = result.document.setdefault("metrics", {})
    for name, per_case in cases.items():
        value, (low, high, used) = float(per_case.mean()), percentile_interval(per_case[indices].mean(axis=1))
        result.add(name, "all", value, (low, high, used), len(per_case))
        metrics[name] = {"value": value, "low": low, "high": high}
    result.columns = {name: per_case.tolist() for name, per_case in cases.items()}
    _write_pictures(out, model, tensors, speed, settings.cases)
    if settings.masks:
        _write_fields(out / "warped", model, tensors, speed, batch_size, ids)
    return {key: cases[key][:, None] for key in ("dice", "hd95") if key in cases}, (None, None)


def _predict(model: torch.nn.Module, images: torch.Tensor, speed: Speed) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad(), speed.autocast():
        outputs = model(speed.layout(images.to(speed.device)))
    return {key: outputs[key].float().cpu() for key in ("ddf", "warped")}


def _write_pictures(out: Path, model: torch.nn.Module, tensors: Mapping, speed: Speed, shown: int) -> None:
    """``registration.png``: ``pair_rows`` of the first ``shown`` pairs."""
    from medimg_cli.reporting.plots import save_figure  # matplotlib, only when writing

    batch = {key: value[:shown] for key, value in tensors.items()}
    rows, labels = pair_rows(_predict(model, batch["image"], speed), batch)
    save_figure(grid_figure(rows, labels), out / "registration.png", palette=True)


def _write_fields(
    folder: Path, model: torch.nn.Module, tensors: Mapping, speed: Speed, batch_size: int, ids: list[str]
) -> None:
    """``<id>_warped.nii.gz`` (the moving image through the field, channels last) and
    ``<id>_ddf.nii.gz`` (the field, pixels, one component per axis last) of every pair."""
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(tensors["image"]), batch_size):
        outputs = _predict(model, tensors["image"][start : start + batch_size], speed)
        for offset, case in enumerate(ids[start : start + batch_size]):
            for kind in ("warped", "ddf"):
                array = outputs[kind][offset].movedim(0, -1).numpy().astype(np.float32)
                nifti = nib.Nifti1Image(array, np.eye(4))
                write_atomic(folder / f"{case}_{kind}.nii.gz", gzip.compress(nifti.to_bytes()))
