"""Geometric transforms, fused into one resampling per sample.

Each transform draws its parameters per sample and contributes a forward map in
*physical* coordinates (normalised coordinates times the half image size, so a rotation is
a rotation even on non-square images). The stage composes them in a fixed order,

    forward = crop . translate . rotate . zoom . flip,

inverts the product once per sample, adds the elastic displacement, and samples every
image with one ``grid_sample`` call (bilinear / trilinear) and every mask with the identical
grid and nearest-neighbour interpolation, so mask values stay exact labels.

Coordinates follow ``torch.nn.functional.affine_grid`` (``align_corners=False``): grid order
is reversed spatial order, i.e. spatial axis ``a`` of an ``n``-D image is grid index
``n - 1 - a``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medimg_cli.augment.transforms import TRANSFORMS, Params, RandomTransform, uniform
from medimg_cli.data.native import PIXEL_MAPS

PADDING_MODES = ("zeros", "border", "reflection")


class GeometricTransform(RandomTransform):
    """A transform that moves pixels; ``draw`` gives per-sample forward maps."""

    KIND = "geometric"

    def draw(self, batch: int, shape: Sequence[int], device: torch.device) -> tuple[torch.Tensor, Params]:
        """Forward maps ``(B, n+1, n+1)`` in physical grid-order coordinates, and the drawn params."""
        raise NotImplementedError


def _eye(batch: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(n + 1, device=device).repeat(batch, 1, 1)


@TRANSFORMS.register("flip")
class Flip(GeometricTransform):
    """Mirror each sample along each axis in ``axes`` with probability ``prob`` (per axis).

    Args:
        prob: probability of a flip, per sample and axis.
        axes: spatial axes that may flip (0 = first spatial axis).
    """

    def __init__(self, prob: float = 0.5, axes: Sequence[int] = (0, 1)) -> None:
        super().__init__(prob)
        self.axes = tuple(axes)

    def check(self, spatial_dims: int) -> None:
        if any(not 0 <= a < spatial_dims for a in self.axes):
            raise ValueError(f"axes={list(self.axes)} must be spatial axes in 0..{spatial_dims - 1}")

    def flips(self, batch: int, device: torch.device) -> torch.Tensor:
        """``(B, len(axes))`` booleans: which axes flip for which sample."""
        return torch.rand(batch, len(self.axes), device=device) < self.prob

    def draw(self, batch, shape, device):
        n = len(shape)
        flips = self.flips(batch, device)
        matrix = _eye(batch, n, device)
        for column, axis in enumerate(self.axes):
            index = n - 1 - axis
            matrix[:, index, index] = 1 - 2 * flips[:, column].float()
        return matrix, self.params(flips)

    def params(self, flips: torch.Tensor) -> Params:
        """``applied`` plus one boolean per axis, ``axis0``, ``axis1``...: which axes flipped."""
        return {"applied": flips.any(1), **{f"axis{a}": flips[:, i] for i, a in enumerate(self.axes)}}


@TRANSFORMS.register("rotate")
class Rotate(GeometricTransform):
    """Rotate by angles drawn uniformly from ``[-degrees, degrees]``.

    In 2D one angle in the image plane; in 3D one angle about each axis (``degrees`` may be a
    list of three ranges, one per axis), composed as ``R0 @ R1 @ R2``.

    Args:
        prob: probability that a sample is rotated.
        degrees: maximum absolute angle(s) in degrees.
    """

    def __init__(self, prob: float = 0.5, degrees: float | Sequence[float] = 30.0) -> None:
        super().__init__(prob)
        self.degrees = degrees

    def _ranges(self, planes: int) -> list[float]:
        if isinstance(self.degrees, int | float):
            return [float(self.degrees)] * planes
        if len(self.degrees) != planes:
            raise ValueError(f"degrees={list(self.degrees)} must be one number or {planes} (one per rotation axis)")
        return [float(d) for d in self.degrees]

    def check(self, spatial_dims: int) -> None:
        self._ranges(1 if spatial_dims == 2 else 3)

    def draw(self, batch, shape, device):
        n = len(shape)
        applied = self.applied(batch, device)
        planes = [(0, 1)] if n == 2 else [(1, 2), (0, 2), (0, 1)]  # grid-order planes: about axis 0, 1, 2
        ranges = self._ranges(len(planes))
        angles = torch.stack([uniform(batch, -r, r, device) for r in ranges], 1) * applied[:, None]
        matrix = _eye(batch, n, device)
        radians = torch.deg2rad(angles)
        for plane, (i, j) in enumerate(planes):
            rotation = _eye(batch, n, device)
            cos, sin = radians[:, plane].cos(), radians[:, plane].sin()
            # positive = counter-clockwise as displayed (rows down), as skimage.transform.rotate
            rotation[:, i, i], rotation[:, i, j], rotation[:, j, i], rotation[:, j, j] = cos, sin, -sin, cos
            matrix = matrix @ rotation
        return matrix, {"applied": applied, "degrees": angles}


@TRANSFORMS.register("zoom")
class Zoom(GeometricTransform):
    """Scale about the centre by a factor from ``scale`` (same on every axis; > 1 zooms in).

    Args:
        prob: probability that a sample is zoomed.
        scale: ``[low, high]`` range of the factor.
    """

    def __init__(self, prob: float = 0.5, scale: Sequence[float] = (0.8, 1.2)) -> None:
        super().__init__(prob)
        self.scale = tuple(float(s) for s in scale)

    def check(self, spatial_dims: int) -> None:
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale={list(self.scale)} must be [low, high] with 0 < low <= high")

    def draw(self, batch, shape, device):
        n = len(shape)
        applied = self.applied(batch, device)
        factor = torch.where(applied, uniform(batch, *self.scale, device), torch.ones(batch, device=device))
        matrix = _eye(batch, n, device)
        matrix[:, :n, :n] *= factor[:, None, None]
        return matrix, {"applied": applied, "factor": factor}


@TRANSFORMS.register("translate")
class Translate(GeometricTransform):
    """Shift by up to ``fraction`` of the image size along every axis, drawn per axis.

    Args:
        prob: probability that a sample is shifted.
        fraction: maximum shift as a fraction of the image side.
    """

    def __init__(self, prob: float = 0.5, fraction: float = 0.1) -> None:
        super().__init__(prob)
        self.fraction = float(fraction)

    def draw(self, batch, shape, device):
        n = len(shape)
        applied = self.applied(batch, device)
        shift = uniform((batch, n), -self.fraction, self.fraction, device) * applied[:, None]  # spatial order
        matrix = _eye(batch, n, device)
        half = torch.tensor(list(reversed(shape)), device=device, dtype=torch.float32) / 2
        matrix[:, :n, n] = shift.flip(1) * 2 * half  # a fraction of the side is 2 * half in physical units
        return matrix, {"applied": applied, "fraction": shift}


@TRANSFORMS.register("crop")
class Crop(GeometricTransform):
    """Random resized crop: a window of ``size`` times the side, anywhere inside the image,
    resized back to the full image.

    Args:
        prob: probability that a sample is cropped.
        size: ``[low, high]`` range of the window side as a fraction of the image side.
    """

    def __init__(self, prob: float = 0.5, size: Sequence[float] = (0.7, 1.0)) -> None:
        super().__init__(prob)
        self.size = tuple(float(s) for s in size)

    def check(self, spatial_dims: int) -> None:
        if len(self.size) != 2 or not 0 < self.size[0] <= self.size[1] <= 1:
            raise ValueError(f"size={list(self.size)} must be [low, high] with 0 < low <= high <= 1")

    def draw(self, batch, shape, device):
        n = len(shape)
        applied = self.applied(batch, device)
        size = torch.where(applied, uniform(batch, *self.size, device), torch.ones(batch, device=device))
        # window centre in normalised coordinates, so that the window stays inside the image
        centre = uniform((batch, n), -1, 1, device) * (1 - size[:, None])
        half = torch.tensor(list(reversed(shape)), device=device, dtype=torch.float32) / 2
        matrix = _eye(batch, n, device)
        matrix[:, :n, :n] /= size[:, None, None]  # forward: x_out = (x_in - c) / size
        matrix[:, :n, n] = -centre * half / size[:, None]
        return matrix, {"applied": applied, "size": size, "centre": centre.flip(1)}


@TRANSFORMS.register("elastic")
class Elastic(GeometricTransform):
    """Smooth random displacements: Gaussian offsets on a coarse grid of ``grid`` points per
    axis, upsampled (bicubic in 2D, trilinear in 3D) to the image, added to the sampling grid.

    Args:
        prob: probability that a sample is deformed.
        magnitude: standard deviation of the offsets, as a fraction of the image side.
        grid: control points per axis (fewer = smoother).
    """

    def __init__(self, prob: float = 0.3, magnitude: float = 0.02, grid: int = 5) -> None:
        super().__init__(prob)
        self.magnitude = float(magnitude)
        self.grid = int(grid)

    def check(self, spatial_dims: int) -> None:
        if self.grid < 2:
            raise ValueError(f"grid={self.grid} must be at least 2")

    def displacement(self, batch: int, shape: Sequence[int], device: torch.device) -> tuple[torch.Tensor, Params]:
        """Displacements ``(B, *shape, n)`` in normalised grid-order units, and the params."""
        n = len(shape)
        applied = self.applied(batch, device)
        coarse = torch.randn(batch, n, *([self.grid] * n), device=device) * (2 * self.magnitude)
        mode = "bicubic" if n == 2 else "trilinear"
        field = F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)
        field = field * applied.view(-1, *([1] * (n + 1)))
        return field.movedim(1, -1), {"applied": applied, "magnitude": applied.float() * self.magnitude}

    def draw(self, batch, shape, device):
        raise TypeError("elastic is a displacement field, not a matrix; use displacement()")


class GeometricStage:
    """All geometric transforms of a recipe, applied with one resampling per sample.

    Args:
        transforms: the recipe's geometric transforms (any order; composed as documented above).
        padding: ``grid_sample`` padding mode for images (masks always pad with background 0).
    """

    ORDER = ("flip", "zoom", "rotate", "translate", "crop")  # right to left in the forward map
    FIELDS = ("elastic",)  # displacement fields, added to the grid after the matrices

    def __init__(self, transforms: dict[str, GeometricTransform], padding: str = "zeros") -> None:
        if padding not in PADDING_MODES:
            raise ValueError(f"padding={padding!r} must be one of {', '.join(PADDING_MODES)}")
        unplaced = sorted(set(transforms) - {*self.ORDER, *self.FIELDS})
        if unplaced:  # a registered transform this stage would never apply
            raise TypeError(
                f"geometric transform(s) {', '.join(unplaced)} have no place in GeometricStage.ORDER or FIELDS; "
                "add them there so they are applied"
            )
        self.transforms = transforms
        self.padding = padding

    def __call__(self, batch: dict[str, torch.Tensor], record: dict[str, Params]) -> dict[str, torch.Tensor]:
        image = batch["image"]
        size, shape, device = image.shape[0], image.shape[2:], image.device
        if set(self.transforms) == {"flip"}:  # flips alone move whole pixels: index them, no interpolation
            return self._flip_only(batch, self.transforms["flip"], record)
        n = len(shape)
        forward = _eye(size, n, device)
        for name in self.ORDER:
            if name in self.transforms:
                matrix, record[name] = self.transforms[name].draw(size, shape, device)
                forward = matrix @ forward
        half = torch.tensor(list(reversed(shape)), device=device, dtype=torch.float32) / 2
        to_physical = torch.diag(torch.cat([half, torch.ones(1, device=device)]))
        to_normal = torch.diag(torch.cat([1 / half, torch.ones(1, device=device)]))
        inverse = to_normal @ torch.linalg.inv(forward) @ to_physical  # output -> input, normalised
        grid = F.affine_grid(inverse[:, :n], [size, 1, *shape], align_corners=False)
        for name in self.FIELDS:
            if name in self.transforms:
                field, record[name] = self.transforms[name].displacement(size, shape, device)
                grid = grid + field
        out = dict(batch)
        out["image"] = F.grid_sample(image, grid, mode="bilinear", padding_mode=self.padding, align_corners=False)
        for key in PIXEL_MAPS:  # outside the image the mask is background and the ROI empty
            if key in batch:
                moved = F.grid_sample(batch[key].float(), grid, "nearest", "zeros", align_corners=False)
                out[key] = moved.round().to(batch[key].dtype)
        return out

    @staticmethod
    def _flip_only(batch: dict[str, torch.Tensor], flip: Flip, record: dict[str, Params]) -> dict[str, torch.Tensor]:
        out = dict(batch)
        flips = flip.flips(batch["image"].shape[0], batch["image"].device)
        for column, axis in enumerate(flip.axes):
            chosen = flips[:, column].view(-1, *([1] * (batch["image"].dim() - 1)))
            for key in ("image", *PIXEL_MAPS):
                if key in out:
                    out[key] = torch.where(chosen, out[key].flip(2 + axis), out[key])
        record["flip"] = flip.params(flips)
        return out
