"""CT corruptions through the Radon transform (Musa: CT is reconstructed from projections).

``radon`` projects square images along parallel rays at the given angles; ``fbp`` reconstructs
them with the ramp-filtered back-projection. Both are batched ``grid_sample`` calls on the
images' device, processed a few angles at a time to bound memory, and follow
``skimage.transform.radon`` / ``iradon`` conventions (sinogram detector positions centred on
the image centre, angles in degrees, ``pi / (2 * angles)`` scaling), against which the tests
check them on the Shepp-Logan phantom.

The ``sinogram`` transform projects each 2D image (each axial slice of a volume, as
parallel-beam CT reconstructs slice by slice), adds Gaussian noise to the line integrals
(a lower dose) and/or keeps fewer, evenly spaced projection angles (sparse-view CT), and
reconstructs. Images are padded to their diagonal first, so nothing outside the inscribed
circle is lost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medimg_cli.augment.intensity import _range
from medimg_cli.augment.transforms import TRANSFORMS, ImageTransform, per_sample, uniform

ANGLE_CHUNK = 16  # angles per grid_sample call: memory grows with chunk x images x pixels


def _centred(size: int, device: torch.device) -> torch.Tensor:
    """Pixel positions relative to the centre pixel ``size // 2`` (scikit-image's convention)."""
    return torch.arange(size, device=device, dtype=torch.float32) - size // 2


def _normalised(index: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel index -> ``grid_sample`` coordinate with ``align_corners=False``."""
    return (2 * index + 1) / size - 1


def radon(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Parallel-beam projections of square images.

    Args:
        images: ``(N, S, S)``, zero outside the inscribed circle for an exact transform.
        angles: ``(A,)`` projection angles in degrees.

    Returns:
        Sinograms ``(N, A, S)``: line integrals (sums of pixel values) per angle and detector.
    """
    size = images.shape[-1]
    axis = _centred(size, images.device)
    row, column = torch.meshgrid(axis, axis, indexing="ij")
    out = []
    for chunk in torch.deg2rad(angles.float()).split(ANGLE_CHUNK):
        cos, sin = chunk.cos()[:, None, None], chunk.sin()[:, None, None]
        # the image rotated by each angle: output (column, row) samples input (cos c + sin r, -sin c + cos r)
        x = cos * column + sin * row
        y = -sin * column + cos * row
        grid = torch.stack((_normalised(x + size // 2, size), _normalised(y + size // 2, size)), -1)
        stacked = images[None].expand(len(chunk), -1, -1, -1)  # (a, N, S, S): the images once per angle
        rotated = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.append(rotated.sum(2).transpose(0, 1))  # sum over rows -> (N, a, S)
    return torch.cat(out, 1)


def ramp_filter(size: int, device: torch.device) -> torch.Tensor:
    """The band-limited ramp (Ram-Lak) filter's frequency response for ``size`` FFT points,
    built from its spatial form (Kak & Slaney, eq. 61) to avoid the DC offset of a sampled ramp."""
    n = torch.cat([torch.arange(1, size // 2 + 1, 2), torch.arange(size // 2 - 1, 0, -2)]).to(device)
    spatial = torch.zeros(size, device=device)
    spatial[0] = 0.25
    spatial[1::2] = -1 / (math.pi * n.float()) ** 2
    return 2 * torch.fft.fft(spatial).real


def fbp(sinograms: torch.Tensor, angles: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Filtered back-projection.

    Args:
        sinograms: ``(N, A, S)`` as ``radon`` returns them.
        angles: ``(A,)`` angles in degrees.
        weights: optional ``(N, A)`` 0/1 per angle: only angles with weight 1 are used
            (sparse-view), and the scaling uses their count.

    Returns:
        Images ``(N, S, S)``.
    """
    count, views, size = sinograms.shape
    device = sinograms.device
    padded = max(64, 2 ** math.ceil(math.log2(2 * size)))
    spectrum = torch.fft.fft(sinograms, n=padded, dim=-1) * ramp_filter(padded, device)
    filtered = torch.fft.ifft(spectrum, dim=-1).real[..., :size]
    if weights is None:
        weights = torch.ones(count, views, device=device)
    filtered = filtered * weights[..., None]
    axis = _centred(size, device)
    row, column = torch.meshgrid(axis, axis, indexing="ij")
    image = torch.zeros(count, size * size, device=device)
    chunks = torch.deg2rad(angles.float()).split(ANGLE_CHUNK)
    for start, chunk in zip(range(0, views, ANGLE_CHUNK), chunks, strict=True):
        # detector position of every pixel at every angle of the chunk: t = c cos - r sin
        t = column.flatten()[None] * chunk.cos()[:, None] - row.flatten()[None] * chunk.sin()[:, None]  # (a, S*S)
        rows = _normalised(torch.arange(len(chunk), device=device, dtype=torch.float32), len(chunk))
        grid = torch.stack((_normalised(t + size // 2, size), rows[:, None].expand_as(t)), -1)
        part = filtered[None, :, start : start + len(chunk)]  # (1, N, a, S): the chunk's angles as image rows
        image += F.grid_sample(part, grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0].sum(1)
    scale = math.pi / (2 * weights.sum(1).clamp_min(1))
    return (image * scale[:, None]).view(count, size, size)


def sparse_angles(views: torch.Tensor, total: int) -> torch.Tensor:
    """``(N, total)`` 0/1 weights selecting ``views[i]`` evenly spaced angles of ``total``."""
    index = torch.arange(total, device=views.device)
    step = index[None] * views[:, None].float() / total
    previous = (index[None] - 1) * views[:, None].float() / total
    return ((step.floor() != previous.floor()) | (index[None] == 0)).float()


@TRANSFORMS.register("sinogram")
class Sinogram(ImageTransform):
    """Project, corrupt the sinogram, reconstruct (low-dose and sparse-view CT).

    Args:
        prob: probability per sample.
        angles: projection angles of a full scan over 180 degrees.
        views: ``[low, high]`` number of angles kept (at most ``angles``; evenly spaced).
        noise: ``[low, high]`` standard deviation of the noise added to the line integrals, as
            a fraction of the sample's largest line integral.
    """

    KIND = "physics"
    MODALITY = "ct"

    def __init__(
        self, prob: float = 0.3, angles: int = 180, views: Sequence[int] = (60, 180), noise: Sequence[float] = (0, 0.02)
    ) -> None:
        super().__init__(prob)
        self.angles = int(angles)
        self.views = tuple(int(v) for v in _range("views", views, 1))
        self.noise = _range("noise", noise, 0.0)
        if self.views[1] > self.angles:
            raise ValueError(f"views={list(views)} cannot exceed angles={self.angles}")

    def __call__(self, image):
        batch, channels, *spatial = image.shape
        device = image.device
        applied = self.applied(batch, device)
        views = torch.randint(self.views[0], self.views[1] + 1, (batch,), device=device)
        noise = uniform(batch, *self.noise, device)
        slices = image.reshape(-1, *spatial[-2:])  # (B*C*[D], H, W)
        per_image = slices.shape[0] // batch
        height, width = spatial[-2:]
        side = math.ceil(math.sqrt(2) * max(height, width))
        top, left = (side - height) // 2, (side - width) // 2
        low = per_sample(image.flatten(1).min(1).values, image).reshape(batch, 1).repeat_interleave(per_image, 0)
        square = F.pad(slices - low[..., None], (left, side - width - left, top, side - height - top))
        angles = torch.arange(self.angles, device=device) * (180 / self.angles)
        sinograms = radon(square, angles)
        peak = sinograms.reshape(batch, -1).amax(1).repeat_interleave(per_image)
        std = (noise.repeat_interleave(per_image) * peak)[:, None, None]
        sinograms = sinograms + torch.randn_like(sinograms) * std
        weights = sparse_angles(views, self.angles).repeat_interleave(per_image, 0)
        recon = fbp(sinograms, angles, weights)[:, top : top + height, left : left + width] + low[..., None]
        out = torch.where(per_sample(applied, image), recon.reshape(image.shape).to(image.dtype), image)
        return out, {"applied": applied, "views": views.float(), "noise": noise}
