"""Sliding-window inference: a model trained on patches, applied to whole images.

Windows of the training patch size overlap by ``overlap`` (0.5: each pixel is seen by up to
2^dims windows) and are blended with Gaussian weights, so the centre of a window, where the
network saw most context, counts most (nnU-Net's scheme). MONAI's ``sliding_window_inference``
does the tiling, batching of windows and blending; images smaller than a window are padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import nn


class SlidingWindow(nn.Module):
    """Call ``model`` on windows of ``window`` pixels and blend them into whole-image outputs.

    Args:
        model: maps ``(B, C, *window)`` images to ``{"seg_logits": (B, K, *window)}``.
        window: the window size, one value per spatial axis (the training patch size).
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        windows_per_call: windows batched into one forward pass.
    """

    def __init__(self, model: nn.Module, window: Sequence[int], overlap: float = 0.5, windows_per_call: int = 4):
        super().__init__()
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap={overlap} must be in [0, 1)")
        self.model, self.window = model, tuple(window)
        self.overlap, self.windows_per_call = overlap, windows_per_call

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` -> ``{"seg_logits": (B, K, *spatial)}``."""
        return sliding_window_inference(
            images,
            self.window,
            self.windows_per_call,
            self.model,
            overlap=self.overlap,
            mode="gaussian",
        )
