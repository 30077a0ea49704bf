"""MRI corruptions in k-space (Musa: MRI is acquired in the Fourier domain).

Each corruption takes the image's spatial FFT (``torch.fft.fftn``, orthonormal), changes the
spectrum, and returns the magnitude of the inverse FFT, as a magnitude MR image is made.
Images are shifted per sample to start at 0 before and back after, so z-scored images keep
their range and sign.

- ``gibbs``: keep the central fraction ``keep`` of k-space along every axis (truncation
  gives Gibbs ringing at edges).
- ``undersample``: keep a random subset of phase-encoding lines along ``axis`` plus a fully
  sampled centre (aliasing and blur of accelerated acquisitions).
- ``spike``: add ``count`` bright points to the spectrum (herringbone artefact), each of
  ``intensity`` times the spectrum's largest magnitude.

The ``*_kspace`` functions take explicit per-sample parameters; tests check them against
numpy's FFT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medimg_cli.augment.intensity import _range
from medimg_cli.augment.transforms import TRANSFORMS, ImageTransform, per_sample, uniform


def through_kspace(image: torch.Tensor, change: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``|IFFT(change(FFT(image - min)))| + min`` over the spatial axes of ``(B, C, *spatial)``."""
    dims = tuple(range(2, image.dim()))
    low = per_sample(image.flatten(1).min(1).values, image)
    spectrum = torch.fft.fftn(image - low, dim=dims, norm="ortho")
    return torch.fft.ifftn(change(spectrum), dim=dims, norm="ortho").abs().to(image.dtype) + low


def _frequencies(size: int, device: torch.device) -> torch.Tensor:
    """|frequency| of each FFT index as a fraction of Nyquist (0 at DC, 1 at the edge)."""
    return torch.fft.fftfreq(size, device=device).abs() * 2


def gibbs_kspace(image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Keep frequencies with ``|f| <= keep`` (fraction of Nyquist) on every axis, per sample.

    Args:
        image: ``(B, C, *spatial)``.
        keep: ``(B,)`` fractions in (0, 1]; 1 keeps everything.
    """

    def change(spectrum: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(spectrum.real, dtype=torch.bool)
        for axis, size in enumerate(spectrum.shape[2:]):
            shape = [spectrum.shape[0]] + [1] * (spectrum.dim() - 1)
            shape[2 + axis] = size
            inside = _frequencies(size, spectrum.device)[None] <= keep[:, None]  # (B, size)
            mask = mask & inside.view(shape)
        return spectrum * mask

    return through_kspace(image, change)


def undersample_kspace(image: torch.Tensor, lines: torch.Tensor, axis: int) -> torch.Tensor:
    """Zero the phase-encoding lines not in ``lines`` along spatial ``axis``.

    Args:
        image: ``(B, C, *spatial)``.
        lines: ``(B, spatial[axis])`` booleans in FFT index order, True = line acquired.
        axis: spatial axis of the phase encoding.
    """
    shape = [lines.shape[0]] + [1] * (image.dim() - 1)
    shape[2 + axis] = lines.shape[1]
    return through_kspace(image, lambda spectrum: spectrum * lines.view(shape))


def spike_kspace(image: torch.Tensor, positions: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """Add spikes of ``intensity * max|spectrum|`` at flat spectrum ``positions``.

    Args:
        image: ``(B, C, *spatial)``.
        positions: ``(B, K)`` flat indices into the spatial spectrum (same for every channel).
        intensity: ``(B, K)`` spike heights relative to the largest magnitude (0 = no spike).
    """

    def change(spectrum: torch.Tensor) -> torch.Tensor:
        batch, channels = spectrum.shape[:2]
        flat = spectrum.reshape(batch, channels, -1)
        peak = flat.abs().amax(-1, keepdim=True)  # (B, C, 1)
        values = intensity[:, None, :].to(flat.real.dtype) * peak
        index = positions[:, None, :].expand(batch, channels, -1)
        return flat.scatter_add(-1, index, values.to(flat.dtype)).reshape(spectrum.shape)

    return through_kspace(image, change)


class _KSpace(ImageTransform):
    KIND = "physics"
    MODALITY = "mri"


@TRANSFORMS.register("gibbs")
class Gibbs(_KSpace):
    """Truncate k-space to a central fraction drawn from ``keep`` (Gibbs ringing).

    Args:
        prob: probability per sample.
        keep: ``[low, high]`` range of the kept fraction of Nyquist, in (0, 1].
    """

    def __init__(self, prob: float = 0.3, keep: Sequence[float] = (0.4, 0.8)) -> None:
        super().__init__(prob)
        self.keep = _range("keep", keep, 1e-3)

    def __call__(self, image):
        applied = self.applied(image.shape[0], image.device)
        keep = torch.where(applied, uniform(image.shape[0], *self.keep, image.device), 1.0)
        return gibbs_kspace(image, keep), {"applied": applied, "keep": keep}


@TRANSFORMS.register("undersample")
class Undersample(_KSpace):
    """Acquire a random fraction ``keep`` of the phase-encoding lines along ``axis``; the
    central ``center`` fraction is always acquired.

    Args:
        prob: probability per sample.
        keep: ``[low, high]`` range of the fraction of lines acquired.
        center: fraction of lines around DC always acquired.
        axis: spatial axis of the phase encoding.
    """

    def __init__(self, prob: float = 0.3, keep: Sequence[float] = (0.3, 0.7), center: float = 0.08, axis: int = 0):
        super().__init__(prob)
        self.keep = _range("keep", keep, 0.0)
        self.center = float(center)
        self.axis = int(axis)

    def check(self, spatial_dims: int) -> None:
        if not 0 <= self.axis < spatial_dims:
            raise ValueError(f"axis={self.axis} must be a spatial axis in 0..{spatial_dims - 1}")

    def __call__(self, image):
        batch, size = image.shape[0], image.shape[2 + self.axis]
        applied = self.applied(batch, image.device)
        keep = uniform(batch, *self.keep, image.device)
        central = _frequencies(size, image.device) <= self.center  # (L,)
        # outer lines are kept with the probability that brings the expected total to `keep`
        outer = max(int((~central).sum()), 1)
        chance = ((keep * size - central.sum()) / outer).clamp(0, 1)
        lines = central | (torch.rand(batch, size, device=image.device) < chance[:, None])
        lines = lines | ~applied[:, None]
        return undersample_kspace(image, lines, self.axis), {"applied": applied, "lines": lines.float().mean(1)}


@TRANSFORMS.register("spike")
class Spike(_KSpace):
    """Add ``count`` spikes at random k-space positions, each ``intensity`` times the peak.

    Args:
        prob: probability per sample.
        count: ``[low, high]`` number of spikes (integers).
        intensity: ``[low, high]`` range of the spike height relative to the spectrum peak.
    """

    def __init__(self, prob: float = 0.2, count: Sequence[int] = (1, 2), intensity: Sequence[float] = (0.05, 0.2)):
        super().__init__(prob)
        self.count = tuple(int(c) for c in _range("count", count, 1))
        self.intensity = _range("intensity", intensity, 0.0)

    def __call__(self, image):
        batch, device = image.shape[0], image.device
        total = int(torch.tensor(image.shape[2:]).prod())
        applied = self.applied(batch, device)
        count = torch.randint(self.count[0], self.count[1] + 1, (batch,), device=device) * applied
        positions = torch.randint(1, total, (batch, self.count[1]), device=device)  # never DC
        active = torch.arange(self.count[1], device=device)[None] < count[:, None]
        height = uniform((batch, self.count[1]), *self.intensity, device) * active
        return spike_kspace(image, positions, height), {"applied": applied, "spikes": count.float()}
