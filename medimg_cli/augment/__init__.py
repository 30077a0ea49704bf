"""Augmentation recipes, applied to whole batches on the training device.

``augment=<recipe>`` picks ``conf/augment/<recipe>.yaml``. A recipe is data, not code: every
key except ``name``, ``padding`` and ``modality`` is a registered transform (``rotate``,
``noise``, ``gibbs``...; see ``TRANSFORMS``) whose mapping holds its arguments, so any
parameter can be overridden (``augment.rotate.degrees=15``), a transform switched off
(``augment.rotate.prob=0``) or added (``+augment.noise.prob=0.5``).

A batch dict (``image`` ``(B, C, *spatial)``, optional ``mask`` ``(B, 1, *spatial)`` and
``label``) goes through four stages in a fixed order, whatever the order in the YAML file:

1. geometric (flip, zoom, rotate, translate, crop, elastic): one resampling per sample,
   bilinear for images and nearest-neighbour with the identical grid for masks;
2. physics (MRI k-space ``gibbs``, ``undersample``, ``spike``; CT ``sinogram``): images only,
   the transforms of the recipe's ``modality`` (``mri``, ``ct`` or ``any``);
3. intensity (brightness, contrast, gamma, blur, noise): images only;
4. mix (cutmix, mixup): samples and labels mixed with a partner in the batch.

Every transform draws independently per sample from the global torch RNG of the batch's
device (saved in checkpoints, so resumed runs draw the same). Only training batches are
augmented.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from medimg_cli.augment import fourier, intensity, mix, radon  # noqa: F401  (importing registers the transforms)
from medimg_cli.augment.geometric import GeometricStage
from medimg_cli.augment.transforms import KINDS, TRANSFORMS, Params, RandomTransform
from medimg_cli.data import DataInfo
from medimg_cli.errors import ConfigError, check_arguments, unknown_choice

Batch = dict[str, torch.Tensor]
RECIPE_KEYS = ("name", "padding", "modality")  # recipe settings; every other key is a transform
MODALITIES = ("any", "mri", "ct")
# the intensity transforms' order within their stage: blur before noise, so noise stays white
_INTENSITY_ORDER = ("brightness", "contrast", "gamma", "blur", "noise")


class Augmenter:
    """A built recipe: call it on a batch to get the augmented batch.

    Args:
        name: the recipe's name.
        transforms: transform name -> built transform (those with ``prob > 0``).
        padding: padding mode of the geometric resampling.
    """

    def __init__(self, name: str, transforms: dict[str, RandomTransform], padding: str = "zeros") -> None:
        self.name = name
        self.transforms = transforms
        kinds = {kind: {n: t for n, t in transforms.items() if t.KIND == kind} for kind in KINDS}
        self.geometric = GeometricStage(kinds["geometric"], padding) if kinds["geometric"] else None
        rank = {n: i for i, n in enumerate(_INTENSITY_ORDER)}
        self.images = [
            *sorted(kinds["physics"].items()),
            *sorted(kinds["intensity"].items(), key=lambda item: rank.get(item[0], len(rank))),
        ]
        self.mixes = sorted(kinds["mix"].items())

    def __call__(self, batch: Batch, record: dict[str, Params] | None = None) -> Batch:
        """Augment ``batch``; when ``record`` is a dict, each transform's drawn parameters go there."""
        record = {} if record is None else record
        if self.geometric is not None:
            batch = self.geometric(batch, record)
        for name, transform in self.images:
            image, record[name] = transform(batch["image"])
            batch = {**batch, "image": image}
        for name, transform in self.mixes:
            batch, record[name] = transform(batch)
        return batch

    def order(self) -> list[str]:
        """Transform names in the order they are applied."""
        moved = self.geometric.transforms if self.geometric else {}
        first = [n for n in (*GeometricStage.ORDER, *GeometricStage.FIELDS) if n in moved]
        return first + [n for n, _ in self.images] + [n for n, _ in self.mixes]


def describe(record: dict[str, Params], order: list[str], size: int) -> list[str]:
    """One line per sample of what was applied, e.g. ``rotate(degrees=[23.1]); flip(axis1)``.

    Args:
        record: the parameters an ``Augmenter`` call drew.
        order: ``Augmenter.order()``.
        size: samples in the batch.
    """
    host = {name: {k: v.detach().cpu() for k, v in params.items()} for name, params in record.items()}
    lines = []
    for index in range(size):
        parts = []
        for name in order:
            params = host.get(name)
            if params is None or not bool(params["applied"][index]):
                continue
            values = [
                key if value.dtype == torch.bool else f"{key}={_format(value[index])}"
                for key, value in params.items()
                if key != "applied" and (value.dtype != torch.bool or bool(value[index]))
            ]
            parts.append(f"{name}({', '.join(values)})")
        lines.append("; ".join(parts) or "none")
    return lines


def _format(value: torch.Tensor) -> str:
    if value.dim() == 0:
        return f"{float(value):.4g}" if value.is_floating_point() else str(int(value))
    return "[" + ", ".join(_format(v) for v in value) + "]"


def build_augment(cfg: Mapping[str, Any], info: DataInfo) -> Augmenter:
    """Build the recipe ``cfg`` (the ``augment`` config group) for data described by ``info``.

    Raises:
        ConfigError: an unknown transform, a bad argument, or a transform the data cannot take.
    """
    modality = cfg.get("modality", "any")
    if modality not in MODALITIES:
        raise unknown_choice("augment.modality", modality, MODALITIES)
    transforms: dict[str, RandomTransform] = {}
    for name, args in cfg.items():
        if name in RECIPE_KEYS:
            continue
        cls = TRANSFORMS.get(name)  # unknown names list the valid ones
        if not isinstance(args, Mapping):
            raise ConfigError(f"augment.{name} must be a mapping of arguments, e.g. augment.{name}.prob=0.5")
        check_arguments(f"augment.{name}", f"transform '{name}'", cls, dict(args))
        try:
            transform = cls(**args)
            transform.check(info.spatial_dims)
            if isinstance(transform, mix.MixTransform):
                if not info.classifies:
                    raise ValueError(f"{name} mixes labels; data.task={info.task} has none")
                transform.bind(info.num_classes, info.multilabel, info.segments)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"augment.{name}: {error}") from None
        if transform.prob > 0 and (modality == "any" or transform.MODALITY in (None, modality)):
            transforms[name] = transform
    return Augmenter(cfg["name"], transforms, cfg.get("padding", "zeros"))
