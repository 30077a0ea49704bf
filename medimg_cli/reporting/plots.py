"""Plots of a report (PNG, PDF and SVG): a metric against the epoch, one line per group, shaded ± sd."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from medimg_cli.fileio import write_atomic  # noqa: E402
from medimg_cli.metrics import Metric  # noqa: E402
from medimg_cli.reporting.stats import mean_sd  # noqa: E402


def metric_plot(path: Path, metric: Metric, groups: Mapping[str, Sequence[Any]], title: str) -> None:
    """Write ``path`` (PNG): ``metric`` of each group's runs per epoch, mean line and ± sd band."""
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, jobs in groups.items():
        epochs = sorted({int(row["epoch"]) for job in jobs for row in job.rows})
        stats = [mean_sd([job.value(metric.column, e) for job in jobs]) for e in epochs]
        mean = np.array([m for m, _ in stats]) * metric.scale
        sd = np.array([s if s is not None else 0.0 for _, s in stats]) * metric.scale
        if np.isnan(mean).all():
            continue
        (line,) = axes.plot(epochs, mean, label=f"{label} (n={len(jobs)})", linewidth=1.6)
        axes.fill_between(epochs, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(metric.title + " (validation)" if metric.higher is not None else metric.title)
    axes.set_title(title, fontsize=10)
    if metric.style.endswith("e}"):
        axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    save_figure(figure, path)


def save_figure(figure: plt.Figure, path: Path, palette: bool = False) -> None:
    """Lay out ``figure``, write it to ``path`` as PNG, and beside it as PDF and SVG (for papers),
    atomically, and close it.

    Args:
        path: the PNG file; the PDF and SVG take its name with their suffixes.
        palette: store the PNG in 256 adaptive colours instead of RGBA (image grids shrink about fourfold).
    """
    if figure.get_layout_engine() is None:  # figures with colour bars come laid out (constrained)
        figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("pdf", "svg", "png"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix)
        if suffix == "png" and palette:
            picture = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(256)
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG", optimize=True)
        write_atomic(path.with_suffix(f".{suffix}"), buffer.getvalue())
    plt.close(figure)
