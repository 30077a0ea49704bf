"""Batches as index slices of tensors that already live on the training device.

Small datasets (the phantom, MedMNIST sizes) fit in memory, so a batch is one ``index_select``
per key instead of per-sample Python and collation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch


class TensorBatches:
    """Iterate over a split in batches; shuffled per epoch from ``(seed, epoch)`` when training.

    Shuffling depends only on the seed and the epoch number, so a resumed run sees the same
    batches as an uninterrupted one without saving loader state.

    Args:
        tensors: sample tensors with the same first dimension ``N`` (moved to ``device``).
        batch_size: samples per batch.
        device: where batches are produced.
        shuffle: draw a new permutation every epoch.
        drop_last: drop a final incomplete batch (training: avoids batch-norm on tiny batches).
        seed: base seed of the shuffling.
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        self.tensors = {key: value.to(device) for key, value in tensors.items()}
        self.size = len(next(iter(self.tensors.values())))
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.drop_last = drop_last and self.size > batch_size
        self.seed = seed

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def epoch(self, epoch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the batches of one epoch as dictionaries of ``(B, ...)`` tensors."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=generator).to(self.device)
        else:
            order = torch.arange(self.size, device=self.device)
        for batch_index in range(len(self)):
            index = order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
            yield {key: value.index_select(0, index) for key, value in self.tensors.items()}
