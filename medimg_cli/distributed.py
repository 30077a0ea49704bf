"""Distributed data parallel training with PyTorch's own launcher (torchrun) and process groups.

``torchrun --nproc_per_node=N -m medimg_cli train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; ``medimg train trainer.devices=N`` runs that command for
you. Every process:

- joins the process group before Hydra starts (NCCL on CUDA, gloo on CPU) and uses the run
  folder that rank 0 chose, so Hydra's time-stamped ``runs/<date>/<time>`` cannot differ
  between ranks that start a second apart;
- trains its contiguous part of every global batch (``trainer.batch_size`` is the global
  batch, split evenly) through ``DistributedDataParallel``, which averages the gradients, so
  a step equals the single-process step on the same global batch (exactly with
  ``trainer.sync_batchnorm=true``; otherwise batch norm sees each process's part only).

Rank 0 alone evaluates (on the whole validation and test splits, so the metrics are those of
every case, not of one shard) and writes the run folder, checkpoints and tracking; the others
wait at a barrier. Resume reads the same ``last.pt`` on every rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist

from medimg_cli.errors import ConfigError


def world() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun's environment; ``(0, 1, 0)`` without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """True on rank 0 (and without distribution): the process that writes and prints."""
    return not is_distributed() or dist.get_rank() == 0


def requested_devices(argv: Sequence[str]) -> int:
    """``trainer.devices=N`` from the command line (1 when absent)."""
    for argument in argv:
        key, _, value = argument.lstrip("+").partition("=")
        if key == "trainer.devices":
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"trainer.devices={value!r} must be a whole number of processes") from None
    return 1


def launch(argv: Sequence[str], devices: int) -> int:
    """Run ``medimg train argv`` as ``devices`` processes under torchrun on this machine; its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}"]
    return subprocess.call([*command, "-m", "medimg_cli", "train", *argv])


def join(argv: list[str]) -> list[str]:
    """Join the process group of a torchrun launch and return ``argv`` with rank 0's run folder.

    Without torchrun's environment (one process), ``argv`` comes back unchanged.
    """
    rank, size, local_rank = world()
    if size == 1:
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError("a distributed run is one run; sweep with medimg benchmark or hydra/launcher=slurm instead")
    use_cuda = torch.cuda.is_available() and not any(a in ("device=cpu", "+device=cpu") for a in argv)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    chosen = [time.strftime("runs/%Y-%m-%d/%H-%M-%S") if rank == 0 else None]
    dist.broadcast_object_list(chosen, src=0)
    return [*argv, f"hydra.run.dir={chosen[0]}"]


def device_for_rank(device: torch.device) -> torch.device:
    """``cuda`` becomes this process's GPU (``cuda:LOCAL_RANK``) when distributed."""
    if is_distributed() and device.type == "cuda":
        return torch.device("cuda", world()[2])
    return device


def sum_across(*values: float) -> list[float]:
    """Each value summed over the processes (itself without distribution)."""
    if not is_distributed():
        return list(values)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def reduce_across(stats: Mapping[str, float], weight: str, how: Mapping[str, str]) -> dict[str, float]:
    """``stats`` of this process combined over all processes.

    Args:
        stats: this process's values, with its sample count under ``weight``.
        how: key -> ``mean`` (weighted by the sample counts) or ``sum``; other keys are dropped.
    """
    keys = [key for key in how if key in stats]
    values = [stats[key] * stats[weight] if how[key] == "mean" else stats[key] for key in keys]
    *totals, count = sum_across(*values, stats[weight])
    combined = {key: total / count if how[key] == "mean" else total for key, total in zip(keys, totals, strict=True)}
    return combined | {weight: count}


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def leave() -> None:
    if is_distributed():
        dist.destroy_process_group()
