"""Dense displacement fields: warping, the Jacobian determinant and its folding ratio, and random
smooth deformations (the phantom's registration pairs).

A displacement field (DDF) ``u`` has shape ``(B, D, *spatial)`` in pixels (voxels), channel ``d``
the displacement along spatial axis ``d``, as MONAI's ``Warp`` takes it: the warped image at
``x`` is the moving image at ``x + u(x)``. The transform's Jacobian is ``I + grad u``; where its
determinant is not positive the transform folds space onto itself, which no anatomy does.

MONAI has the warp but no Jacobian or folding metric, so those are written here: central finite
differences (``torch.gradient``, one-sided at the border), exact for affine fields.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Warp

# MONAI says so on every call when its compiled resampler is not built; PyTorch's is the one used
warnings.filterwarnings("ignore", "monai.networks.blocks.Warp: Using PyTorch native grid_sample")


def warp(image: torch.Tensor, ddf: torch.Tensor, labels: bool = False) -> torch.Tensor:
    """``image`` ``(B, C, *spatial)`` resampled at ``x + ddf(x)``: bilinear for intensities,
    nearest for label maps (``labels``, returned in ``image``'s dtype); out-of-image samples take
    the border value."""
    if labels:
        return Warp(mode="nearest", padding_mode="border")(image.float(), ddf.float()).round().to(image.dtype)
    return Warp(mode="bilinear", padding_mode="border")(image, ddf.to(image.dtype))


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """``det(I + grad u)`` at every pixel of ``ddf`` ``(B, D, *spatial)`` (pixels), shape ``(B, *spatial)``.

    Derivatives are central differences in the interior and one-sided at the border, so the value
    is exact for an affine field ``u(x) = (A - I) x + t``: ``det(A)`` everywhere.
    """
    dims = ddf.shape[1]
    if ddf.dim() != dims + 2 or dims not in (2, 3):
        raise ValueError(f"a displacement field is (B, D, *spatial) with D = 2 or 3 axes, got {tuple(ddf.shape)}")
    ddf = ddf.double()
    # jacobian[b, i, j] = d u_i / d x_j + (i == j)
    grads = [torch.stack(torch.gradient(ddf[:, i], dim=tuple(range(1, dims + 1))), dim=1) for i in range(dims)]
    jacobian = torch.stack(grads, dim=1) + torch.eye(dims, dtype=ddf.dtype, device=ddf.device).reshape(
        1, dims, dims, *(1,) * dims
    )
    return torch.linalg.det(jacobian.movedim((1, 2), (-2, -1)))


def field_statistics(ddf: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per case of ``ddf`` ``(B, D, *spatial)``: ``folding``, the share of pixels whose Jacobian
    determinant is not positive (in [0, 1]), and ``jacobian_std``, the determinant's standard
    deviation over the image (0 for a rigid or affine map; how unevenly the map stretches). ``(B,)`` each."""
    det = jacobian_determinant(ddf).flatten(1)
    return {"folding": (det <= 0).double().mean(dim=1), "jacobian_std": det.std(dim=1, unbiased=False)}


def random_deformations(
    n: int, shape: tuple[int, ...], seed: int, affine: float = 0.12, shift: float = 2.0, elastic: float = 0.75
) -> torch.Tensor:
    """``n`` random smooth deformations of images of ``shape``, ``(n, D, *shape)`` float32 pixels.

    Each is an affine part about the centre (``A = I + E``, entries of ``E`` uniform in
    ``[-affine, affine]``, plus a shift uniform in ``[-shift, shift]`` pixels per axis) plus an
    elastic part (low-pass Gaussian noise, standard deviation ``elastic`` pixels per axis). The
    defaults keep every Jacobian determinant positive on 32-pixel images (no folding).
    """
    from medimg_cli.data.phantom import smooth_noise  # the phantom's texture generator

    rng = np.random.default_rng([seed, 2])  # a stream apart from the phantom's own draws
    dims = len(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"))  # (D, *shape)
    matrix = rng.uniform(-affine, affine, size=(n, dims, dims))
    field = np.einsum("nij,j...->ni...", matrix, grid)
    field += rng.uniform(-shift, shift, size=(n, dims)).reshape(n, dims, *(1,) * dims)
    for d in range(dims):  # cutoff 0.03 cycles per pixel: a few bumps across a 32-pixel image
        field[:, d] += elastic * smooth_noise(rng, n, shape, 0.03)
    return torch.from_numpy(field.astype(np.float32))


def target_registration_error(ddf: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Mean distance (pixels) per case between the moving landmarks and where the field sends the
    fixed ones, ``(B,)``.

    Args:
        ddf: ``(B, D, *spatial)`` pixels; fixed point ``p`` corresponds to moving point ``p + u(p)``
            (``u`` interpolated linearly between pixels).
        landmarks: ``(B, 2, K, D)`` pixel coordinates of K corresponding points, moving then fixed;
            rows of NaN are padding (pairs with fewer landmarks) and do not count.
    """
    ddf, landmarks = ddf.detach().double(), landmarks.to(ddf.device).double()
    moving, fixed = landmarks[:, 0], landmarks[:, 1]  # (B, K, D)
    sizes = torch.tensor(ddf.shape[2:], dtype=ddf.dtype, device=ddf.device)
    where = torch.nan_to_num(fixed) / (sizes - 1) * 2 - 1  # grid_sample's [-1, 1], its axes last-first
    grid = where.flip(-1).reshape(len(ddf), -1, *(1,) * (ddf.dim() - 3), ddf.dim() - 2)
    shift = F.grid_sample(ddf, grid, mode="bilinear", padding_mode="border", align_corners=True)
    shift = shift.reshape(len(ddf), ddf.shape[1], -1).transpose(1, 2)  # (B, K, D)
    error = (fixed + shift - moving).norm(dim=-1)
    valid = ~torch.isnan(error)
    return torch.where(valid, error, 0).sum(dim=1) / valid.sum(dim=1).clamp(min=1)


def registration_cases(
    ddf: torch.Tensor, mask: torch.Tensor | None, num_classes: int, landmarks: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-case metrics of predicted fields ``ddf`` ``(B, D, *spatial)`` (pixels) on the CPU:
    ``folding`` and ``jacobian_std`` ``(B,)`` (``field_statistics``); with ``mask``
    ``(B, 2, *spatial)`` (moving, fixed label maps), ``dice``, ``iou`` and ``hd95`` (pixels)
    ``(B, num_classes - 1)`` of the warped moving labels against the fixed ones, by
    ``evaluation.segmentation.case_metrics`` (its rules for empty structures); with ``landmarks``
    ``(B, 2, K, D)``, ``tre`` ``(B,)`` (``target_registration_error``)."""
    from medimg_cli.evaluation.segmentation import case_metrics  # it imports MONAI's metrics

    found = {key: value.cpu() for key, value in field_statistics(ddf.detach()).items()}
    if landmarks is not None:
        found["tre"] = target_registration_error(ddf, landmarks).cpu()
    if mask is not None:
        warped = warp(mask[:, :1], ddf.detach(), labels=True)[:, 0]
        unit = [[1.0] * ddf.shape[1]] * len(ddf)
        scores = case_metrics(warped, mask[:, 1], num_classes, unit, keys=("dice", "iou", "hd95"))
        found |= {key: torch.from_numpy(value) for key, value in scores.items()}
    return found


def identity_cases(pairs: dict[str, torch.Tensor], num_classes: int) -> dict[str, torch.Tensor]:
    """Per pair, ``(N,)`` each: ``dice``, ``iou`` and ``hd95`` of the label maps (``mask``
    ``(N, 2, *spatial)``, mean over foreground labels) and ``tre`` of the ``landmarks`` as the pairs
    are, without registration: the baseline a registration must beat (only those the pairs have)."""
    image = pairs["image"]
    zero = torch.zeros(len(image), image.dim() - 2, *image.shape[2:])
    found = registration_cases(zero, pairs.get("mask"), num_classes, pairs.get("landmarks"))
    return {
        key: found[key].reshape(len(image), -1).mean(dim=1) for key in ("dice", "iou", "hd95", "tre") if key in found
    }
