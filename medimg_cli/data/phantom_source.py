"""The ``phantom`` data source: splits of the synthetic lesion phantom (see ``phantom.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medimg_cli.data import SOURCES, DataInfo, Splits, fingerprint, keys_for_task
from medimg_cli.data.pairs import deformed_pairs
from medimg_cli.data.phantom import CLASS_NAMES, NORMALIZATIONS, generate_phantom, modality_views
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
    registers, modalities = cfg["task"] == "registration", _modalities(cfg)
    arrays = generate_phantom(
        cfg["num_samples"],
        size=cfg["image_size"],
        spatial_dims=cfg["spatial_dims"],
        seed=cfg["seed"],
        mask_classes=cfg["mask_classes"],
        normalize=cfg.get("normalize", "minmax") if modalities == 1 else "none",
        organ_labels=registers,
        noise=(0.02, 0.06) if modalities == 1 else (0.0, 0.0),  # each modality adds its own
        lesion_layer=modalities > 1,
    )
    if modalities > 1:
        layers = (arrays["image"][:, 0], arrays.pop("lesions")[:, 0])
        views = modality_views(*layers, modalities, cfg["seed"], cfg.get("normalize", "minmax"))
        keep = _kept_modalities(cfg.get("keep_modalities"), modalities)
        arrays["image"], modalities = views[:, keep], len(keep)
    sites = _scanner_sites(arrays, cfg.get("sites", 0), cfg["seed"])
    class_names = CLASS_NAMES
    if cfg["binary"]:  # malignant vs the rest: the binary question of most screening papers
        arrays["label"] = (arrays["label"] == CLASS_NAMES.index("malignant")).astype(arrays["label"].dtype)
        class_names = ("not_malignant", "malignant")
    if registers:  # moving = each phantom under a known random deformation, fixed = the phantom
        pairs = deformed_pairs(torch.from_numpy(arrays["image"]), torch.from_numpy(arrays["mask"]), cfg["seed"])
        arrays |= {key: pairs[key].numpy() for key in ("image", "mask", "landmarks")}
    info = DataInfo(
        task=cfg["task"],
        spatial_dims=cfg["spatial_dims"],
        in_channels=2 * modalities if registers else modalities,
        num_classes=len(class_names),
        num_seg_classes=cfg["mask_classes"] + registers,  # registration labels the organ too
        class_names=class_names,
        modalities=modalities,
        landmarks=registers,
    )
    keys = keys_for_task(cfg["task"]) + (("landmarks",) if registers else ())
    index = split_indices(cfg["num_samples"], tuple(cfg["split"]), cfg["seed"])
    splits = {name: {key: torch.from_numpy(arrays[key][idx]) for key in keys} for name, idx in index.items()}
    meta = {name: {"site": [sites[i] for i in idx]} for name, idx in index.items()} if sites else None
    return Splits(**splits, info=info, fingerprint=fingerprint(arrays), meta=meta)


def _modalities(cfg: Mapping) -> int:
    """``data.modalities``: how many synthetic modalities each phantom is seen in (``phantom.modality_views``)."""
    count = cfg.get("modalities", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"data.modalities={count} must be a whole number of modalities (1: one image)")
    return count


def _kept_modalities(keep: Any, modalities: int) -> list[int]:
    """``data.keep_modalities`` (1-based, e.g. [2]: the second alone) as channel indices; null: all."""
    if keep is None:
        return list(range(modalities))
    chosen = list(keep) if isinstance(keep, Sequence) and not isinstance(keep, str) else [keep]
    if not chosen or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= modalities for k in chosen):
        raise ConfigError(f"data.keep_modalities={keep}: modality numbers from 1 to data.modalities={modalities}")
    return [k - 1 for k in chosen]


def _scanner_sites(arrays: dict[str, np.ndarray], sites: int, seed: int) -> list[str] | None:
    """With ``data.sites=K`` > 0: give each phantom a site (``site_1`` ... ``site_K``, uniformly at
    random) whose scanner scales, shifts and adds noise to its intensities, in place: site k of K has
    gain 0.7 to 1.3, offset -0.1 to 0.1 and noise sd 0 to 0.1 (spread evenly), the shift between
    hospitals that federated learning meets. ``meta["site"]`` names them (``data.site_column=site``)."""
    if not sites:
        return None
    if not isinstance(sites, int) or sites < 1:
        raise ConfigError(f"data.sites={sites} must be a whole number of sites (0: one scanner)")
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the phantoms stay those of data.seed
    site = rng.integers(0, sites, size=len(arrays["label"]))
    spread = np.linspace(0, 1, sites) if sites > 1 else np.zeros(1)
    gain, offset, noise = 0.7 + 0.6 * spread, -0.1 + 0.2 * spread, 0.1 * spread
    shape = (-1,) + (1,) * (arrays["image"].ndim - 1)
    image = arrays["image"] * gain[site].reshape(shape) + offset[site].reshape(shape)
    image += noise[site].reshape(shape) * rng.standard_normal(image.shape)
    arrays["image"] = image.astype(np.float32)
    return [f"site_{k + 1}" for k in site]
