"""``medimg train``: train a model and print its per-epoch table.

    medimg train                                   # multitask CNN on the embedded phantom
    medimg train model=unet data.task=segmentation trainer.epochs=20
    medimg train -m model=cnn,unet seed=0,1,2      # a sweep, one run folder per job
    medimg train hydra.run.dir=runs/a trainer.resume=true   # continue an interrupted run

The recipe, top to bottom: ``setup`` builds data, model, optimizer, augmentation and loss and
restores ``last.pt`` when resuming (``medimg_cli/training.py``); ``run_epoch`` trains one epoch,
validates, writes the checkpoints and appends the row to ``metrics.csv``; ``finish`` evaluates
``best.pt`` on the test split and writes ``summary.json`` and ``table.md``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medimg_cli.checkpoint import load_checkpoint
from medimg_cli.deformation import identity_cases
from medimg_cli.distributed import barrier, join, launch, leave, requested_devices, sum_across, world
from medimg_cli.epoch import epoch_row, train_one_epoch, validate, write_epoch
from medimg_cli.errors import ConfigError
from medimg_cli.evaluation.anomalous import decided_metrics, split_cases
from medimg_cli.evaluation.multilabel import per_label_summary
from medimg_cli.fileio import release, write_atomic, write_json
from medimg_cli.hydra_app import print_error, run_hydra
from medimg_cli.loop import evaluate
from medimg_cli.metrics import TaskMetrics, positive_class
from medimg_cli.results import cases_csv
from medimg_cli.runinfo import device_name, git_commit, peak_memory, versions
from medimg_cli.sweeps import check_direction, objective, optuna_direction
from medimg_cli.tables import make_console, markdown_table, rich_table, run_headers, run_title
from medimg_cli.tracking import Tracker, sample_predictions
from medimg_cli.training import Run, setup

HELP = "train a model; Hydra overrides pick data, model, augment, optim, trainer"
log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    try:
        devices = requested_devices(argv)
        if devices > 1 and world()[1] == 1:  # trainer.devices=N: become N processes under torchrun
            return launch(argv, devices)
        argv = optuna_direction(join(argv))
    except ConfigError as error:
        print_error("train", str(error))
        return 2
    try:
        return run_hydra("train", _hydra_task, argv)
    finally:
        leave()


def _hydra_task(cfg: DictConfig) -> float | None:
    """One Hydra job: the run, then its monitored validation value (what a sweeper optimises)."""
    hydra_cfg = HydraConfig.get()
    sweep_name = hydra_cfg.job.override_dirname if hydra_cfg.mode == RunMode.MULTIRUN else None
    if "optuna" in str(hydra_cfg.sweeper.get("_target_")):
        check_direction(cfg.trainer.monitor, hydra_cfg.sweeper)
    summary = train(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task), sweep_name)
    return objective(summary)


def train(
    cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None, sweep_name: str | None = None
) -> dict[str, Any]:
    """Train as ``cfg`` says, writing into ``run_dir``; returns the summary (``{"rank": r}`` on
    the other processes of a DDP run).

    Args:
        cfg: the composed ``train`` config.
        run_dir: the run folder (Hydra's output directory).
        overrides: the command-line overrides, checked against ``RESUMABLE_KEYS`` on resume.
        sweep_name: in a sweep, the job's overrides, which name its run in the trackers.
    """
    run = setup(cfg, run_dir, overrides)
    try:
        return _train(run, sweep_name)
    finally:
        release(run.lock)


def _train(run: Run, sweep_name: str | None = None) -> dict[str, Any]:
    """Epochs until ``trainer.epochs`` or the budget, then the test of ``best.pt`` and the summary."""
    start = time.perf_counter()
    first, epochs = run.state.epoch + 1, run.cfg.trainer.epochs
    tracker = Tracker(
        run.cfg.get("tracking") if run.main else {"tensorboard": False},
        run.run_dir,
        run.checkpoint_base["config"],
        first,
        sweep_name,
    )
    progress = _progress(run.main)
    with _exit_on_ctrl_c(run), progress:
        bar = progress.add_task("train", total=len(run.train_batches), epoch=first, epochs=epochs, status="")
        status = ""  # the last epoch's numbers, shown while the next one trains
        for epoch in range(first, epochs + 1):
            progress.reset(bar, total=len(run.train_batches), epoch=epoch, epochs=epochs, status=status)
            kept: list | None = [] if tracker.wants_samples(epoch) else None
            row = run_epoch(
                run, epoch, lambda: progress.advance(bar), start, None if kept is None else (kept, tracker.images)
            )
            if row is not None:
                tracker.epoch(row, _samples(run, kept, tracker.images) if kept else None)
                status = epoch_status(run, row, epochs, (time.perf_counter() - start) / (epoch - first + 1))
                progress.update(bar, status=status)
                if progress.disable:
                    log.info("epoch %d/%d  %s", epoch, epochs, status)
                elif epoch % run.cfg.trainer.table_every == 0 or epoch == epochs:  # a line that stays
                    progress.console.print(f"epoch {epoch}/{epochs}  {status}")
            barrier()  # rank 0 evaluates and writes the epoch
            if epoch < epochs and _budget_spent(run, start, epoch):
                break
        if not run.main:
            return {"rank": run.rank}
        test = test_best(run)
        tracker.finish(test, run.state.epoch)
    return finish(run, test, time.perf_counter() - start)


def run_epoch(
    run: Run, epoch: int, on_batch: Any, start: float, keep: tuple[list, int] | None = None
) -> dict[str, Any] | None:
    """Train and validate one epoch, write the checkpoints and append ``metrics.csv``; ``keep``
    collects the first validation predictions (``loop.evaluate``).

    Returns:
        the ``metrics.csv`` row (``metrics.COLUMNS``), or ``None`` on processes other than rank 0.
    """
    epoch_start = time.perf_counter()
    warm = not run.warmup_seconds  # the session's first epoch: time its warm-up apart
    stats = train_one_epoch(run, epoch, on_batch)
    if not run.main:
        return None
    val = validate(run, epoch, keep, warm)
    row = epoch_row(epoch, time.perf_counter() - epoch_start, stats, val)
    write_epoch(run, row, start)
    return row


def test_best(run: Run) -> dict[str, float]:
    """Evaluate ``best.pt`` on the test split; writes ``test_predictions.csv``. Anomaly detection
    adds the metrics at the val split's threshold (``evaluation.anomalous.decided_metrics``)."""
    best = load_checkpoint(run.run_dir / "checkpoints" / "best.pt", run.device)
    run.model.load_state_dict(best["state_dict"])
    cases = TaskMetrics(run.data.info)
    batches = run.batches(run.data.test, run.cfg.trainer.eval_batch_size)
    test = evaluate(run.eval_model, batches, run.loss, run.speed.for_evaluation(), cases)
    found = cases.cases()
    write_atomic(run.run_dir / "test_predictions.csv", cases_csv(found))
    run.processing = processing_time(run)
    if run.data.info.detects:  # F1, sensitivity, specificity at the val split's threshold
        val = split_cases(run.eval_model, run.val_batches, run.loss, run.speed.for_evaluation()).cases()
        test |= decided_metrics(val, found)
    if run.data.info.multilabel:
        names = run.data.info.class_names
        run.per_label = per_label_summary(found["probs"].double().numpy(), found["label"].numpy(), names)
    return test


def processing_time(run: Run, images: int = 32) -> dict[str, float]:
    """Seconds per image of the forward pass alone (Gomathi and Roopa Chandrika's eq. 8), each batch
    shape warmed up first, on the val split: one image at a time (its first ``images`` images) and
    in batches of ``trainer.eval_batch_size`` (all of it)."""
    speed, val, size = run.speed.for_evaluation(), run.data.val, run.cfg.trainer.eval_batch_size
    first = {key: value[:images] for key, value in val.items()}
    passes = (("batch_1", first, 1), (f"batch_{size}", val, size))
    return {
        name: evaluate(run.eval_model, run.batches(tensors, batch), run.loss, speed, warmup=True)["seconds_per_image"]
        for name, tensors, batch in passes
    }


def finish(run: Run, test: dict[str, float], seconds: float) -> dict[str, Any]:
    """Write ``summary.json`` and ``table.md``, print the table and the run folder; returns the summary."""
    summary = build_summary(run, test, seconds)
    write_json(run.run_dir / "summary.json", summary)
    history, every, best = run.state.history, run.cfg.trainer.table_every, run.state.best_epoch
    title, headers = run_title(summary), run_headers(summary)
    write_atomic(run.run_dir / "table.md", markdown_table(history, every, test, best, title=title, headers=headers))
    console = make_console()
    console.print(rich_table(history, every, test, best, title=title, headers=headers))
    console.print(f"run folder: {run.run_dir}")
    return summary


def build_summary(run: Run, test: dict[str, float], seconds: float) -> dict[str, Any]:
    """The contents of ``summary.json`` (see docs/usage.md, The run folder)."""
    cfg, state = run.cfg, run.state
    return {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "task": run.data.info.task,
        "f1_average": run.data.info.average if run.data.info.classifies else None,
        "positive_class": positive_class(run.data.info),
        "seed": cfg.seed,
        "epochs": cfg.trainer.epochs,
        "epochs_trained": state.epoch,
        "ended_by": run.ended_by,
        "skipped_batches": run.skipped_batches,
        "monitor": cfg.trainer.monitor,
        "best_epoch": state.best_epoch,
        "best": next(r for r in state.history if r["epoch"] == state.best_epoch),
        "test": test,
        "processing_seconds_per_image": run.processing,
        "warmup_seconds": run.warmup_seconds,
        **({"per_label": run.per_label} if run.per_label is not None else {}),
        **({"identity": _identity(run)} if run.data.info.registers else {}),
        **({"fusion": _fusion(run)} if run.data.info.modalities > 1 else {}),
        **({"synthetic": run.data.synthetic} if run.data.synthetic else {}),
        **run.size,
        **dict(zip(("peak_memory_mib", "peak_memory"), peak_memory(run.device), strict=True)),
        "layers": run.checkpoint_base["layers"],
        "device": device_name(run.device),
        "processes": run.processes,
        "speed": f"{run.speed.describe()}, {run.loader} loader",  # the resolved auto settings
        "versions": versions(),
        "git_commit": git_commit(),
        "wall_seconds": state.prior_seconds + seconds,
        "data_fingerprint": run.data.fingerprint,
        "run_dir": str(run.run_dir),
    }


def _identity(run: Run) -> dict[str, float]:
    """Registration: the test pairs' label Dice, IoU, HD95 and landmark TRE before registration."""
    return {
        key: value.mean().item() for key, value in identity_cases(run.data.test, run.data.info.num_seg_classes).items()
    }


def _fusion(run: Run) -> dict[str, Any]:
    """How the run's several modalities met (``models.fusion``)."""
    model = run.cfg.model
    fusion = {"fusion": model.get("fusion", "early"), "modalities": run.data.info.modalities}
    return fusion | {"modality_dropout": model.get("modality_dropout", 0.0)}


def epoch_status(run: Run, row: dict[str, Any], epochs: int, epoch_seconds: float) -> str:
    """``loss 0.4100  val_loss 0.3900  val_auc 0.9100 (best 0.9300 @ 4)  ETA 1m05s``: the epoch's losses,
    the monitored metric and the best so far, and the time left at ``epoch_seconds`` per epoch."""
    monitor, state = run.cfg.trainer.monitor, run.state
    left = round(max(epochs - int(row["epoch"]), 0) * epoch_seconds)
    parts = [f"loss {row['train_loss']:.4f}", f"val_loss {row['val_loss']:.4f}"]
    if monitor != "val_loss":
        parts.append(f"{monitor} {row[monitor]:.4f}")
    parts[-1] += f" (best {state.best_value:.4f} @ {state.best_epoch})"
    return "  ".join([*parts, f"ETA {left // 60}m{left % 60:02d}s"])


def _budget_spent(run: Run, start: float, epoch: int) -> bool:
    """Whether ``trainer.max_minutes`` has passed after ``epoch`` (then ``run.ended_by`` says so),
    counting earlier sessions of a resumed run; under DDP any process's clock decides for all, so
    every process stops after the same epoch."""
    limit = run.cfg.trainer.get("max_minutes")
    if limit is None:
        return False
    elapsed = run.state.prior_seconds + time.perf_counter() - start
    if sum_across(float(elapsed >= 60 * limit))[0] == 0:
        return False
    run.ended_by = "trainer.max_minutes"
    log.info("trainer.max_minutes=%s reached after epoch %d of %d", limit, epoch, run.cfg.trainer.epochs)
    return True


def _samples(run: Run, kept: list, count: int) -> dict[str, Any]:
    """The tracker's validation picture: the first ``count`` validation images with the predictions
    the validation pass ``kept`` (``(outputs, batch)`` pairs)."""
    outputs = {key: torch.cat([o[key] for o, _ in kept])[:count].float() for key in kept[0][0]}
    batch = {key: torch.cat([b[key] for _, b in kept])[:count] for key in kept[0][1]}
    return sample_predictions(outputs, run.data.info, batch)


def _progress(main: bool) -> Progress:
    """The epoch's progress bar, on a terminal of the main process only."""
    console = make_console()
    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal or not main,
    )


@contextlib.contextmanager
def _exit_on_ctrl_c(run: Run) -> Iterator[None]:
    """Turn Ctrl-C (exit code 130) and SIGTERM (143: SLURM preemption, ``timeout``, ``docker stop``)
    into a short message with the resume command; ``last.pt`` already holds the last epoch."""
    main_thread = threading.current_thread() is threading.main_thread()  # only it can take signals
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        yield
    except (KeyboardInterrupt, Terminated) as stop:
        log.warning(
            "%s; %s keeps epoch %d. Resume: medimg train hydra.run.dir=%s trainer.resume=true",
            "terminated" if isinstance(stop, Terminated) else "interrupted",
            run.run_dir / "checkpoints" / "last.pt",
            run.state.epoch,
            run.run_dir,
        )
        raise SystemExit(143 if isinstance(stop, Terminated) else 130) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM arrived; a ``BaseException`` like ``KeyboardInterrupt``, so no ``except Exception`` eats it."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated
