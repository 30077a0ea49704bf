"""Image grids for people to look at: ``data inspect``'s examples and ``augment preview``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def tile(image: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 picture of an image ``(C, *spatial)``, its mask ``(*spatial)`` in red.

    Channels are averaged and min-max scaled; a volume shows its middle slice along the first
    spatial axis.
    """
    image = image.float()
    while image.dim() > 3:
        middle = image.shape[1] // 2
        image, mask = image[:, middle], (mask[middle] if mask is not None else None)
    gray = image.mean(0)
    gray = (gray - gray.min()) / (gray.max() - gray.min()).clamp(min=1e-8)
    rgb = gray[..., None].repeat(1, 1, 3).cpu().numpy()
    if mask is not None:
        foreground = mask.cpu().numpy() > 0
        rgb[foreground] = 0.5 * rgb[foreground] + 0.5 * np.array([1.0, 0.0, 0.0])
    return (rgb * 255).astype(np.uint8)


def grid_image(rows: Sequence[Sequence[np.ndarray]], min_height: int = 256) -> Image.Image:
    """Tiles laid out row by row (2-pixel gaps), scaled up by the smallest whole factor (nearest
    neighbour, so pixels stay pixels) that makes the picture at least ``min_height`` high."""
    lines = [np.concatenate([np.pad(t, ((0, 0), (0, 2), (0, 0))) for t in row], axis=1) for row in rows if row]
    width = max(line.shape[1] for line in lines)
    padded = [np.pad(line, ((0, 2), (0, width - line.shape[1]), (0, 0))) for line in lines]
    grid = Image.fromarray(np.concatenate(padded, axis=0))
    scale = max(1, -(-min_height // grid.height))
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
