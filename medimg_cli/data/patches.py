"""Patch training: random patches of the full images, drawn and cut on the device.

With ``data.patch_size`` a segmentation run trains on patches rather than whole images, as
nnU-Net does: every step draws ``batch_size`` patches from random training images; the last
``foreground_fraction`` of them (nnU-Net: a third) are placed so that a random foreground pixel
lies inside, so that small structures are seen; the others lie anywhere inside the image (its
region of interest when padded). An epoch is ``trainer.steps_per_epoch`` steps.

MONAI's ``RandCropByPosNegLabeld`` does the same per sample in DataLoader workers; here the
whole batch is one gather on the device from images that already live there, which is what
makes patch training fast on a GPU (``benchmarks/`` compares the two).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from medimg_cli.data import DataInfo
from medimg_cli.data.native import pad_to
from medimg_cli.errors import ConfigError

Batch = dict[str, torch.Tensor]


def patch_size(cfg: Mapping, info: DataInfo) -> tuple[int, ...] | None:
    """``data.patch_size`` as one size per spatial axis, or ``None`` (whole images); refused where
    patches cannot be used (classification needs whole images)."""
    size = cfg.get("patch_size")
    if size is None:
        return None
    if info.task != "segmentation":
        raise ConfigError(
            f"data.patch_size trains segmentation on patches; data.task={info.task} needs whole images: "
            "use data.task=segmentation or data.patch_size=null"
        )
    size = tuple(size) if isinstance(size, Sequence) else (size,) * info.spatial_dims
    if len(size) != info.spatial_dims or not all(isinstance(n, int) and n > 0 for n in size):
        raise ConfigError(
            f"data.patch_size={list(size)} must be {info.spatial_dims} positive integers, one per spatial axis"
        )
    return size


def pad_for_patches(tensors: Mapping[str, torch.Tensor], patch: Sequence[int]) -> dict[str, torch.Tensor]:
    """Pad a split's tensors so every axis holds at least one patch (as nnU-Net pads small images);
    padded pixels are outside the ``roi``, which is added when it was missing."""
    image = tensors["image"]
    size = [max(n, p) for n, p in zip(image.shape[2:], patch, strict=True)]
    if list(image.shape[2:]) == size:
        return dict(tensors)
    roi = tensors.get("roi", torch.ones(image.shape[0], 1, *image.shape[2:], dtype=torch.uint8))
    padded = {key: value for key, value in tensors.items() if value.dim() != image.dim()}  # labels
    for key, value in {**tensors, "roi": roi}.items():
        if value.dim() == image.dim():
            padded[key] = torch.stack([pad_to(sample, size) for sample in value])
    return padded


class PatchBatches:
    """Batches of random patches of a split, ``steps`` per epoch, reproducible from ``(seed, epoch)``.

    Args:
        tensors: the split: ``image`` ``(N, C, *spatial)``, ``mask`` ``(N, 1, *spatial)``, optional
            ``roi`` ``(N, 1, *spatial)``.
        patch: the patch size, one value per spatial axis.
        shard: ``(rank, processes)`` under DDP: each process draws its share of every batch.
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        batch_size: int,
        device: torch.device,
        patch: Sequence[int],
        foreground_fraction: float,
        steps: int,
        seed: int,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if not 0 <= foreground_fraction <= 1:
            raise ConfigError(f"data.foreground_fraction={foreground_fraction} must be between 0 and 1")
        self.device, self.patch, self.steps, self.seed = device, tuple(patch), steps, seed
        self.rank, world = shard
        self.batch_size = max(1, batch_size // world)
        self.forced = round(self.batch_size * foreground_fraction)
        self.tensors = {k: v.to(device) for k, v in pad_for_patches(tensors, patch).items()}
        self._index_foreground()

    def _index_foreground(self) -> None:
        """Foreground pixels of every image (flat positions, grouped by image) and each image's extent."""
        mask = self.tensors["mask"][:, 0] > 0
        roi = self.tensors.get("roi")
        if roi is not None:
            mask = mask & (roi[:, 0] > 0)
        flat = mask.flatten(1)
        self.foreground = flat.nonzero()[:, 1].cpu()  # sorted by image, then position
        self.counts = flat.sum(1).cpu()
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        shape = self.tensors["image"].shape[2:]
        if roi is None:
            self.extent = torch.tensor([list(shape)] * len(flat))
        else:
            self.extent = torch.stack([_extent(roi[:, 0], axis) for axis in range(len(shape))], dim=1).cpu()

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 101 + self.rank)
        for _ in range(self.steps):
            samples = torch.randint(len(self.counts), (self.batch_size,), generator=generator)
            yield self._cut(samples, self._corners(samples, generator))

    def _corners(self, samples: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(B, dims)`` first pixel of each patch: anywhere in the image, or around a foreground pixel."""
        patch = torch.tensor(self.patch)
        shape = torch.tensor(self.tensors["image"].shape[2:])
        room = (self.extent[samples] - patch).clamp(min=0) + 1
        corners = (torch.rand(len(samples), len(patch), generator=generator) * room).long()
        forced = torch.arange(len(samples)) >= len(samples) - self.forced
        forced &= self.counts[samples] > 0  # an image without foreground gets a random patch
        if forced.any():
            chosen = samples[forced]
            pick = (torch.rand(len(chosen), generator=generator) * self.counts[chosen]).long()
            position = self.foreground[self.starts[chosen] + pick]
            pixel = torch.stack(torch.unravel_index(position, tuple(shape.tolist())), dim=1)
            offset = (torch.rand(len(chosen), len(patch), generator=generator) * patch).long()
            corners[forced] = pixel - offset  # the pixel lands anywhere inside the patch
        return torch.minimum(corners.clamp(min=0), shape - patch)

    def _cut(self, samples: torch.Tensor, corners: torch.Tensor) -> Batch:
        """The patches at ``corners`` of images ``samples``: one advanced-indexing gather per key."""
        dims = len(self.patch)
        samples, corners = samples.to(self.device), corners.to(self.device)  # one copy per batch
        index = [samples.view(-1, *[1] * dims)]
        for axis, length in enumerate(self.patch):
            shape = [-1] + [1] * dims
            shape[1 + axis] = length
            steps = torch.arange(length, device=self.device)
            index.append((corners[:, axis, None] + steps).view(shape))
        batch = {}
        for key, value in self.tensors.items():
            if value.dim() == dims + 2:  # (N, C, *spatial) -> (B, *patch, C) -> (B, C, *patch)
                batch[key] = value.movedim(1, -1)[tuple(index)].movedim(-1, 1).contiguous()
            else:
                batch[key] = value[index[0].flatten()]
        return batch


def _extent(roi: torch.Tensor, axis: int) -> torch.Tensor:
    """``(N,)`` one past the last ROI pixel along ``axis`` of ``(N, *spatial)`` maps."""
    along = roi.movedim(1 + axis, -1).flatten(1, -2).any(1)  # (N, length): any ROI pixel at each index
    positions = torch.arange(1, along.shape[1] + 1, device=roi.device)
    return (along * positions).amax(1)
