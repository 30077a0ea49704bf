"""Multi-modal fusion (``model.fusion``) around any model with medimg's heads (cnn, unet,
transformer, hybrid), for images whose channels are M modalities of C channels each
(``DataInfo.modalities``; a manifest's ``data.modalities`` columns, nnU-Net's ``_0000``, ``_0001``).

- ``early``: one network on the stacked channels (what every model does without fusion).
- ``late``: one encoder per modality (the model built for C channels, M times, not shared); the
  deepest features of the M encoders are concatenated before one classification head, as in
  MMNet-style networks; masks: the M mask logits are fused by a 1x1 convolution.
- ``attention``: as ``late``, but a learned score per modality, softmax over modalities, weighs
  the M feature maps into one (per sample: a noisy or missing modality can be down-weighted);
  masks: a per-pixel softmax over the modalities' scored logits.

``model.modality_dropout`` p: while training, each modality of each sample is blanked (set to 0)
with probability p, at least one kept, so the model learns to work when one is missing;
``medimg eval`` reports the metrics with each modality blanked the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks.layers import Conv
from torch import nn

from medimg_cli.errors import ConfigError, unknown_choice
from medimg_cli.models.heads import ClassificationHead

FUSIONS = ("early", "late", "attention")
FUSION_KEYS = ("fusion", "modality_dropout", "modalities")  # taken by create_model, not passed to a model


def blank_modalities(image: torch.Tensor, modalities: int, keep: torch.Tensor) -> torch.Tensor:
    """``image`` ``(B, M*C, *spatial)`` with modality m of sample b set to 0 where ``keep[b, m]`` is 0."""
    groups = image.reshape(image.shape[0], modalities, -1, *image.shape[2:])
    shape = (*keep.shape, *(1,) * (groups.dim() - 2))
    return (groups * keep.reshape(shape).to(image.dtype)).reshape(image.shape)


def random_keep(batch: int, modalities: int, p: float, device: torch.device) -> torch.Tensor:
    """``(B, M)`` 0/1: each modality dropped with probability ``p``, at least one kept per sample."""
    keep = (torch.rand(batch, modalities, device=device) >= p).float()
    none = keep.sum(dim=1) == 0
    rescue = torch.randint(0, modalities, (batch,), device=device)  # a sample that lost all keeps one
    keep[none, rescue[none]] = 1.0
    return keep


class Fused(nn.Module):
    """M modality branches and their fusion (see the module docstring).

    Args:
        build: ``in_channels -> model``: the chosen model for that many input channels.
        modalities: M; channels: C, the channels of one modality.
        fusion: ``early``, ``late`` or ``attention``.
        modality_dropout: p of blanking a modality while training.
        classes: ``(num_classes, num_seg_classes)``; task, spatial_dims: the data's.
    """

    def __init__(self, build: Callable[[int], nn.Module], modalities: int, channels: int, fusion: str,
                 modality_dropout: float, classes: tuple[int, int], task: str, spatial_dims: int) -> None:  # fmt: skip
        super().__init__()
        self.modalities, self.fusion, self.dropout = modalities, fusion, modality_dropout
        if fusion == "early":
            self.branches = nn.ModuleList([build(modalities * channels)])
            return
        self.branches = nn.ModuleList(build(channels) for _ in range(modalities))
        num_classes, num_seg_classes = classes
        self.head = self.score = self.seg_fuse = None
        if task != "segmentation":
            heads = [getattr(branch, "head", None) for branch in self.branches]
            if not all(isinstance(head, ClassificationHead) for head in heads):
                raise ConfigError(f"model.fusion={fusion} needs a model with medimg's classification head "
                                  "(cnn, unet, transformer, hybrid)")  # fmt: skip
            width, dropout = heads[0].linear.in_features, heads[0].dropout.p
            for branch in self.branches:  # each branch now returns its deepest features as class_logits
                branch.head = nn.Identity()
            self.head = ClassificationHead(width * (modalities if fusion == "late" else 1), num_classes, dropout)
            self.score = nn.Linear(width, 1) if fusion == "attention" else None
        if task != "classification":
            late = fusion == "late"
            self.seg_fuse = (
                _LateMasks(modalities, num_seg_classes, spatial_dims)
                if late
                else _AttentionMasks(num_seg_classes, spatial_dims)
            )

    def layer_groups(self) -> dict[str, list[str]]:
        """``branches`` (the encoders), then ``fusion`` and ``head``; early fusion: the model's own groups."""
        if self.fusion == "early":
            inner = getattr(self.branches[0], "layer_groups", lambda: {"model": [""]})()
            return {name: [f"branches.0.{p}".rstrip(".") for p in prefixes] for name, prefixes in inner.items()}
        fusion = [name for name in ("score", "seg_fuse") if getattr(self, name) is not None]
        return {"branches": ["branches"], **({"fusion": fusion} if fusion else {}),
                **({"head": ["head"]} if self.head is not None else {})}  # fmt: skip

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, M*C, *spatial)`` -> the model's outputs (``class_logits``, ``seg_logits``)."""
        if self.training and self.dropout:
            keep = random_keep(image.shape[0], self.modalities, self.dropout, image.device)
            image = blank_modalities(image, self.modalities, keep)
        if self.fusion == "early":
            return self.branches[0](image)
        groups = image.chunk(self.modalities, dim=1)
        outs = [branch(group) for branch, group in zip(self.branches, groups, strict=True)]
        found = {}
        if self.head is not None:
            found["class_logits"] = self.head(self._fuse_features([out["class_logits"] for out in outs]))
        if self.seg_fuse is not None:
            found["seg_logits"] = self.seg_fuse([out["seg_logits"] for out in outs])
        return found

    def _fuse_features(self, features: list[torch.Tensor]) -> torch.Tensor:
        """M feature maps ``(B, W, *s)`` -> ``(B, M*W, *s)`` (late) or their attention-weighted sum ``(B, W, *s)``."""
        if self.score is None:
            return torch.cat(features, dim=1)
        stacked = torch.stack(features, dim=1)  # (B, M, W, *s)
        weights = self.score(stacked.flatten(3).mean(dim=3)).softmax(dim=1)  # (B, M, 1)
        return (stacked * weights.reshape(*weights.shape, *(1,) * (stacked.dim() - 3))).sum(dim=1)


class _LateMasks(nn.Module):
    """M mask logits ``(B, K, *S)`` -> ``(B, K, *S)`` by a 1x1 convolution of their concatenation."""

    def __init__(self, modalities: int, classes: int, dims: int) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, dims](modalities * classes, classes, kernel_size=1)

    def forward(self, logits: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(torch.cat(logits, dim=1))


class _AttentionMasks(nn.Module):
    """M mask logits ``(B, K, *S)`` -> their sum weighted per pixel by a softmax over modalities of a
    learned 1x1 score of each."""

    def __init__(self, classes: int, dims: int) -> None:
        super().__init__()
        self.score = Conv[Conv.CONV, dims](classes, 1, kernel_size=1)

    def forward(self, logits: list[torch.Tensor]) -> torch.Tensor:
        weights = torch.cat([self.score(each) for each in logits], dim=1).softmax(dim=1)  # (B, M, *S)
        return sum(weights[:, m : m + 1] * each for m, each in enumerate(logits))


def check_fusion(fusion: str, modality_dropout: float, modalities: int) -> None:
    """One line for a fusion setting that cannot work with ``modalities`` modalities."""
    if fusion not in FUSIONS:
        raise unknown_choice("model.fusion", fusion, FUSIONS)
    if not isinstance(modality_dropout, (int, float)) or not 0 <= modality_dropout < 1:
        raise ConfigError(f"model.modality_dropout={modality_dropout} must be a probability in [0, 1)")
    if modalities < 2 and (fusion != "early" or modality_dropout):
        raise ConfigError(
            f"model.fusion={fusion} model.modality_dropout={modality_dropout} need several modalities; this data has "
            "one (data.modalities: the phantom's count, or a manifest's image columns)"
        )
