"""A self-configuring plan for segmentation of file datasets, after nnU-Net (Isensee et al. 2021).

Keys set to ``auto`` are filled from a plan computed once from the training cases' fingerprint:

- ``data.spacing``: the median voxel spacing; on anisotropic data (the coarsest axis over 3x
  the finest) that axis takes the 10th percentile instead, so thin-slice cases are not blurred;
- ``data.patch_size``: the median shape after resampling, shrunk along its longest axis until two
  patches fit the memory budget, each axis a multiple of the network's downsampling;
- ``trainer.batch_size``: as many patches as fit the budget, at least 2, and no more than cover
  5% of the training voxels per step;
- ``data.normalize``: ``ct`` for CT (clip to the 0.5-99.5 percentiles of the foreground
  intensities, then z-score with the foreground mean and sd, ``data.intensity``), else ``zscore``;
- the ``dynunet`` model's ``kernels``, ``strides`` and ``filters`` (``network_plan``).

The memory estimate is coarse on purpose: ``BYTES_PER_FEATURE`` bytes per voxel and feature
channel of every encoder stage, calibrated so nnU-Net's default 3D plan (128^3 patches, batch
2, 32-320 filters) needs about 10 GB, which is what it takes on a GPU in mixed precision.
Everything the plan decides is written to ``plan.json`` and can be overridden by its key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medimg_cli.errors import ConfigError

PLANNED = ("spacing", "patch_size", "normalize")  # data keys a plan can fill
BYTES_PER_FEATURE = 56
MIN_PATCH = 16  # the smallest patch edge worth training on
MAX_FILTERS = {2: 512, 3: 320}
ANISOTROPY = 3.0
DEFAULT_MEMORY_GB = 4.0  # without trainer.memory_gb and a GPU: small patches a CPU trains in reasonable time


def wants_plan(cfg: Mapping) -> bool:
    """Whether any data key asks for the plan."""
    return any(cfg.get(key) == "auto" for key in PLANNED)


def network_plan(patch: Sequence[int], spacing: Sequence[float] | None) -> dict[str, list]:
    """nnU-Net's topology rule for MONAI's ``DynUNet``: per stage, halve an axis while it is at
    least 8 voxels and its spacing is within 2x the finest; 3-wide kernels on axes within 2x the
    finest spacing (1 on much coarser ones); filters 32, doubling per stage up to 320 (3D) or 512
    (2D). The patch is then rounded up to a multiple of the strides' product (``fit_patch``)."""
    dims = len(patch)
    size, step = list(patch), list(spacing) if spacing else [1.0] * dims
    kernels, strides = [[3 if s <= 2 * min(step) else 1 for s in step]], [[1] * dims]
    while len(strides) < (6 if dims == 3 else 7):
        finest = min(step)
        pool = [int(n >= 8 and s <= 2 * finest) for n, s in zip(size, step, strict=True)]
        if not any(pool):
            break
        size = [math.ceil(n / 2) if p else n for n, p in zip(size, pool, strict=True)]
        step = [s * 2 if p else s for s, p in zip(step, pool, strict=True)]
        strides.append([2 if p else 1 for p in pool])
        kernels.append([3 if s <= 2 * min(step) else 1 for s in step])
    filters = [min(32 * 2**k, MAX_FILTERS[dims]) for k in range(len(strides))]
    return {"kernels": kernels, "strides": strides, "filters": filters}


def divisor(strides: Sequence[Sequence[int]]) -> list[int]:
    """Per axis, the product of the strides: every input size must be a multiple of it."""
    return [math.prod(s[a] for s in strides) for a in range(len(strides[0]))]


def sample_bytes(patch: Sequence[int], network: Mapping[str, list]) -> float:
    """Estimated training memory of one patch, in bytes (see the module docstring)."""
    voxels, total = math.prod(patch), 0.0
    for stride, width in zip(network["strides"], network["filters"], strict=True):
        voxels /= math.prod(stride)
        total += voxels * width
    return total * BYTES_PER_FEATURE


def fit_patch(median: Sequence[int], spacing: Sequence[float] | None, budget: float) -> tuple[list[int], dict]:
    """The largest patch up to ``median`` (rounded up to the network's divisor) of which two fit ``budget``."""
    patch = [max(MIN_PATCH, int(n)) for n in median]
    while True:
        network = network_plan(patch, spacing)
        rounded = [math.ceil(n / d) * d for n, d in zip(patch, divisor(network["strides"]), strict=True)]
        network = network_plan(rounded, spacing)
        if 2 * sample_bytes(rounded, network) <= budget:
            return rounded, network
        longest = int(np.argmax([n * (s if spacing else 1) for n, s in zip(patch, spacing or patch, strict=True)]))
        if patch[longest] <= MIN_PATCH:
            need = 2 * sample_bytes([MIN_PATCH] * len(patch), network_plan([MIN_PATCH] * len(patch), spacing))
            raise ConfigError(
                f"trainer.memory_gb={budget / 1e9:g} is too small for two patches of the smallest size "
                f"{[MIN_PATCH] * len(patch)} (about {need / 1e9:.2f} GB); raise trainer.memory_gb"
            )
        patch[longest] = max(MIN_PATCH, int(patch[longest] * 0.9))


def target_spacing(spacings: np.ndarray) -> list[float]:
    """The median spacing per axis; the coarsest axis takes its 10th percentile on anisotropic data."""
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    others = np.delete(target, coarse)
    if len(others) and target[coarse] > ANISOTROPY * others.min():
        target[coarse] = max(np.percentile(spacings[:, coarse], 10), others.max())
    return [float(s) for s in target]


def make_plan(fingerprint: Mapping[str, Any], memory_gb: float) -> dict[str, Any]:
    """The plan (spacing, patch, batch, normalisation, network) for a dataset ``fingerprint``
    (``data/fingerprinting.py``) and a memory budget in GB."""
    shapes = np.asarray(fingerprint["shapes"], dtype=float)
    spacing = target_spacing(np.asarray(fingerprint["spacings"])) if fingerprint.get("spacings") else None
    if spacing is not None:
        scale = np.asarray(fingerprint["spacings"]) / np.asarray(spacing)
        shapes = shapes * scale
    median = [int(round(n)) for n in np.median(shapes, axis=0)]
    budget = memory_gb * 1e9
    patch, network = fit_patch(median, spacing, budget)
    per_patch = sample_bytes(patch, network)
    voxels = float(np.prod(shapes, axis=1).sum())
    cap = max(2, int(0.05 * voxels / math.prod(patch)))
    batch = max(2, min(int(budget // per_patch), cap))
    ct = str(fingerprint.get("modality") or "").upper() == "CT"
    return {
        "spacing": spacing,
        "median_shape": median,
        "patch_size": patch,
        "batch_size": batch,
        "normalize": "ct" if ct else "zscore",
        "intensity": fingerprint["foreground"] if ct else None,
        "network": network,
        "memory_gb": memory_gb,
        "estimated_gb": round(batch * per_patch / 1e9, 3),
        "fingerprint": dict(fingerprint),
    }


def memory_budget(memory_gb: float | None, device: Any) -> float:
    """``trainer.memory_gb``, or 80% of the GPU's memory when training on CUDA, else ``DEFAULT_MEMORY_GB``."""
    if memory_gb is not None:
        if not isinstance(memory_gb, (int, float)) or memory_gb <= 0:
            raise ConfigError(f"trainer.memory_gb={memory_gb!r} must be a positive number of GB, e.g. 8")
        return float(memory_gb)
    if getattr(device, "type", None) == "cuda":
        import torch

        return round(0.8 * torch.cuda.get_device_properties(device).total_memory / 1e9, 1)
    return DEFAULT_MEMORY_GB


NETWORK_KEYS = ("kernels", "strides", "filters")  # the dynunet model keys a plan can fill


def resolve_config(cfg: Any, plan: Mapping[str, Any]) -> None:
    """Write the plan's values into a composed train config's ``auto`` keys (``data.spacing``,
    ``data.patch_size``, ``data.normalize`` and ``data.intensity``, ``trainer.batch_size``, the
    ``dynunet`` model's topology), so ``config.yaml`` and checkpoints hold concrete values that
    ``medimg eval`` and ``export`` rebuild exactly."""
    from omegaconf import open_dict

    with open_dict(cfg):
        for key in PLANNED:
            if cfg.data.get(key) == "auto":
                cfg.data[key] = plan[key]
        if cfg.data.get("normalize") == "ct" and cfg.data.get("intensity") is None:
            cfg.data.intensity = plan["intensity"]
        if cfg.trainer.get("batch_size") == "auto":
            cfg.trainer.batch_size = plan["batch_size"]
    resolve_network(cfg, plan["network"])


def resolve_network(cfg: Any, network: Mapping[str, list]) -> None:
    """Write ``network`` (``network_plan``'s result) into the model keys that say ``auto``."""
    for key in NETWORK_KEYS:
        if cfg.model.get(key) == "auto":
            cfg.model[key] = network[key]
