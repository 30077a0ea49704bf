"""``medimg synth quality``'s recipe: the quality numbers of a synthetic manifest (``quality.py``)
against the real training split a medimg classifier was trained on.

Writes ``quality.json`` (Frechet distance, precision, recall, overall and per class, beside the
same numbers for the real test split, the floor a perfect generator would reach with this
many images), ``nearest.csv`` (each synthetic image, the position of its nearest real training
image in the split, no identifiers, and their distance) and ``closest_pairs.png`` (the closest
pairs, synthetic above real).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from medimg_cli.data.synthetic import load_images, read_manifest
from medimg_cli.errors import ConfigError
from medimg_cli.fileio import csv_text, write_atomic, write_json
from medimg_cli.pictures import Tile, grid_figure
from medimg_cli.reporting.plots import save_figure
from medimg_cli.synth.quality import frechet_distance, head_features, nearest_real, precision_recall
from medimg_cli.trained import load_trained

PAIRS = 8


def measure(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Measure ``cfg.manifest`` against the real data of the classifier ``cfg.classifier``."""
    trained = load_trained(Path(cfg.classifier), cfg.device)
    if trained.data.synthetic:
        raise ConfigError(f"{cfg.classifier} was trained with synthetic images; measure with one trained on real data")
    real = trained.data.train
    path = Path(str(cfg.manifest)).expanduser()
    images, labels = load_images(read_manifest(path), path, trained.data)
    try:
        features = {name: head_features(trained.model, part) for name, part in
                    (("real", real["image"]), ("synthetic", images), ("test", trained.data.test["image"]))}  # fmt: skip
        scores = {"synthetic": _scores(features["real"], features["synthetic"], cfg.k),
                  "real_test": _scores(features["real"], features["test"], cfg.k)}  # fmt: skip
    except ValueError as error:
        raise ConfigError(f"synth quality: {error}") from None
    names = trained.data.info.class_names
    per_class = {}
    for k, name in enumerate(names):
        mine, theirs = features["synthetic"][labels.numpy() == k], features["real"][real["label"].numpy() == k]
        if min(len(mine), len(theirs)) > max(cfg.k, 1):
            per_class[name] = _scores(theirs, mine, cfg.k)
    index, distance = nearest_real(images, real["image"])
    rows = [(i, j, f"{d:.6g}") for i, (j, d) in enumerate(zip(index.tolist(), distance.tolist(), strict=True))]
    write_atomic(out / "nearest.csv", csv_text(("synthetic", "nearest_real_train_position", "rms_distance"), rows))
    closest = distance.argsort()[:PAIRS].tolist()
    pairs = [[Tile(images[i], title=f"d={distance[i]:.3g}") for i in closest]]
    pairs.append([Tile(real["image"][index[i]]) for i in closest])
    save_figure(grid_figure(pairs, ["synthetic", "nearest real"]), out / "closest_pairs.png", palette=True)
    nearest = {"min": float(distance.min()), "median": float(distance.median())}  # in the data's intensity units
    space = f"pooled features before the classification head of {trained.payload['model']['name']} (not Inception)"
    result = {"manifest": str(path), "classifier": str(cfg.classifier), "feature_space": space,
              "images": len(images), "k": cfg.k, **scores, "per_class": per_class,
              "nearest_distance": nearest}  # fmt: skip
    write_json(out / "quality.json", result)
    return result


def _scores(real: np.ndarray, other: np.ndarray, k: int) -> dict[str, float]:
    precision, recall = precision_recall(real, other, k)
    return {"frechet": frechet_distance(real, other), "precision": precision, "recall": recall}
