"""The ``phantom`` data source: splits of the synthetic lesion phantom (see ``phantom.py``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medimg_cli.data import SOURCES, DataInfo, Splits, fingerprint, keys_for_task
from medimg_cli.data.phantom import CLASS_NAMES, NORMALIZATIONS, generate_phantom
from medimg_cli.data.splits import split_indices
from medimg_cli.errors import ConfigError, unknown_choice


@SOURCES.register("phantom")
def phantom_splits(cfg: Mapping) -> Splits:
    """Generate ``cfg.num_samples`` phantoms from ``cfg.seed`` and split them.

    The dataset and its split depend on ``data.seed`` only, so runs with different training
    seeds are evaluated on the same test images.
    """
    if cfg["spatial_dims"] not in (2, 3):
        raise ConfigError(f"data.spatial_dims={cfg['spatial_dims']} must be 2 or 3")
    if cfg.get("normalize", "minmax") not in NORMALIZATIONS:
        raise unknown_choice("data.normalize", cfg["normalize"], NORMALIZATIONS)
    if cfg["mask_classes"] not in (2, 3):
        raise ConfigError(f"data.mask_classes={cfg['mask_classes']} must be 2 or 3")
    arrays = generate_phantom(
        cfg["num_samples"],
        size=cfg["image_size"],
        spatial_dims=cfg["spatial_dims"],
        seed=cfg["seed"],
        mask_classes=cfg["mask_classes"],
        normalize=cfg.get("normalize", "minmax"),
    )
    class_names = CLASS_NAMES
    if cfg["binary"]:  # malignant vs the rest: the binary question of most screening papers
        arrays["label"] = (arrays["label"] == CLASS_NAMES.index("malignant")).astype(arrays["label"].dtype)
        class_names = ("not_malignant", "malignant")
    info = DataInfo(
        task=cfg["task"],
        spatial_dims=cfg["spatial_dims"],
        in_channels=1,
        num_classes=len(class_names),
        num_seg_classes=cfg["mask_classes"],
        class_names=class_names,
    )
    keys = keys_for_task(cfg["task"])
    index = split_indices(cfg["num_samples"], tuple(cfg["split"]), cfg["seed"])
    splits = {name: {key: torch.from_numpy(arrays[key][idx]) for key in keys} for name, idx in index.items()}
    return Splits(**splits, info=info, fingerprint=fingerprint(arrays))
