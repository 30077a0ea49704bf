"""Augmentation recipes, applied to whole batches on the training device.

``augment=<name>`` picks a recipe registered here; the recipe's YAML keys are its keyword
arguments. A recipe maps a batch dict (``image`` ``(B, C, *spatial)``, optional ``mask``
``(B, 1, *spatial)``) to an augmented batch, drawing independently per sample from the global
torch RNG of the batch's device (saved in checkpoints, so resumed runs draw the same).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from medimg_cli.errors import ConfigError, check_arguments
from medimg_cli.registry import Registry

Batch = dict[str, torch.Tensor]
Recipe = Callable[[Batch], Batch]
RECIPES: Registry[Callable[..., Recipe]] = Registry("augment recipe")


@RECIPES.register("none")
def no_augmentation() -> Recipe:
    """The identity recipe."""
    return lambda batch: batch


@RECIPES.register("flip")
def random_flip(prob: float = 0.5, axes: tuple[int, ...] = (0, 1)) -> Recipe:
    """Flip each sample along each spatial axis in ``axes`` with probability ``prob``.

    Images and masks get the same flips, so labels stay exact.

    Args:
        prob: probability of a flip, per sample and axis.
        axes: spatial axes (0 = first spatial axis) that may be flipped.
    """

    def apply(batch: Batch) -> Batch:
        image = batch["image"]
        out = dict(batch)
        for axis in axes:
            dim = 2 + axis
            flip = torch.rand(image.shape[0], device=image.device) < prob
            shape = (-1,) + (1,) * (image.dim() - 1)
            for key in ("image", "mask"):
                if key in out:
                    out[key] = torch.where(flip.view(shape), out[key].flip(dim), out[key])
        return out

    return apply


def build_augment(cfg: Mapping, spatial_dims: int) -> Recipe:
    """Build the recipe ``cfg["name"]`` with the other keys of ``cfg`` as its arguments."""
    factory = RECIPES.get(cfg["name"])
    args = {key: value for key, value in cfg.items() if key != "name"}
    check_arguments("augment", f"recipe '{cfg['name']}'", factory, args)
    if "axes" in args and any(not 0 <= a < spatial_dims for a in args["axes"]):
        raise ConfigError(f"augment.axes={list(args['axes'])} must be spatial axes in 0..{spatial_dims - 1}")
    return factory(**args)
