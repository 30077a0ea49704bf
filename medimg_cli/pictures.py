"""Image grids for people to look at: ``data inspect``'s examples, ``augment preview`` and the
validation samples sent to TensorBoard and W&B.

A grid is a matplotlib figure (labels, titles and colour scales come from a well-kept library):
one row per group (a split, an image and its augmented copies, true vs predicted masks), a label
on each row and a title on each tile. All tiles of a row share one intensity scale, printed under
the row's label, so an intensity augmentation shows as a brighter or darker copy instead of being
undone by per-tile min-max scaling. The picture is at least ``MIN_HEIGHT`` pixels high; pixels
are drawn as squares (nearest neighbour), never smoothed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from PIL import Image

from medimg_cli.reporting.plots import plt

MIN_HEIGHT = 512  # pixels, the whole picture
DPI = 100
MASK_COLOURS = ListedColormap(plt.get_cmap("tab10").colors)  # class k in colour k-1 (class 1: blue...)


@dataclass(frozen=True)
class Tile:
    """One picture of a grid.

    Attributes:
        image: ``(C, *spatial)``; a volume shows its middle slice along the first spatial axis,
            three channels show as colour, other counts as their mean.
        mask: ``(*spatial)`` integer classes drawn over the image (0: nothing), or ``None``.
        title: the text above the tile (a class, ``label -> prediction``, ``augmentation 2``).
    """

    image: torch.Tensor
    mask: torch.Tensor | None = None
    title: str = ""


def class_title(names: Sequence[str], label: torch.Tensor | int | None) -> str:
    """A label as text: its class name, the names of a multi-label vector's positives, or ``""``."""
    if label is None or not names:
        return ""
    label = torch.as_tensor(label)
    if label.dim() == 0:
        return names[int(label)]
    return ", ".join(names[k] for k in torch.nonzero(label > 0).flatten().tolist()) or "none"


def plane(tile: Tile) -> tuple[np.ndarray, np.ndarray | None]:
    """The 2D picture of ``tile``: ``(H, W)`` or ``(H, W, 3)`` floats, and its mask ``(H, W)`` or ``None``."""
    image, mask = tile.image.detach().float().cpu(), tile.mask
    while image.dim() > 3:
        middle = image.shape[1] // 2
        image, mask = image[:, middle], (mask[middle] if mask is not None else None)
    picture = image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image.mean(0).numpy()
    return picture, (mask.detach().cpu().numpy() if mask is not None else None)


def row_range(planes: Sequence[np.ndarray]) -> tuple[float, float]:
    """The intensity range ``(low, high)`` shared by a row's tiles (finite values; never empty)."""
    values = np.concatenate([p[np.isfinite(p)].ravel() for p in planes])
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    return low, high if high > low else low + 1.0


def grid_figure(
    rows: Sequence[Sequence[Tile]], row_labels: Sequence[str], cmaps: Sequence[str] | None = None
) -> plt.Figure:
    """A figure of ``rows`` of tiles, each row labelled and on its own intensity scale.

    Args:
        rows: the tiles of each row (rows may be shorter than the longest).
        row_labels: one per row; its scale ``[low, high]`` is added below it.
        cmaps: a matplotlib colour map per row for one-channel tiles (default ``gray``;
            e.g. ``inferno`` for anomaly maps).
    """
    columns = max(len(row) for row in rows)
    planes_of = [[plane(t) for t in row] for row in rows]  # each tile's 2D picture, made once
    native = max(picture.shape[0] for planes in planes_of for picture, _ in planes)
    side = max(native, math.ceil(MIN_HEIGHT / len(rows)), 96) / DPI  # inches per tile
    figure, axes = plt.subplots(
        len(rows), columns, figsize=(columns * side + 1.0, len(rows) * (side + 0.3) + 0.2), dpi=DPI, squeeze=False
    )
    for r, (row, planes) in enumerate(zip(rows, planes_of, strict=True)):
        low, high = row_range([p for p, _ in planes])
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.axis("off")
                continue
            _draw(ax, *planes[c], low, high, cmaps[r] if cmaps else "gray")
            ax.set_title(row[c].title, fontsize=8)
        axes[r, 0].set_ylabel(f"{row_labels[r]}\n[{low:.3g}, {high:.3g}]", fontsize=8)
    figure.tight_layout(pad=0.4)
    return figure


def _draw(ax: plt.Axes, picture: np.ndarray, mask: np.ndarray | None, low: float, high: float, cmap: str) -> None:
    """One tile on the row's scale, its mask's classes in colour at half opacity."""
    if picture.ndim == 3:  # colour: the row's range maps to [0, 1] in every channel
        ax.imshow(np.clip((picture - low) / (high - low), 0, 1), interpolation="nearest")
    else:
        ax.imshow(picture, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
    if mask is not None and mask.any():
        shown = np.ma.masked_where(mask <= 0, (mask - 1) % MASK_COLOURS.N)
        ax.imshow(shown, cmap=MASK_COLOURS, vmin=0, vmax=MASK_COLOURS.N - 1, alpha=0.5, interpolation="nearest")


def figure_array(figure: plt.Figure) -> np.ndarray:
    """The rendered figure as ``(H, W, 3)`` uint8 (for TensorBoard and W&B); closes it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return np.asarray(Image.open(buffer).convert("RGB"))
