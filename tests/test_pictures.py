"""Picture grids: labelled rows, one intensity scale per row, at least 512 px, every format."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from medimg_cli.pictures import MIN_HEIGHT, Tile, class_title, figure_array, grid_figure, row_range
from medimg_cli.reporting.plots import save_figure


def _tile_means(figure) -> list[list[float]]:
    """The mean grey level of each drawn tile, read from the rendered picture."""
    figure.canvas.draw()
    height = figure.canvas.get_width_height()[1]
    boxes = [ax.get_window_extent() for ax in figure.axes]
    picture = figure_array(figure).astype(float).mean(-1)
    # matplotlib counts pixels from the bottom, pictures from the top; 2 px in from each edge
    crops = [picture[height - int(b.y1) + 2 : height - int(b.y0) - 2, int(b.x0) + 2 : int(b.x1) - 2] for b in boxes]
    return [crop.mean() for crop in crops]


def test_a_row_shares_one_intensity_scale_so_a_brighter_copy_shows_brighter():
    image = torch.linspace(0, 1, 32 * 32).reshape(1, 32, 32)
    brighter = image * 0.5 + 0.5  # what an intensity augmentation makes
    figure = grid_figure([[Tile(image, title="original"), Tile(brighter, title="augmentation 1")]], ["img_00000"])
    original, copy = _tile_means(figure)
    # per-tile min-max scaling would draw both the same; on one scale the copy is brighter
    assert copy > original + 40
    assert row_range([image.numpy(), brighter.numpy()]) == (0.0, 1.0)


def test_grids_are_at_least_512_px_high_with_masks_in_colour(tmp_path):
    image, mask = torch.zeros(1, 28, 28), torch.zeros(28, 28, dtype=torch.long)
    mask[5:15, 5:15] = 1
    figure = grid_figure([[Tile(image, mask, "a"), Tile(image)]] * 2, ["train", "val"])
    save_figure(figure, tmp_path / "grid.png", palette=True)
    with Image.open(tmp_path / "grid.png") as picture:
        assert picture.height >= MIN_HEIGHT
        rgb = np.asarray(picture.convert("RGB")).astype(int)
    assert ((rgb[..., 2] - rgb[..., 0]) > 60).any()  # class 1 drawn in blue over the black image
    assert (tmp_path / "grid.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in (tmp_path / "grid.svg").read_bytes()[:500]


def test_class_titles():
    names = ("normal", "benign", "malignant")
    assert class_title(names, torch.tensor(2)) == "malignant"
    assert class_title(names, torch.tensor([1, 0, 1])) == "normal, malignant"
    assert class_title(names, torch.tensor([0, 0, 0])) == "none"
    assert class_title((), torch.tensor(1)) == "" and class_title(names, None) == ""


def test_saliency_overlays_have_one_colour_bar_per_map_row(monkeypatch, tmp_path):
    from medimg_cli.evaluation import figures

    kept = []
    monkeypatch.setattr(figures, "save_figure", lambda figure, path, palette=False: kept.append(figure))
    images, maps = torch.rand(2, 1, 16, 16), [torch.rand(2, 16, 16), torch.rand(2, 16, 16)]
    figures.overlay_figure(tmp_path / "x.png", images, maps, ["a", "b"], ["gradcam", "random"], scale="0-1: min to max")
    bars = [ax for ax in kept[0].axes if ax.get_label() == "<colorbar>"]
    assert [bar.get_ylabel() for bar in bars] == ["gradcam (0-1: min to max)", "random (0-1: min to max)"]
    assert [bar.get_ylim() for bar in bars] == [(0.0, 1.0)] * 2
