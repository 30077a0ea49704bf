"""Maps of where a classifier looked, and a check that they depend on what it learned.

Methods (``eval.explain``), each giving one map per case in [0, 1] at the image size, 2D or 3D:

- ``gradcam`` / ``gradcam++``: MONAI's ``GradCAM`` / ``GradCAMpp`` on a convolutional layer,
  by default the deepest encoder stage of the model's ``layer_groups()`` (the features the
  classification head pools), or ``eval.target_layer``.
- ``saliency``: |d logit / d image| (MONAI's ``VanillaGrad``), maximum over channels.
- ``integrated_gradients`` (Sundararajan et al. 2017): |(x - 0) * mean gradient along the
  straight path from a black image|, ``steps`` points; written here because neither MONAI nor
  torchvision has it and it is twelve lines.
- ``attention``: attention rollout (Abnar & Zuidema 2020) of the self-attention blocks of the
  Transformer and the hybrid: per block, the head-averaged attention plus the identity (the
  residual), rows renormalised, multiplied through the blocks; a token's score is the
  attention it receives on average (the models pool tokens by their mean, there is no CLS
  token), reshaped to the token grid and upsampled to the image.

Model-randomisation test (Adebayo et al. 2018): the same maps from the same architecture with
freshly initialised weights. Maps that explain the model should change; the Spearman rank
correlation between trained and randomised maps, per case, says by how much.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM, GradCAMpp, VanillaGrad
from scipy.stats import spearmanr
from torch import nn

from medimg_cli.errors import ConfigError, unknown_choice
from medimg_cli.models import create_model

METHODS = ("gradcam", "gradcam++", "saliency", "integrated_gradients", "attention")
_NOT_ENCODER = ("head", "decoder", "attention", "norm", "embedding")


class ClassLogits(nn.Module):
    """A medimg model seen as ``image -> (B, K) class logits``, the interface MONAI's maps expect."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)["class_logits"]


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max each ``(N, *spatial)`` map to [0, 1] (a constant map becomes 0)."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp(min=1e-12)).reshape(maps.shape)


def encoder_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """The encoder stages of the model's ``layer_groups()``, shallow to deep, and the
    convolutions inside them: the names ``eval.target_layer`` may take."""
    groups = model.layer_groups() if hasattr(model, "layer_groups") else {}
    stages = [p for name, paths in groups.items() if not name.startswith(_NOT_ENCODER + ("block",)) for p in paths]
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    return stages, [n for n in convs if any(n.startswith(p + ".") for p in stages)]


def target_layer(model: nn.Module, name: str | None) -> str:
    """``name`` checked against the model's layers, or the deepest encoder stage when ``None``."""
    stages, convs = encoder_layers(model)
    if not stages:
        raise ConfigError(
            f"eval.explain=gradcam needs a convolutional encoder and {type(model).__name__} has none; "
            "use eval.explain=attention or eval.explain=saliency"
        )
    if name is None:
        return stages[-1]
    if name not in stages + convs:
        raise unknown_choice("eval.target_layer", name, stages + convs)
    return name


def _unchanged(maps: torch.Tensor) -> torch.Tensor:
    return maps


def _grad_cam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, layer: str, plus: bool) -> torch.Tensor:
    # MONAI's default post-processing maps (min, max) to (1, 0), flipping the map; keep it raw
    cam = (GradCAMpp if plus else GradCAM)(
        nn_module=ClassLogits(model), target_layers=f"model.{layer}", postprocessing=_unchanged
    )
    # one case at a time: MONAI sums the class scores of the whole batch before the backward pass
    return torch.cat([cam(images[i : i + 1], class_idx=int(classes[i]))[:, 0] for i in range(len(images))])


def _saliency(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    grads = VanillaGrad(ClassLogits(model))
    return torch.cat([grads(images[i : i + 1], index=int(classes[i])).abs().amax(1) for i in range(len(images))])


def _integrated_gradients(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, steps: int) -> torch.Tensor:
    alphas = (torch.arange(steps, device=images.device, dtype=images.dtype) + 0.5) / steps  # midpoint rule
    maps = []
    for image, cls in zip(images, classes, strict=True):
        path = (alphas.view(-1, *[1] * image.dim()) * image).requires_grad_(True)
        score = model(path)["class_logits"][:, int(cls)].sum()
        (grad,) = torch.autograd.grad(score, path)
        maps.append((image * grad.mean(0)).abs().amax(0, keepdim=True))
    return torch.cat(maps)


def _attention_blocks(model: nn.Module) -> list[nn.Module]:
    from monai.networks.blocks.selfattention import SABlock

    blocks = [m for m in model.modules() if isinstance(m, SABlock)]
    if not blocks:
        raise ConfigError(
            f"eval.explain=attention needs self-attention blocks and {type(model).__name__} has none; "
            "use eval.explain=gradcam or eval.explain=saliency"
        )
    return blocks


def _attention_rollout(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    blocks = _attention_blocks(model)
    for block in blocks:
        block.save_attn = True
    try:
        with torch.no_grad():
            model(images)
        rollout = None
        for block in blocks:
            attention = block.att_mat.mean(1)  # (B, N, N), averaged over heads
            attention = attention + torch.eye(attention.shape[-1], device=attention.device)
            attention = attention / attention.sum(-1, keepdim=True)
            rollout = attention if rollout is None else attention @ rollout
    finally:
        for block in blocks:
            block.save_attn = False
    scores = rollout.mean(1)  # (B, N): attention each token receives, averaged over the pooled tokens
    tokens = scores.shape[1]
    dims = images.dim() - 2
    side = round(tokens ** (1 / dims))
    grid = _token_grid(model, images, tokens) or (side,) * dims
    maps = scores.reshape(len(images), 1, *grid)
    mode = "bilinear" if dims == 2 else "trilinear"
    return F.interpolate(maps, size=images.shape[2:], mode=mode, align_corners=False)[:, 0]


def _token_grid(model: nn.Module, images: torch.Tensor, tokens: int) -> tuple[int, ...] | None:
    """The token grid of the model's attention: every image axis shrunk by the same factor."""
    spatial = images.shape[2:]
    for factor in range(1, max(spatial) + 1):
        grid = tuple(s // factor for s in spatial)
        if all(s % factor == 0 for s in spatial) and int(np.prod(grid)) == tokens:
            return grid
    return None


def explain(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    method: str,
    layer: str | None = None,
    steps: int = 32,
) -> torch.Tensor:
    """Maps ``(N, *spatial)`` in [0, 1] of ``images`` ``(N, C, *spatial)`` for ``classes`` ``(N,)``.

    Args:
        model: a classifying medimg model (``class_logits`` in its outputs), put in eval mode.
        method: one of ``METHODS``.
        layer: the Grad-CAM layer (``None``: the default of ``target_layer``).
        steps: integration points of ``integrated_gradients``.
    """
    if method not in METHODS:
        raise unknown_choice("eval.explain", method, METHODS)
    model.eval()
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's hooks warn about in-place activations they work around
        if method in ("gradcam", "gradcam++"):
            maps = _grad_cam(model, images, classes, target_layer(model, layer), method == "gradcam++")
        elif method == "saliency":
            maps = _saliency(model, images, classes)
        elif method == "integrated_gradients":
            maps = _integrated_gradients(model, images, classes, steps)
        else:
            maps = _attention_rollout(model, images)
    return _normalise(maps.detach().float())


def randomised(model_name: str, args: dict, seed: int = 0) -> nn.Module:
    """The same architecture with fresh random weights (a fixed ``seed``), for the sanity check."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(model_name, **args)


def rank_correlations(first: torch.Tensor, second: torch.Tensor) -> np.ndarray:
    """Spearman correlation per case of two ``(N, *spatial)`` map stacks; 0 when a map is
    constant (a randomised model often gives an all-zero Grad-CAM), as it ranks no pixel."""
    found = []
    for a, b in zip(first.flatten(1).cpu().numpy(), second.flatten(1).cpu().numpy(), strict=True):
        constant = np.ptp(a) == 0 or np.ptp(b) == 0
        found.append(0.0 if constant else spearmanr(a, b).statistic)
    return np.array(found, dtype=float)
