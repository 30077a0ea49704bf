"""Intensity transforms: brightness, contrast, gamma, Gaussian noise, Gaussian blur.

They change image values only, never masks or labels, with one draw per sample. No clipping:
images may be z-scored, and a range the network never sees in testing is worse than values
slightly outside [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medimg_cli.augment.transforms import TRANSFORMS, ImageTransform, per_sample, uniform


def _range(name: str, value: Sequence[float], low: float | None = None) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or pair[0] > pair[1] or (low is not None and pair[0] < low):
        bound = f" with low >= {low}" if low is not None else ""
        raise ValueError(f"{name}={list(value)} must be [low, high]{bound}")
    return pair


class _Ranged(ImageTransform):
    """An intensity transform with one value per sample drawn from a ``[low, high]`` range."""

    KIND = "intensity"
    LOW: float | None = None  # smallest allowed value of the range
    NEUTRAL = 0.0  # the value that leaves the image unchanged

    def __init__(self, prob: float, value: Sequence[float]) -> None:
        super().__init__(prob)
        self.range = _range(self.ARG, value, self.LOW)

    def draw(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,)`` applied flags and values (the neutral value where not applied)."""
        applied = self.applied(image.shape[0], image.device)
        value = uniform(image.shape[0], *self.range, image.device)
        return applied, torch.where(applied, value, torch.full_like(value, self.NEUTRAL))

    def __call__(self, image):
        applied, value = self.draw(image)
        return self.apply(image, value), {"applied": applied, self.ARG: value}


@TRANSFORMS.register("brightness")
class Brightness(_Ranged):
    """Add a constant drawn from ``shift`` to the whole image.

    Args:
        prob: probability per sample.
        shift: ``[low, high]`` range of the added value.
    """

    ARG = "shift"

    def __init__(self, prob: float = 0.5, shift: Sequence[float] = (-0.1, 0.1)) -> None:
        super().__init__(prob, shift)

    @staticmethod
    def apply(image: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return image + per_sample(shift, image)


@TRANSFORMS.register("contrast")
class Contrast(_Ranged):
    """Scale deviations from each channel's mean by a factor drawn from ``factor``.

    Args:
        prob: probability per sample.
        factor: ``[low, high]`` range of the factor (1 = unchanged).
    """

    ARG, LOW, NEUTRAL = "factor", 0.0, 1.0

    def __init__(self, prob: float = 0.5, factor: Sequence[float] = (0.75, 1.25)) -> None:
        super().__init__(prob, factor)

    @staticmethod
    def apply(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        mean = image.flatten(2).mean(-1).view(*image.shape[:2], *([1] * (image.dim() - 2)))
        return (image - mean) * per_sample(factor, image) + mean


@TRANSFORMS.register("gamma")
class Gamma(_Ranged):
    """Gamma curve ``x^gamma`` on each image rescaled to [0, 1], then mapped back to its range.

    Args:
        prob: probability per sample.
        gamma: ``[low, high]`` range of the exponent (1 = unchanged).
    """

    ARG, LOW, NEUTRAL = "gamma", 1e-3, 1.0

    def __init__(self, prob: float = 0.5, gamma: Sequence[float] = (0.7, 1.5)) -> None:
        super().__init__(prob, gamma)

    @staticmethod
    def apply(image: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        flat = image.flatten(1)
        low = per_sample(flat.min(1).values, image)
        span = per_sample(flat.max(1).values, image) - low
        unit = (image - low) / span.clamp_min(1e-8)
        return unit.clamp(0, 1).pow(per_sample(gamma, image)) * span + low


@TRANSFORMS.register("noise")
class Noise(_Ranged):
    """Add zero-mean Gaussian noise whose standard deviation is drawn from ``std``.

    Args:
        prob: probability per sample.
        std: ``[low, high]`` range of the standard deviation (image units).
    """

    ARG, LOW = "std", 0.0

    def __init__(self, prob: float = 0.5, std: Sequence[float] = (0.0, 0.05)) -> None:
        super().__init__(prob, std)

    @staticmethod
    def apply(image: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return image + torch.randn_like(image) * per_sample(std, image)


@TRANSFORMS.register("blur")
class Blur(_Ranged):
    """Gaussian blur with a standard deviation (pixels) drawn per sample from ``sigma``.

    Separable: one 1D convolution per axis, every sample with its own kernel (a grouped
    convolution over the batch), edges replicated.

    Args:
        prob: probability per sample.
        sigma: ``[low, high]`` range of the standard deviation in pixels.
    """

    ARG, LOW = "sigma", 0.0

    def __init__(self, prob: float = 0.5, sigma: Sequence[float] = (0.5, 1.0)) -> None:
        super().__init__(prob, sigma)

    @staticmethod
    def apply(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        radius = max(1, math.ceil(3 * float(sigma.max())))
        offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
        # sigma 0 (not applied) gives the unit impulse: exp(-x^2/0) is 1 at 0 and 0 elsewhere
        kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None].to(image.dtype) ** 2).clamp_min(1e-12))
        kernel = kernel / kernel.sum(1, keepdim=True)  # (B, K)
        batch, channels, *spatial = image.shape
        n = len(spatial)
        weight = kernel.repeat_interleave(channels, 0)  # (B*C, K): one kernel per sample and channel
        x = image.reshape(1, batch * channels, *spatial)
        conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
        for axis in range(n):
            shape = [1] * n
            shape[axis] = 2 * radius + 1
            pad = [0, 0] * n
            pad[2 * (n - 1 - axis)] = pad[2 * (n - 1 - axis) + 1] = radius
            x = conv(F.pad(x, pad, mode="replicate"), weight.view(batch * channels, 1, *shape), groups=batch * channels)
        return x.reshape(image.shape)
