"""Batches of a split, in one of two ways that give identical batches (``trainer.loader``).

- ``memory``: the split's tensors live on the training device and a batch is one
  ``index_select`` per key, with no per-sample Python and no collation. Small datasets (the
  phantom, MedMNIST sizes) fit, on the GPU too.
- ``stream``: the tensors stay in host memory; DataLoader worker processes gather each batch
  (one fancy-index per key), pinned memory and prefetching overlap the copy to the GPU with
  the previous step. For datasets that do not fit in GPU memory.

``auto`` streams only on CUDA when the splits would take more than half of the free GPU memory.
Both shuffle from ``(seed, epoch)`` alone, so a resumed run sees the same batches as an
uninterrupted one without saving loader state, whichever loader it uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from medimg_cli.errors import ConfigError, unknown_choice

Batch = dict[str, torch.Tensor]
LOADERS = ("auto", "memory", "stream")


def epoch_order(size: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order of one epoch: a permutation drawn from ``(seed, epoch)``, or ``0..size-1``."""
    if not shuffle:
        return torch.arange(size)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator)


class _Plan:
    """Batch sizes and order shared by both loaders."""

    def __init__(
        self, size: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int, shard: tuple[int, int] = (0, 1)
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last and size > batch_size
        self.seed = seed
        self.rank, self.world = shard

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def chunks(self, epoch: int, device: torch.device | None = None) -> list[torch.Tensor]:
        """The index tensor of every batch of ``epoch`` (on ``device``: one copy for the whole epoch)."""
        order = epoch_order(self.size, self.seed, epoch, self.shuffle).to(device)
        chunks = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))]
        if self.world > 1:  # distributed: this process's contiguous part of every global batch
            chunks = [chunk.tensor_split(self.world)[self.rank] for chunk in chunks]
        return chunks


class TensorBatches:
    """A split held on ``device``; each batch is an index slice (``trainer.loader=memory``).

    Args:
        tensors: sample tensors with the same first dimension ``N`` (moved to ``device``).
        batch_size: samples per batch.
        device: where batches are produced.
        shuffle: draw a new permutation every epoch.
        drop_last: drop a final incomplete batch (training: avoids batch-norm on tiny batches).
        seed: base seed of the shuffling.
        shard: ``(rank, world size)``: yield only this process's part of every batch (DDP).
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.tensors = {key: value.to(device) for key, value in tensors.items()}
        self.plan = _Plan(len(next(iter(self.tensors.values()))), batch_size, shuffle, drop_last, seed, shard)
        self.device = device

    def __len__(self) -> int:
        return len(self.plan)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """Yield the batches of one epoch as dictionaries of ``(B, ...)`` tensors."""
        # the order goes to the device once per epoch: a copy per batch would wait for the GPU each step
        for index in self.plan.chunks(epoch, self.device):
            yield {key: value.index_select(0, index) for key, value in self.tensors.items()}


class _Rows(Dataset):
    """``dataset[indices]`` gathers a whole batch with one fancy-index per key."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(indices)
        return {key: value.index_select(0, index) for key, value in self.tensors.items()}


class _EpochSampler:
    """Yields the index lists of the epoch set last; lets the DataLoader's workers persist."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[list[int]]:
        return (chunk.tolist() for chunk in self.plan.chunks(self.epoch))


class StreamBatches:
    """A split held in host memory, gathered by DataLoader workers (``trainer.loader=stream``).

    Args:
        tensors: sample tensors with the same first dimension ``N`` (kept on the CPU).
        batch_size, shuffle, drop_last, seed: as for ``TensorBatches``, with identical batches.
        device: where batches are delivered (copied from pinned memory without blocking on CUDA).
        workers: DataLoader worker processes (0 gathers in the training process).
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        workers: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        cpu = {key: value.cpu() for key, value in tensors.items()}
        self.plan = _Plan(len(next(iter(cpu.values()))), batch_size, shuffle, drop_last, seed, shard)
        self.device = device
        self.sampler = _EpochSampler(self.plan)
        self.loader = DataLoader(
            _Rows(cpu),
            sampler=self.sampler,
            batch_size=None,  # the sampler yields whole batches
            num_workers=workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers else None,
            persistent_workers=workers > 0,
            # its own generator: worker seeds must not consume the global RNG that augmentation
            # and dropout draw from, or the two loaders would train differently
            generator=torch.Generator(),
        )

    def __len__(self) -> int:
        return len(self.plan)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """Yield the batches of one epoch, on ``device``."""
        self.sampler.epoch = epoch
        for batch in self.loader:
            yield {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}


def make_batches(
    tensors: Mapping[str, torch.Tensor],
    batch_size: int,
    device: torch.device,
    loader: str = "memory",
    workers: int = 0,
    **plan: bool | int,
) -> TensorBatches | StreamBatches:
    """The batches of a split as ``trainer.loader`` says (``plan``: shuffle, drop_last, seed).

    Args:
        loader: ``memory`` or ``stream`` (resolve ``auto`` with ``choose_loader`` first).
        workers: stream workers.
    """
    if loader == "stream":
        return StreamBatches(tensors, batch_size, device, workers=workers, **plan)
    return TensorBatches(tensors, batch_size, device, **plan)


def choose_loader(loader: str, workers: int | str, splits: Sequence[Mapping[str, torch.Tensor]], device: torch.device):
    """Resolve ``trainer.loader`` and ``trainer.workers`` (``auto``) for these splits on ``device``.

    Returns:
        ``(loader, workers)``: ``memory`` or ``stream``, and the number of worker processes.
    """
    if loader not in LOADERS:
        raise unknown_choice("trainer.loader", loader, LOADERS)
    if workers == "auto":
        workers = min(8, os.cpu_count() or 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ConfigError(f"trainer.workers={workers!r} must be auto or a whole number >= 0, e.g. trainer.workers=4")
    if loader == "auto":
        loader = "memory"
        if device.type == "cuda":
            size = sum(t.numel() * t.element_size() for split in splits for t in split.values())
            free, _ = torch.cuda.mem_get_info(device)
            loader = "stream" if size > free / 2 else "memory"
    return loader, workers
