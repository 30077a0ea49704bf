"""``data.task=anomaly``: any labelled source turned into normal-versus-abnormal splits.

A detector learns what normal images look like and flags what departs from it (screening,
rare diseases), so it must never see an abnormal image while it learns. The source is read
for classification (or multitask, when it has lesion masks), then:

- labels become 0 ``normal`` (a class in ``data.normal_classes``) or 1 ``abnormal``;
- the train split keeps its normal images only;
- val and test keep every image: val's normals give the validation loss (``losses.TaskLoss``
  counts normal images only) and its abnormal ones choose the decision threshold, never a
  weight; test is scored whole.

Masks, when the source has them (the phantom, or a ``data.mask_root``), mark the abnormal
regions and give pixel-level metrics; a normal image's mask is empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medimg_cli.data import DataInfo, Splits
from medimg_cli.errors import ConfigError

CLASS_NAMES = ("normal", "abnormal")
NORMAL, ABNORMAL = 0, 1


def source_task(cfg: Mapping) -> str:
    """The task the source is read with: multitask where it has masks of the abnormal regions
    (the phantom's lesions; a ``mask_root`` of a folder or NIfTI source), else classification."""
    return "multitask" if cfg.get("source") == "phantom" or cfg.get("mask_root") else "classification"


def normal_indices(given: Any, names: Sequence[str], finding: int | None = None) -> list[int]:
    """The class indices of ``data.normal_classes`` (names or indices). Null: every class but the
    dataset's finding where it has one (BreastMNIST: all but malignant), else the first class."""
    if given is None:
        return [k for k in range(len(names)) if k != finding] if finding is not None else [0]
    values = list(given) if isinstance(given, Sequence) and not isinstance(given, str) else [given]
    classes = ", ".join(f"{k} {name}" for k, name in enumerate(names))
    found = []
    for value in values:
        if str(value) in names:
            found.append(list(names).index(str(value)))
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
            found.append(value)
        else:
            raise ConfigError(f"data.normal_classes: {value!r} is not a class of this data ({classes})")
    if len(set(found)) == len(names):
        raise ConfigError(
            f"data.normal_classes={values} makes every class normal (the classes: {classes}); leave one abnormal"
        )
    return sorted(set(found))


def anomaly_splits(splits: Splits, normal_classes: Any) -> Splits:
    """``splits`` of a classification (or multitask) source as anomaly-detection splits (see the
    module docstring)."""
    info = splits.info
    if info.multilabel:
        raise ConfigError("data.task=anomaly needs single-label classes; this dataset is multi-label")
    normal = torch.tensor(normal_indices(normal_classes, info.class_names, info.positive_class))
    for name in ("train", "val", "test"):
        split = splits.split(name)
        split["label"] = torch.where(torch.isin(split["label"], normal), NORMAL, ABNORMAL).long()
        if "mask" in split:  # any lesion class is the abnormal region
            split["mask"] = (split["mask"] > 0).to(torch.uint8)
    splits.keep("train", (splits.train["label"] == NORMAL).nonzero().flatten().tolist())
    if not len(splits.train["label"]):
        raise ConfigError(f"data.normal_classes={normal_classes}: the train split has no image of these classes")
    splits.info = DataInfo(
        task="anomaly",
        spatial_dims=info.spatial_dims,
        in_channels=info.in_channels,
        num_classes=2,
        num_seg_classes=2 if "mask" in splits.train else 0,
        class_names=CLASS_NAMES,
        positive_class=ABNORMAL,
        average="binary",
    )
    return splits
