"""The PNG figures of ``medimg eval``: confusion matrix, ROC curves, reliability diagram,
risk-coverage curve, anomaly-score histograms and explanation or anomaly-map overlays (3D
volumes as three orthogonal slices)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medimg_cli.evaluation.classification import roc_curve
from medimg_cli.reporting.plots import plt, save_figure


def confusion_figure(path: Path, matrix: np.ndarray, names: Sequence[str]) -> None:
    """Counts ``(K, K)`` (rows true, columns predicted) with the row percentage in each cell."""
    size = 2.2 + 0.7 * len(names)
    figure, axes = plt.subplots(figsize=(size + 1, size), dpi=110)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if shares[row, column] > 0.6 else "black"
        axes.text(column, row, f"{count}\n{100 * shares[row, column]:.0f}%", ha="center", va="center", color=colour)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    figure.colorbar(image, ax=axes, label="share of the true class")
    save_figure(figure, path)


def roc_figure(path: Path, probs: np.ndarray, labels: np.ndarray, names: Sequence[str], aucs: np.ndarray) -> None:
    """One-vs-rest ROC curve per class (class 1 only for two classes) with its AUC."""
    figure, axes = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    classes = [1] if len(names) == 2 else range(len(names))
    for k in classes:
        if np.isnan(aucs[k]):
            continue
        fpr, tpr, _ = roc_curve(probs[:, k], labels == k)
        axes.plot(fpr, tpr, linewidth=1.6, label=f"{names[k]} (AUC {aucs[k]:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    axes.set_xlabel("false-positive rate (1 - specificity)")
    axes.set_ylabel("true-positive rate (sensitivity)")
    axes.set_aspect("equal")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def reliability_figure(path: Path, bins: dict[str, np.ndarray], ece: float, title: str) -> None:
    """Accuracy against confidence per bin, the diagonal of perfect calibration, and the counts."""
    edges = np.linspace(0, 1, len(bins["count"]) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.0, 6.0), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    used = bins["count"] > 0
    top.bar(centres[used], bins["accuracy"][used], width=edges[1] - edges[0], edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_title(f"{title}: ECE {ece:.3f}", fontsize=10)
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centres, bins["count"], width=edges[1] - edges[0], color="grey")
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("cases")
    save_figure(figure, path)


def risk_coverage_figure(path: Path, curve: dict[str, torch.Tensor], quality: str, method: str) -> None:
    """Mean ``quality`` of the cases kept against the share kept, most certain first."""
    figure, axes = plt.subplots(figsize=(5.6, 4.0), dpi=110)
    axes.plot(curve["coverage"].numpy(), curve["quality"].numpy(), linewidth=1.6)
    axes.set_xlabel("coverage (share of cases kept, most certain first)")
    axes.set_ylabel(quality + " of the kept cases")
    axes.set_title(f"risk-coverage, uncertainty = predictive entropy ({method})", fontsize=10)
    axes.set_xlim(0, 1)
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def score_histogram(path: Path, scores: np.ndarray, labels: np.ndarray, threshold: float, names: Sequence[str]) -> None:
    """Anomaly scores ``(N,)`` of each class (``labels`` 0 normal, 1 abnormal) on shared bins, and
    the decision threshold."""
    figure, axes = plt.subplots(figsize=(5.6, 4.0), dpi=110)
    bins = np.histogram_bin_edges(scores, bins=30)
    for k, name in enumerate(names):
        chosen = scores[labels == k]
        axes.hist(chosen, bins=bins, alpha=0.55, label=f"{name} ({len(chosen)})")
    axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
    axes.set_xlabel("anomaly score")
    axes.set_ylabel("images")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def views(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """2D pictures of a ``(*spatial)`` array: itself in 2D; in 3D the slices across axes 0, 1 and 2
    through ``centre`` (sagittal, coronal, axial for the RAS+ volumes the NIfTI and DICOM sources make)."""
    if volume.ndim == 2:
        return [volume]
    return [volume[centre[0]], volume[:, centre[1]], volume[:, :, centre[2]]]


def overlay_figure(
    path: Path,
    images: torch.Tensor,
    maps: Sequence[torch.Tensor],
    titles: Sequence[str],
    row_names: Sequence[str],
    masks: torch.Tensor | None = None,
    scale: str = "0-1: each map's min to max",
) -> None:
    """A grid with one column per case: the image (mask outlined), then each map over it, with a
    colour bar per map row.

    Args:
        images: ``(N, C, *spatial)``.
        maps: one ``(N, *spatial)`` stack per map row, values in [0, 1].
        titles: one per case (label, prediction, confidence).
        row_names: one per map row.
        masks: ``(N, 1, *spatial)`` lesion masks to outline, if known.
        scale: what the colour bars' 0 and 1 mean.
    """
    cases = len(images)
    dims = images.dim() - 2
    rows = [("image", None), *zip(row_names, maps, strict=True)]
    slices = 1 if dims == 2 else 3
    figure, axes = plt.subplots(
        len(rows) * slices, cases, figsize=(1.6 * cases + 1.2, 1.6 * len(rows) * slices), dpi=90, squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for case in range(cases):
        image = images[case].float().mean(0).cpu().numpy()
        centre = np.unravel_index(int(maps[0][case].argmax()), image.shape)  # through the first map's peak
        image_views = views(image, centre)
        mask_views = views(masks[case, 0].cpu().numpy(), centre) if masks is not None else [None] * slices
        for r, (name, stack) in enumerate(rows):
            overlay = views(stack[case].cpu().numpy(), centre) if stack is not None else [None] * slices
            for s in range(slices):
                ax = axes[r * slices + s, case]
                ax.imshow(image_views[s], cmap="gray")
                if overlay[s] is not None:
                    ax.imshow(overlay[s], cmap="jet", alpha=0.45, vmin=0, vmax=1)
                if mask_views[s] is not None and mask_views[s].any():
                    ax.contour(mask_views[s] > 0, levels=[0.5], colors="white", linewidths=0.8)
                ax.set_xticks([])
                ax.set_yticks([])
                if case == 0:
                    ax.set_ylabel(name if slices == 1 else f"{name}\naxis {s} slice", fontsize=6)
            if r == 0:
                axes[0, case].set_title(titles[case], fontsize=7)
    for r, (name, _) in enumerate(rows[1:], start=1):
        colours = plt.cm.ScalarMappable(cmap="jet", norm=plt.Normalize(0, 1))
        bar = figure.colorbar(colours, ax=axes[r * slices : (r + 1) * slices].ravel().tolist(), shrink=0.9, aspect=12)
        bar.set_label(f"{name} ({scale})", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    save_figure(figure, path, palette=True)
