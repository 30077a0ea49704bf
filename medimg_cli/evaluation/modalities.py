"""Evaluation with a modality missing: the split scored again with each modality blanked (set to
0, as ``model.modality_dropout`` blanks it in training), and the drop of every metric.

A model that leans on one modality loses most without it; one trained with modality dropout (or
fused by attention) should lose less. ``missing_modality.csv`` holds a row per blanked modality and
metric: its value with all modalities, without that one, and the drop (all minus without).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medimg_cli.data import DataInfo
from medimg_cli.data.batches import TensorBatches
from medimg_cli.fileio import columns_csv, write_atomic
from medimg_cli.loop import evaluate
from medimg_cli.losses import TaskLoss
from medimg_cli.metrics import task_metric_names
from medimg_cli.models.fusion import blank_modalities
from medimg_cli.speed import Speed


def modality_names(info: DataInfo) -> list[str]:
    """The modalities' names: the data's (a manifest's columns), else ``modality_1`` ... ``modality_M``."""
    return list(info.modality_names) or [f"modality_{m + 1}" for m in range(info.modalities)]


def missing_modality(
    out: Path, model: nn.Module, tensors: Mapping[str, torch.Tensor], info: DataInfo, speed: Speed, batch_size: int
) -> dict[str, Any]:
    """Write ``missing_modality.csv`` for the split ``tensors``; returns ``{modality: {metric: drop}}``
    plus ``all``: the metrics with every modality (fractions, as ``TaskMetrics`` computes them)."""
    names, metrics = modality_names(info), task_metric_names(info)
    loss = TaskLoss(info)

    def scored(images: torch.Tensor) -> dict[str, float]:
        batches = TensorBatches({**tensors, "image": images}, batch_size, speed.device)
        return evaluate(model, batches, loss, speed)

    every = scored(tensors["image"])
    rows: dict[str, list] = {key: [] for key in ("blanked", "metric", "all", "without", "drop")}
    found: dict[str, Any] = {"all": {m: every[m] for m in metrics}}
    for index, name in enumerate(names):
        keep = torch.ones(len(tensors["image"]), info.modalities)
        keep[:, index] = 0
        without = scored(blank_modalities(tensors["image"], info.modalities, keep))
        found[name] = {m: every[m] - without[m] for m in metrics}
        for metric in metrics:
            for key, value in zip(
                rows, (name, metric, every[metric], without[metric], found[name][metric]), strict=True
            ):
                rows[key].append(value)
    write_atomic(out / "missing_modality.csv", columns_csv(rows))
    return found
