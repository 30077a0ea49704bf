"""One epoch of a ``Run``: train, validate, record. ``medimg train`` takes all three each
epoch; a federated site trains (``federated/client.py``) and the server validates and records the
global model after each round (``federated/server.py``).

``train_one_epoch`` runs ``loop.train_epoch`` with the run's model, batches, optimizer,
augmentation and speed settings, stops (or counts skipped batches) on a non-finite loss, steps the
learning-rate schedule and, under DDP, combines the processes' numbers. ``validate`` scores the
val split; ``epoch_row`` is the ``metrics.csv`` row; ``write_epoch`` writes ``best.pt`` (when the
monitor improves), ``last.pt`` and the row, in that order, so every row can be resumed from.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from medimg_cli.checkpoint import rng_state, save_checkpoint
from medimg_cli.distributed import reduce_across
from medimg_cli.errors import TrainingStopped, unknown_choice
from medimg_cli.loop import evaluate, train_epoch
from medimg_cli.metrics import COLUMNS, METRICS
from medimg_cli.results import append_metrics_row
from medimg_cli.training import Run

log = logging.getLogger(__name__)
ACROSS_PROCESSES = {m.key: m.across for m in METRICS if m.across != "rank0"}  # what DDP processes combine
NONFINITE = ("stop", "skip_batch")


def train_one_epoch(
    run: Run, epoch: int, on_batch: Callable[[], None] = lambda: None, loss: Any = None
) -> dict[str, Any]:
    """Train ``run`` for ``epoch`` (1-based; it picks the batch order) and step its schedule.

    Args:
        on_batch: called after each batch (the progress bar).
        loss: the loss to minimise instead of ``run.loss`` (a federated site's proximal term).

    Returns:
        ``loop.train_epoch``'s numbers (``train_loss``, ``train_images_per_second``, ``train_samples``...),
        combined over the processes of a DDP run.
    """
    skip = _nonfinite_policy(run.cfg.trainer) == "skip_batch"
    warm = not run.warmup_seconds  # the session's first epoch: time its warm-up apart
    stats = train_epoch(
        run.train_model, run.train_batches, epoch, run.loss if loss is None else loss, run.optimizer, run.augment,
        run.speed, run.scaler, on_batch, skip, warm,
    )  # fmt: skip
    run.warmup_seconds.setdefault("train", stats["warmup_seconds"])
    _check_finite(run, epoch, stats, skip)
    if run.schedule is not None:
        run.schedule.step()
    if run.processes > 1:  # the loss of the global batch, the throughput of all processes
        stats = reduce_across(stats, "train_samples", ACROSS_PROCESSES)
    return stats


def validate(run: Run, epoch: int, keep: tuple[list, int] | None = None, warm: bool = False) -> dict[str, Any]:
    """``loop.evaluate`` of ``run.eval_model`` on the val split (``keep``: the first predictions for
    the trackers' picture); a non-finite validation loss stops the run."""
    val = evaluate(run.eval_model, run.val_batches, run.loss, run.speed.for_evaluation(), keep=keep, warmup=warm)
    run.warmup_seconds.setdefault("evaluation", val.get("warmup_seconds", 0.0))
    if not math.isfinite(val["loss"]):
        raise TrainingStopped(
            f"epoch {epoch}: the validation loss is {val['loss']} (NaN or infinite pixels in the validation images, "
            f"or outputs that overflow); {kept_checkpoint(run)}"
        )
    return val


def epoch_row(epoch: int, seconds: float, stats: dict[str, Any], val: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics.csv`` row (``metrics.COLUMNS``) of an epoch that took ``seconds``, from the
    training numbers ``stats`` and the validation numbers ``val``."""
    measured = val_columns(val) | {"epoch": epoch, "epoch_seconds": seconds}
    measured |= {key: stats[key] for key in ("train_loss", "train_images_per_second") if key in stats}
    return {column: measured[column] for column in COLUMNS if column in measured}


def val_columns(val: dict[str, Any]) -> dict[str, Any]:
    """``loop.evaluate``'s numbers under their ``metrics.csv`` columns (``val_loss``, ``val_auc``...)."""
    return {m.column: val[m.key] for m in METRICS if m.evaluated and m.key in val}


def write_epoch(run: Run, row: dict[str, Any], start: float, extra: dict[str, Any] | None = None) -> bool:
    """Record ``row`` in ``run.state``, write ``best.pt`` if it is the best so far, ``last.pt``
    (with ``extra``, e.g. a federated strategy's state) and append ``metrics.csv``; returns whether
    it was the best. ``start``: when this session began (``perf_counter``), for the wall time."""
    epoch, folder = int(row["epoch"]), run.run_dir / "checkpoints"
    best = run.state.record(row, run.cfg.trainer.monitor, run.monitor_mode)
    if best:
        save_checkpoint(folder / "best.pt", checkpoint_payload(run, epoch))
    save_checkpoint(folder / "last.pt", checkpoint_payload(run, epoch, start, resumable=True) | (extra or {}))
    # after the checkpoint, so that every row in metrics.csv can be resumed from
    append_metrics_row(run.run_dir / "metrics.csv", row)
    return best


def checkpoint_payload(run: Run, epoch: int, start: float | None = None, resumable: bool = False) -> dict[str, Any]:
    """A checkpoint of ``run`` after ``epoch``; ``resumable`` adds what ``last.pt`` needs to continue."""
    state = run.state
    payload = {
        **run.checkpoint_base,
        "state_dict": run.model.state_dict(),
        "epoch": epoch,
        "history": list(state.history),
        "best": state.best(),
    }
    if resumable:
        optimizer = run.optimizer.state_dict() if run.optimizer is not None else None
        payload |= {"optimizer": optimizer, "scaler": run.scaler.state_dict(), "rng": rng_state()}
        if run.schedule is not None:
            payload["scheduler"] = run.schedule.state_dict()
        payload["wall_seconds"] = state.prior_seconds + time.perf_counter() - start
    return payload


def kept_checkpoint(run: Run) -> str:
    """What a stopped run keeps: the last epoch checkpointed, if any."""
    if run.state.epoch == 0:
        return "no epoch ended with finite losses, so no checkpoint was written"
    return f"{run.run_dir / 'checkpoints' / 'last.pt'} keeps epoch {run.state.epoch}"


def _nonfinite_policy(trainer: Any) -> str:
    policy = trainer.get("on_nonfinite", "stop")
    if policy not in NONFINITE:
        raise unknown_choice("trainer.on_nonfinite", policy, NONFINITE)
    return policy


def _check_finite(run: Run, epoch: int, stats: dict[str, Any], skipped: bool) -> None:
    """Stop the run on a non-finite training loss (``trainer.on_nonfinite=stop``), before this
    epoch is checkpointed or written; with ``skip_batch``, say how many batches were skipped."""
    steps, first = stats["nonfinite_steps"], stats["first_nonfinite_step"]
    if not steps:
        return
    if skipped:
        run.skipped_batches += steps
        log.warning("epoch %d: skipped %d batch(es) with a non-finite loss (first: step %d)", epoch, steps, first)
        return
    raise TrainingStopped(
        f"epoch {epoch}, step {first}: the training loss is not finite (NaN or inf) in {steps} step(s); likely a "
        f"learning rate too high (optim.lr={run.cfg.optim.get('lr')}) or NaN/inf pixels in the data. "
        f"{kept_checkpoint(run)}; trainer.on_nonfinite=skip_batch skips such batches instead"
    )
