"""The transform registry and what every random transform shares.

A transform is registered under the name that recipes use as a key (``rotate:``,
``noise:``...); its YAML mapping holds its constructor arguments. Every transform has a
``prob`` and draws independently per sample from the global torch RNG of the batch's device,
so a seeded run (and a resumed one, whose RNG state is restored) draws the same parameters.
Drawn parameters come back as ``Params``: per-sample tensors, always with an ``applied``
``(B,)`` boolean, so that previews can list what was done to which image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medimg_cli.registry import Registry

Params = dict[str, torch.Tensor]
KINDS = ("geometric", "physics", "intensity", "mix")  # also the order in which a recipe applies them


def uniform(shape: int | Sequence[int], low: float, high: float, device: torch.device) -> torch.Tensor:
    """Samples from U(low, high) of ``shape`` on ``device``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return low + (high - low) * torch.rand(shape, device=device)


class RandomTransform:
    """Base of all transforms: a probability per sample and a ``check`` against the data.

    Args:
        prob: probability that a sample is transformed.
    """

    KIND = ""  # one of KINDS
    MODALITY: str | None = None  # "mri" or "ct" for modality-specific corruptions

    def __init__(self, prob: float = 0.5) -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f"prob={prob} must be in [0, 1]")
        self.prob = float(prob)

    def applied(self, batch: int, device: torch.device) -> torch.Tensor:
        """``(B,)`` booleans: which samples this transform changes."""
        return torch.rand(batch, device=device) < self.prob

    def check(self, spatial_dims: int) -> None:
        """Raise ``ValueError`` when the arguments cannot work on ``spatial_dims``-D data."""


class ImageTransform(RandomTransform):
    """A transform of image intensities only (masks and labels unchanged)."""

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, Params]:
        """``(B, C, *spatial)`` -> same shape, and the drawn parameters."""
        raise NotImplementedError


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``(B,)`` values to broadcast over ``like`` ``(B, ...)``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


TRANSFORMS: Registry[type[RandomTransform]] = Registry("augment transform")
