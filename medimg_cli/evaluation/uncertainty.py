"""Predictions with uncertainty: one pass, Monte Carlo dropout, or test-time augmentation.

- ``none``: one forward pass in eval mode.
- ``mc_dropout`` (Gal & Ghahramani 2016): the model in eval mode (batch-norm statistics fixed)
  with its dropout layers sampling, ``samples`` passes.
- ``tta``: flips of the spatial axes, identity first, up to the ``2**dims`` distinct ones;
  segmentation outputs are flipped back before averaging.

The class probabilities of the passes are averaged; per case the predictive entropy
``H(mean p)`` (nats) and the variance of the probabilities across passes (mean over classes)
measure uncertainty. For masks, the entropy is the mean of the per-pixel predictive entropies.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import torch
from torch import nn

from medimg_cli.data import DataInfo
from medimg_cli.data.batches import TensorBatches
from medimg_cli.errors import ConfigError, unknown_choice
from medimg_cli.sliding import call
from medimg_cli.speed import Speed

METHODS = ("none", "mc_dropout", "tta")
log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Model outputs of one split, on the CPU.

    Attributes:
        logits: ``(S, N, K)`` class logits of each pass (classification), else ``None``.
        seg_labels: ``(N, *spatial)`` predicted mask labels from the mean probabilities, else ``None``.
        seg_entropy: ``(N,)`` mean per-pixel predictive entropy of the masks, else ``None``.
        seg_probs: ``(N, K, *spatial)`` float16 mean class probabilities, when asked for, else ``None``.
    """

    logits: torch.Tensor | None
    seg_labels: torch.Tensor | None
    seg_entropy: torch.Tensor | None
    seg_probs: torch.Tensor | None = None


def entropy(probs: torch.Tensor, dim: int) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` (0 log 0 = 0)."""
    return -(probs * probs.clamp(min=1e-12).log()).sum(dim)


def _flips(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes of a ``(B, C, *spatial)`` tensor, identity first."""
    axes = range(2, 2 + spatial_dims)
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


def _enable_dropout(model: nn.Module) -> None:
    """Put the dropout layers in sampling mode, or explain why there are none."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if not layers:
        raise ConfigError(
            "eval.uncertainty=mc_dropout: this model has no dropout (it was trained with model.dropout=0 or "
            "has no dropout layers); use eval.uncertainty=tta, or train with model.dropout > 0"
        )
    for layer in layers:
        layer.train()


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: TensorBatches,
    info: DataInfo,
    speed: Speed,
    method: str = "none",
    samples: int = 1,
    seed: int = 0,
    keep_probabilities: bool = False,
) -> Predictions:
    """Run ``model`` over ``batches`` ``samples`` times as ``method`` says (see the module docstring);
    ``keep_probabilities`` keeps the segmentation probabilities (``Predictions.seg_probs``)."""
    if method not in METHODS:
        raise unknown_choice("eval.uncertainty", method, METHODS)
    model.eval()
    flips = [()]
    if method == "mc_dropout":
        _enable_dropout(model)
    elif method == "tta":
        flips = _flips(info.spatial_dims)
        if samples > len(flips):
            log.info("tta: %dD images have %d distinct flips; using those", info.spatial_dims, len(flips))
        flips = flips[:samples]
    passes = len(flips) if method == "tta" else (samples if method == "mc_dropout" else 1)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    logits, seg_labels, seg_entropy, kept = [], [], [], []
    try:
        for batch in batches.epoch():
            batch_logits, seg_probs = [], 0.0
            for index in range(passes):
                axes = flips[index] if method == "tta" else ()
                image = batch["image"].flip(axes) if axes else batch["image"]
                roi = batch.get("roi")
                with speed.autocast():
                    outputs = call(model, speed.layout(image), roi.flip(axes) if axes and roi is not None else roi)
                if info.classifies:
                    batch_logits.append(outputs["class_logits"].float().cpu())
                if info.segments:
                    seg = outputs["seg_logits"].float()
                    seg_probs = seg_probs + (seg.flip(axes) if axes else seg).softmax(dim=1) / passes
            if info.classifies:
                logits.append(torch.stack(batch_logits))
            if info.segments:
                seg_labels.append(seg_probs.argmax(dim=1).to(torch.uint8).cpu())
                seg_entropy.append(_mean_inside(entropy(seg_probs, dim=1), batch.get("roi")).cpu())
                if keep_probabilities:
                    kept.append(seg_probs.to(torch.float16).cpu())
    finally:
        torch.random.set_rng_state(generator_state)
        model.eval()
    return Predictions(
        logits=torch.cat(logits, dim=1) if logits else None,
        seg_labels=torch.cat(seg_labels) if seg_labels else None,
        seg_entropy=torch.cat(seg_entropy) if seg_entropy else None,
        seg_probs=torch.cat(kept) if kept else None,
    )


def sample_statistics(logits: torch.Tensor, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """From ``(S, N, K)`` logits: ``probs`` ``(N, K)`` (mean over passes), ``entropy`` ``(N,)`` of
    the mean, ``variance`` ``(N,)`` (mean over classes of the variance across passes; 0 for one pass)."""
    probs = (logits / temperature).softmax(dim=-1)
    mean = probs.mean(0)
    variance = probs.var(0, unbiased=False).mean(-1)
    return {"probs": mean, "entropy": entropy(mean, dim=-1), "variance": variance}


def risk_coverage(uncertainty: torch.Tensor, quality: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean quality of the cases kept when the most uncertain ones are referred to a human.

    Args:
        uncertainty: ``(N,)``, higher = less sure.
        quality: ``(N,)`` per case, e.g. 1/0 correct or the Dice.

    Returns:
        ``coverage`` ``(N,)`` = k/N for k = 1..N, and ``quality`` ``(N,)``: the mean quality of
        the k most certain cases (ties broken by case order).
    """
    order = torch.sort(uncertainty.double(), stable=True).indices
    kept = torch.arange(1, len(order) + 1, dtype=torch.float64)
    return {"coverage": kept / len(order), "quality": quality.double()[order].cumsum(0) / kept}


def _mean_inside(values: torch.Tensor, roi: torch.Tensor | None) -> torch.Tensor:
    """``(B, *spatial)`` -> ``(B,)``: the mean over each case's pixels inside its ``(B, 1, *spatial)``
    ROI (padding of native sizes, a field of view), or over all pixels without one."""
    if roi is None:
        return values.flatten(1).mean(1)
    inside = roi[:, 0].flatten(1).to(values.dtype)
    return (values.flatten(1) * inside).sum(1) / inside.sum(1).clamp(min=1)
