"""Sliding-window inference: a model trained on patches, applied to whole images.

Windows of the training patch size overlap by ``overlap`` (0.5: each pixel is seen by up to
2^dims windows) and are blended with Gaussian weights, so the centre of a window, where the
network saw most context, counts most (nnU-Net's scheme). MONAI's ``sliding_window_inference``
does the tiling, batching of windows and blending; images smaller than a window are padded.

Given the region of interest of padded native-size images, each image is only tiled over the
bounding box of its region (its own size, as MONAI's pipeline tiles each volume), and the
outputs outside are zero logits, which no loss or metric reads.
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

    def forward(self, images: torch.Tensor, roi: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` -> ``{"seg_logits": (B, K, *spatial)}``; with ``roi`` ``(B, 1, *spatial)``
        each image is tiled over its region's bounding box only."""
        if roi is None:
            return self._tile(images)
        outputs: dict[str, torch.Tensor] = {}
        for index, region in enumerate(roi[:, 0]):
            box = (slice(index, index + 1), slice(None), *bounding_box(region))
            part = self._tile(images[box])
            for key, value in part.items():
                if key not in outputs:
                    outputs[key] = value.new_zeros(len(images), value.shape[1], *images.shape[2:])
                outputs[key][box] = value
        return outputs

    def _tile(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return sliding_window_inference(
            images,
            self.window,
            self.windows_per_call,
            self.model,
            overlap=self.overlap,
            mode="gaussian",
        )


def bounding_box(region: torch.Tensor) -> tuple[slice, ...]:
    """The smallest box holding every nonzero pixel of ``region`` ``(*spatial)`` (all of it when empty)."""
    found = region.nonzero()
    if not len(found):
        return tuple(slice(0, n) for n in region.shape)
    low, high = found.amin(0).tolist(), (found.amax(0) + 1).tolist()
    return tuple(slice(a, b) for a, b in zip(low, high, strict=True))


def call(model: nn.Module, images: torch.Tensor, roi: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``model(images)``; a ``SlidingWindow`` also gets the batch's region of interest."""
    return model(images, roi) if isinstance(model, SlidingWindow) and roi is not None else model(images)
