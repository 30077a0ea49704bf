"""Synthetic lesion phantom: the embedded default dataset (no files, no network).

Each image is an organ-like textured ellipse on a dark background with zero or more lesions,
Gaussian noise, and min-max normalisation to [0, 1] (Gomathi and Roopa Chandrika, eq. 2). Image labels:

- 0 ``no_lesion``: healthy organ only;
- 1 ``benign``: one or two smooth, round, homogeneous lesions with sharp margins;
- 2 ``malignant``: one irregular (lobulated/spiculated), heterogeneous lesion with a blurred
  margin, sometimes next to a benign one.

The classes overlap on purpose: boundary irregularity, contrast and size are drawn from
overlapping ranges, lesions can be small and faint under the noise, and lesion contrast may be
bright or dark. A good model learns it in tens of epochs; a linear model on pixels does not.
Masks mark lesions (``mask_classes=2``: lesion vs background; ``3``: benign vs malignant lesion).

Example:
    >>> arrays = generate_phantom(8, size=32, spatial_dims=2, seed=0)
    >>> arrays["image"].shape, arrays["mask"].shape, arrays["label"].shape
    ((8, 1, 32, 32), (8, 1, 32, 32), (8,))
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("no_lesion", "benign", "malignant")
NORMALIZATIONS = ("minmax", "none")
_TEXTURE_CUTOFF = 0.12  # low-pass cutoff of the organ texture, in cycles per pixel


def smooth_noise(rng: np.random.Generator, n: int, shape: tuple[int, ...], cutoff: float) -> np.ndarray:
    """White noise low-pass filtered in Fourier space, normalised per sample; shape ``(n, *shape)``."""
    axes = tuple(range(1, len(shape) + 1))
    noise = rng.standard_normal((n, *shape))
    spectrum = np.fft.rfftn(noise, axes=axes)
    freqs = [np.fft.fftfreq(s) for s in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    radius2 = sum(f**2 for f in np.meshgrid(*freqs, indexing="ij"))
    smooth = np.fft.irfftn(spectrum * np.exp(-radius2 / (2 * cutoff**2)), s=shape, axes=axes)
    smooth -= smooth.mean(axis=axes, keepdims=True)
    return smooth / (smooth.std(axis=axes, keepdims=True) + 1e-8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow for large ``|x|``."""
    return 0.5 * (1 + np.tanh(0.5 * x))


def _expand(values: np.ndarray, dims: int) -> np.ndarray:
    """Reshape per-sample values ``(n,)`` to broadcast against ``(n, *spatial)``."""
    return values.reshape(values.shape + (1,) * dims)


def _lesion(
    rng: np.random.Generator,
    grid: np.ndarray,
    centre: np.ndarray,
    radius: np.ndarray,
    irregularity: np.ndarray,
    frequency: tuple[int, int],
) -> np.ndarray:
    """Signed distance-like field of a lobulated blob: ``> 0`` inside, ``< 0`` outside.

    Args:
        grid: coordinates in [-1, 1], shape ``(D, *spatial)``.
        centre: lesion centres, shape ``(n, D)``.
        radius: mean radii, shape ``(n,)``.
        irregularity: boundary perturbation amplitude relative to the radius, shape ``(n,)``.
        frequency: inclusive range of angular frequencies of the boundary lobes.

    Returns:
        ``(n, *spatial)`` array, in units of the radius.
    """
    n, dims = centre.shape
    offset = grid[None] - centre.reshape(n, dims, *(1,) * dims)  # (n, D, *spatial)
    dist = np.sqrt((offset**2).sum(axis=1)) + 1e-6
    direction = offset / dist[:, None]
    bump = np.zeros_like(dist)
    n_terms = 3
    for _ in range(n_terms):  # a sum of lobes around random axes gives 2D and 3D shapes alike
        axis = rng.standard_normal((n, dims))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        cos_angle = np.clip(np.einsum("nd,nd...->n...", axis, direction), -1.0, 1.0)
        k = rng.integers(frequency[0], frequency[1] + 1, size=n)
        phase = rng.uniform(0, 2 * np.pi, size=n)
        bump += np.cos(_expand(k, dims) * np.arccos(cos_angle) + _expand(phase, dims))
    boundary = _expand(radius, dims) * (1 + _expand(irregularity, dims) * bump / n_terms)
    return (boundary - dist) / _expand(radius, dims)


def generate_phantom(
    n: int,
    size: int = 32,
    spatial_dims: int = 2,
    seed: int = 0,
    mask_classes: int = 2,
    noise: tuple[float, float] = (0.02, 0.06),
    normalize: str = "minmax",
    organ_labels: bool = False,
    lesion_layer: bool = False,
) -> dict[str, np.ndarray]:
    """Generate ``n`` phantom images with masks and labels, deterministically from ``seed``.

    Args:
        n: number of samples.
        size: edge length in pixels/voxels.
        spatial_dims: 2 or 3.
        seed: the same seed gives the same arrays on every machine.
        mask_classes: 2 (background, lesion) or 3 (background, benign, malignant lesion).
        noise: range of the Gaussian noise standard deviation, before normalisation.
        normalize: ``minmax`` per image to [0, 1] (Gomathi and Roopa Chandrika, eq. 2), or ``none``: the generator's
            intensities (background 0.1, organ about 0.5, lesions +-0.15 to 0.4). Per-image
            min-max leaks the label into every pixel: a bright lesion raises the maximum, so
            the organ and background of lesion images come out darker (a linear model on the
            image mean and sd alone beats chance by 20 points). ``none`` has no such shortcut.
        organ_labels: the mask labels the organ too: 0 background, 1 organ, lesions 2 (and 3 for
            malignant ones with ``mask_classes=3``): the anatomy a registration aligns.
        lesion_layer: also ``lesions`` ``(n, 1, *spatial)``: what the lesions added to the image,
            before noise and normalisation (the modalities' raw material).

    Returns:
        ``image`` float32 ``(n, 1, *spatial)`` (in [0, 1] for ``minmax``); ``mask`` uint8 ``(n, 1, *spatial)``;
        ``label`` int64 ``(n,)`` in {0, 1, 2}.
    """
    _check(spatial_dims, mask_classes, normalize)
    rng = np.random.default_rng(seed)
    shape = (size,) * spatial_dims
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * spatial_dims, indexing="ij"))
    labels = rng.integers(0, 3, size=n)

    image, organ, centre, axes = _organ(rng, grid, n)
    healthy = image.copy() if lesion_layer else None
    mask = np.zeros((n, *shape), dtype=np.uint8)

    def place(present: np.ndarray, malignant: bool) -> None:
        _place_lesions(rng, grid, image, mask, present, malignant, (centre, axes), mask_classes)

    place(labels == 1, malignant=False)
    place((labels == 1) & (rng.uniform(size=n) < 0.4), malignant=False)
    place((labels == 2) & (rng.uniform(size=n) < 0.3), malignant=False)
    place(labels == 2, malignant=True)
    lesions = image - healthy if lesion_layer else None  # what the lesions added

    image += _expand(rng.uniform(*noise, size=n), spatial_dims) * rng.standard_normal(image.shape)
    if normalize == "minmax":  # min-max normalisation to [0, 1], Gomathi and Roopa Chandrika, eq. 2
        image = _minmax(image)
    if organ_labels:
        mask = np.where(mask > 0, mask + 1, organ > 0.5).astype(np.uint8)
    found = {"image": image[:, None].astype(np.float32), "mask": mask[:, None], "label": labels.astype(np.int64)}
    if lesion_layer:
        found["lesions"] = lesions[:, None].astype(np.float32)
    return found


def _organ(rng: np.random.Generator, grid: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """A soft-edged ellipse/ellipsoid with low-frequency texture on a dark background, per sample:
    the image ``(n, *spatial)``, the organ's soft mask, its centres and semi-axes ``(n, dims)``."""
    dims, shape = grid.shape[0], grid.shape[1:]
    centre = rng.uniform(-0.1, 0.1, size=(n, dims))
    axes = rng.uniform(0.6, 0.9, size=(n, dims))
    r2 = sum(((grid[d][None] - _expand(centre[:, d], dims)) / _expand(axes[:, d], dims)) ** 2 for d in range(dims))
    organ = _sigmoid((1 - r2) * 12)
    image = 0.1 + organ * (0.4 + 0.05 * smooth_noise(rng, n, shape, _TEXTURE_CUTOFF))
    return image, organ, centre, axes


def _check(spatial_dims: int, mask_classes: int, normalize: str) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if mask_classes not in (2, 3):
        raise ValueError(f"mask_classes must be 2 or 3, got {mask_classes}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")


def _minmax(image: np.ndarray) -> np.ndarray:
    """Each image ``(n, *spatial)`` scaled to [0, 1] by its own minimum and maximum."""
    axes = tuple(range(1, image.ndim))
    low, high = image.min(axis=axes, keepdims=True), image.max(axis=axes, keepdims=True)
    return (image - low) / (high - low)


def _place_lesions(
    rng: np.random.Generator,
    grid: np.ndarray,
    image: np.ndarray,
    mask: np.ndarray,
    present: np.ndarray,
    malignant: bool,
    organ: tuple[np.ndarray, np.ndarray],
    mask_classes: int,
) -> None:
    """Add one lesion to each sample where ``present``, in place; benign and malignant draws overlap.

    Args:
        grid: ``(dims, *spatial)`` coordinates in [-1, 1].
        image: ``(n, *spatial)`` intensities; mask: ``(n, *spatial)`` labels.
        organ: the organs' centres and semi-axes, ``(n, dims)`` each; lesions lie inside.
    """
    n, spatial_dims, shape = len(present), grid.shape[0], image.shape[1:]
    centre, axes = organ
    where = (rng.uniform(-0.55, 0.55, size=(n, spatial_dims)) * axes) + centre
    radius = rng.uniform(0.12, 0.3, size=n)
    if malignant:
        irregularity = rng.uniform(0.25, 0.7, size=n)
        field = _lesion(rng, grid, where, radius, irregularity, frequency=(3, 7))
        margin = rng.uniform(0.15, 0.35, size=n)  # blurred, infiltrating edge
        texture = 1 + 0.5 * smooth_noise(rng, n, shape, 0.25)
    else:
        irregularity = rng.uniform(0.0, 0.3, size=n)
        field = _lesion(rng, grid, where, radius, irregularity, frequency=(1, 3))
        margin = rng.uniform(0.03, 0.12, size=n)
        texture = np.ones((n, *shape))
    contrast = rng.uniform(0.15, 0.4, size=n) * rng.choice([-1.0, 1.0], size=n, p=[0.3, 0.7])
    weight = _sigmoid(field / _expand(margin, spatial_dims))
    weight *= _expand(present.astype(float), spatial_dims)
    image[:] += weight * texture * _expand(contrast, spatial_dims)
    inside = (field > 0) & _expand(present, spatial_dims)
    mask[inside] = 2 if (malignant and mask_classes == 3) else 1


VISIBLE = 0.6  # the chance that a modality shows a case's lesions at full contrast
FAINT = 0.2  # their contrast in a modality that does not


def modality_views(
    clean: np.ndarray, lesions: np.ndarray, modalities: int, seed: int, normalize: str = "minmax"
) -> np.ndarray:
    """``modalities`` images of the same noise-free phantoms, each carrying part of the signal,
    ``(n, modalities, *spatial)`` float32.

    Args:
        clean: ``(n, *spatial)`` phantoms without noise; lesions: ``(n, *spatial)``, what their
            lesions add (``generate_phantom(lesion_layer=True)``).

    Each modality shows a case's lesions at full contrast with probability ``VISIBLE`` and at
    ``FAINT`` contrast otherwise, independently of the other modalities (as a lesion may be bright
    on T2 and nearly invisible on T1), so a single modality misses some lesions that another shows;
    modality m of M is also blurred by ``m / (M - 1)`` pixels, and each gets its own noise (sd 0.05).
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng([seed, 3])  # a stream apart from the phantoms' own draws
    healthy = clean - lesions
    views = []
    for sigma in np.linspace(0.0, 1.0, modalities):
        shown = np.where(rng.uniform(size=len(clean)) < VISIBLE, 1.0, FAINT)
        view = healthy + _expand(shown, clean.ndim - 1) * lesions
        view = gaussian_filter(view, sigma=(0, *(sigma,) * (clean.ndim - 1))) if sigma else view
        view = view + 0.05 * rng.standard_normal(clean.shape)
        views.append(_minmax(view) if normalize == "minmax" else view)
    return np.stack(views, axis=1).astype(np.float32)
