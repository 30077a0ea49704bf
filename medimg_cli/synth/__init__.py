"""Synthetic images from class-conditional generative models (``medimg synth``).

``synth=dcgan`` (``gan.py``) and ``synth=diffusion`` (``diffusion.py``) train on the training
split of any classifying source, scaled to [-1, 1] by the split's intensity range (kept in the
checkpoint so that samples come back in the data's own range). ``run.py`` trains one, ``sample.py``
writes images and the manifest ``data.synthetic`` mixes into training, ``quality.py`` measures them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medimg_cli.errors import ConfigError, check_arguments, unknown_choice
from medimg_cli.synth.diffusion import ConditionalDiffusion
from medimg_cli.synth.gan import ConditionalGAN

GENERATORS: dict[str, type[nn.Module]] = {"dcgan": ConditionalGAN, "diffusion": ConditionalDiffusion}
LOOP_KEYS = ("name", "epochs", "batch_size", "sample_every", "grid_per_class")  # the loop's, not the network's


def generator_args(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``synth`` keys that are the generator's constructor arguments (checked against it)."""
    name = cfg.get("name")
    if name not in GENERATORS:
        raise unknown_choice("synth", str(name), GENERATORS)
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k not in LOOP_KEYS}
    check_arguments("synth", f"generator '{name}'", GENERATORS[name], args)
    return args


def build_generator(name: str, image_shape: Sequence[int], num_classes: int, args: Mapping[str, Any]) -> nn.Module:
    """The generator ``name`` for images ``(C, *spatial)``; a size it cannot make is a ``ConfigError``."""
    try:
        return GENERATORS[name](tuple(image_shape), num_classes, **args)
    except ValueError as error:
        raise ConfigError(f"synth={name}: {error}; set data.image_size or synth.channels") from None


def to_unit(images: torch.Tensor, scale: Sequence[float]) -> torch.Tensor:
    """Images in the data's range ``scale = (low, high)`` -> [-1, 1]."""
    low, high = scale
    return (images - low) / max(high - low, 1e-12) * 2 - 1


def from_unit(images: torch.Tensor, scale: Sequence[float]) -> torch.Tensor:
    """[-1, 1] -> the data's range ``(low, high)`` (the inverse of ``to_unit``)."""
    low, high = scale
    return (images + 1) / 2 * (high - low) + low
