"""The training and evaluation steps shared by ``medimg train`` and ``medimg eval``.

One epoch of training: for each batch, augment on the device, forward (under the run's
``Speed``: autocast, memory layout), task loss in fp32, backward, optimizer step (through the
gradient scaler, which only acts for fp16). The loss is summed on the device and read once per
epoch, so the step has no host-device synchronisation. Evaluation runs the model in eval mode
without gradients and times the forward passes with device synchronisation for the
seconds-per-image figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from medimg_cli.augment import Augmenter
from medimg_cli.data.batches import StreamBatches, TensorBatches
from medimg_cli.losses import TaskLoss
from medimg_cli.metrics import TaskMetrics
from medimg_cli.sliding import call
from medimg_cli.speed import Speed

Batches = TensorBatches | StreamBatches


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(
    model: nn.Module,
    batches: Batches,
    epoch: int,
    loss_fn: TaskLoss,
    optimizer: torch.optim.Optimizer | None,
    augment: Augmenter,
    speed: Speed,
    scaler: torch.amp.GradScaler,
    on_batch: Callable[[], None] = lambda: None,
    skip_nonfinite: bool = False,
    warmup: bool = False,
) -> dict[str, float]:
    """Train for one epoch; returns ``train_loss`` (sample-weighted mean), throughput,
    ``train_samples``, ``nonfinite_steps``, ``first_nonfinite_step`` (1-based, 0 when none) and
    ``warmup_seconds``.

    Args:
        model: what to call (``speed.prepare``'s result).
        scaler: ``speed.scaler()``, kept across epochs (and in ``last.pt``) for fp16.
        skip_nonfinite: skip the optimizer step of batches whose loss is NaN or infinite (a check
            that waits for the device every step); otherwise they are only counted, on the device,
            for the caller to stop on (``trainer.on_nonfinite``).
        warmup: the first epoch of a session: its first step (compilation, cuDNN autotuning, first
            allocations) is timed on its own, as ``warmup_seconds``, and left out of the throughput.
    """
    model.train()
    total, count = torch.zeros((), device=batches.device), 0
    bad, first = torch.zeros((), dtype=torch.long, device=batches.device), torch.zeros((), device=batches.device)
    synchronize(batches.device)
    start = time.perf_counter()
    warm, warm_images = 0.0, 0
    for step, batch in enumerate(batches.epoch(epoch), start=1):
        if warmup and step == 2:  # one wait for the device, in one epoch of the session
            synchronize(batches.device)
            warm, warm_images = time.perf_counter() - start, count
        batch = augment(batch)
        with speed.autocast():
            outputs = model(speed.layout(batch["image"]))
        loss = loss_fn(outputs, batch)
        finite = torch.isfinite(loss.detach())
        bad += (~finite).long()
        first = torch.where((first == 0) & ~finite, torch.full_like(first, step), first)
        on_batch()
        if skip_nonfinite and not finite.item():
            continue
        if optimizer is not None:  # None: the forward pass fitted statistics (padim)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        size = batch["image"].shape[0]
        total += loss.detach() * size
        count += size
    synchronize(batches.device)
    seconds = time.perf_counter() - start
    if warm_images == 0 or warm_images == count:  # one step only: nothing to leave out
        warm, warm_images = 0.0, 0
    return {
        "train_loss": total.item() / count if count else float("nan"),
        "train_images_per_second": (count - warm_images) / (seconds - warm),
        "warmup_seconds": warm,
        "train_samples": count,
        "nonfinite_steps": int(bad.item()),
        "first_nonfinite_step": int(first.item()),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    loss_fn: TaskLoss,
    speed: Speed,
    metrics: TaskMetrics | None = None,
    keep: tuple[list, int] | None = None,
    warmup: bool = False,
) -> dict[str, float]:
    """Loss, task metrics and ``seconds_per_image`` (forward passes only) on one split.

    Args:
        metrics: an empty ``TaskMetrics`` to accumulate into, for callers that want its per-case
            values (``metrics.cases()``) afterwards.
        keep: ``(found, n)``: ``(outputs, batch)`` pairs of the first batches, until they hold
            ``n`` samples, are appended to ``found`` (the tracker's pictures reuse them rather
            than predicting again, which with sliding windows costs as much as the validation).
        warmup: pass each new batch shape once, untimed, before its timed pass (compilation,
            autotuning), and return that time as ``warmup_seconds``, so ``seconds_per_image`` is
            the processing time alone.
    """
    model.eval()
    metrics = metrics if metrics is not None else TaskMetrics(loss_fn.info)
    total, count, images, seconds, warm, shapes = 0.0, 0, 0, 0.0, 0.0, set()
    for batch in batches.epoch():
        shape = tuple(batch["image"].shape)
        if warmup and shape not in shapes:  # a new shape compiles again under torch.compile: untimed
            shapes.add(shape)
            warm += timed_forward(model, batch, speed, batches.device)[1]
        outputs, elapsed = timed_forward(model, batch, speed, batches.device)
        seconds += elapsed
        size = loss_fn.counted(batch)  # anomaly detection: the normal images only
        if size:
            total += loss_fn(outputs, batch).item() * size
        count += size
        images += batch["image"].shape[0]
        metrics.update(outputs, batch)
        if keep is not None and sum(len(b["image"]) for _, b in keep[0]) < keep[1]:
            keep[0].append(({key: value.detach() for key, value in outputs.items()}, batch))
    loss = total / count if count else math.nan
    found = {"loss": loss, **metrics.compute(), "seconds_per_image": seconds / images}
    return found | {"warmup_seconds": warm} if warmup else found


def timed_forward(
    model: nn.Module, batch: dict[str, torch.Tensor], speed: Speed, device: torch.device
) -> tuple[dict[str, torch.Tensor], float]:
    """The model's outputs for ``batch`` and the seconds of the forward pass alone, with device
    synchronisation before and after: the processing time the papers report."""
    synchronize(device)
    start = time.perf_counter()
    with speed.autocast():
        outputs = call(model, speed.layout(batch["image"]), batch.get("roi"))
    synchronize(device)
    return outputs, time.perf_counter() - start
