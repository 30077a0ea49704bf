"""Heads shared by the model families."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Global average pooling, dropout and a linear layer.

    Args:
        in_channels: channels ``C`` of the feature map ``(B, C, *spatial)``.
        num_classes: number of output logits ``K``.
        dropout: dropout probability before the linear layer.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` features -> ``(B, K)`` logits."""
        pooled = features.flatten(2).mean(dim=2)
        return self.linear(self.dropout(pooled))
