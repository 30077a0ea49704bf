"""``data.synthetic``: images from ``medimg synth sample`` mixed into the training split only.

``data.synthetic=<manifest.csv>`` (columns ``image`` and ``label``; paths relative to it)
adds ``round(data.synthetic_ratio x real training images)`` synthetic images, drawn at random
(``data.seed``) from the manifest, to the training split (``data.synthetic_mode=add``), or trains
on them alone (``replace``: train on synthetic, test on real). Validation and test splits are
never touched, so every number a run reports is measured on real images.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medimg_cli.data import Splits
from medimg_cli.errors import ConfigError
from medimg_cli.fileio import read_csv

MODES = ("add", "replace")


def add_synthetic(splits: Splits, cfg: Mapping[str, Any]) -> Splits:
    """``splits`` with the synthetic images ``cfg`` asks for in (or as) its training split."""
    path = Path(str(cfg["synthetic"])).expanduser()
    ratio, mode = cfg.get("synthetic_ratio", 1.0), cfg.get("synthetic_mode", "add")
    if mode not in MODES:
        raise ConfigError(f"data.synthetic_mode={mode} is not one of: {', '.join(MODES)}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
        raise ConfigError(f"data.synthetic_ratio={ratio} must be a number > 0 (synthetic images per real one)")
    if splits.info.task != "classification" or splits.info.multilabel:
        raise ConfigError(
            f"data.synthetic holds images with one class label; data.task={splits.info.task} cannot use it"
        )
    rows = read_manifest(path)
    real = len(splits.train["image"])
    count = round(ratio * real)
    if count > len(rows):
        raise ConfigError(f"{path} holds {len(rows)} images; data.synthetic_ratio={ratio} x {real} real training "
                          f"images needs {count}: sample more (synth.per_class) or lower the ratio")  # fmt: skip
    chosen = torch.randperm(len(rows), generator=torch.Generator().manual_seed(int(cfg.get("seed", 0))))[:count]
    images, labels = load_images([rows[i] for i in chosen.tolist()], path, splits)
    keep = slice(real) if mode == "add" else slice(0)
    train = {"image": torch.cat([splits.train["image"][keep], images]),
             "label": torch.cat([splits.train["label"][keep], labels])}  # fmt: skip
    digest = hashlib.sha256(splits.fingerprint.encode() + images.numpy().tobytes()).hexdigest()[:16]
    names = splits.info.class_names
    record = {"manifest": str(path), "mode": mode, "ratio": ratio, "images": count,
              "real_images": real if mode == "add" else 0,
              "per_class": dict(Counter(names[k] for k in labels.tolist())),
              "generators": sorted({rows[i].get("generator", "") for i in chosen.tolist()})}  # fmt: skip
    return dataclasses.replace(
        splits, train=train, fingerprint=digest, synthetic=record, **_train_lists(splits, count, keep)
    )


def read_manifest(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ConfigError(f"data.synthetic={path} does not exist; pass the manifest.csv of medimg synth sample")
    rows = read_csv(path)
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise ConfigError(f"{path}: expected a CSV with columns image,label (as medimg synth sample writes)")
    return rows


def load_images(rows: list[dict[str, str]], path: Path, splits: Splits) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' images ``(N, C, *spatial)`` and labels ``(N,)``, checked against the real data."""
    shape, names = tuple(splits.train["image"].shape[1:]), list(splits.info.class_names)
    images, labels = [], []
    for row in rows:
        file = path.parent / row["image"]
        try:
            image = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ConfigError(f"{file}: cannot read it as a .npy image ({error})") from None
        if tuple(image.shape) != shape:
            raise ConfigError(f"{file}: shape {list(image.shape)}, but the real images are {list(shape)}; "
                              "sample from a generator trained on this data at this size")  # fmt: skip
        if row["label"] not in names:
            raise ConfigError(f"{file}: label '{row['label']}' is not a class of this data ({', '.join(names)})")
        images.append(torch.from_numpy(image).float())
        labels.append(names.index(row["label"]))
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _train_lists(splits: Splits, count: int, keep: slice) -> dict[str, Any]:
    """The per-sample lists of the training split (ids, file names, geometry, metadata) for the
    mixed split: the real samples kept, then ``count`` synthetic ones (anonymous, no geometry)."""
    changed: dict[str, Any] = {}
    for field, extra in (("ids", "synthetic"), ("names", "synthetic"), ("pixel_spacing", None), ("sizes", None),
                         ("affines", None), ("originals", None)):  # fmt: skip
        lists = getattr(splits, field)
        if lists is not None and "train" in lists:
            fill = [f"{extra}_{i:05d}" if extra else None for i in range(count)]
            changed[field] = {**lists, "train": lists["train"][keep] + fill}
    if splits.meta and "train" in splits.meta:
        columns = {c: v[keep] + ["synthetic"] * count for c, v in splits.meta["train"].items()}
        changed["meta"] = {**splits.meta, "train": columns}
    return changed
