"""``medimg train``: train a model and print its per-epoch table.

    medimg train                                   # multitask CNN on the embedded phantom
    medimg train model=unet data.task=segmentation trainer.epochs=20
    medimg train -m model=cnn,unet seed=0,1,2      # a sweep, one run folder per job
    medimg train hydra.run.dir=runs/a trainer.resume=true   # continue an interrupted run

The recipe, top to bottom: check the config, build data, model, optimizer and augmentation,
restore ``last.pt`` when resuming, then per epoch train, validate, append ``metrics.csv`` and
write checkpoints; finally evaluate ``best.pt`` on the test split and write ``summary.json``
and ``table.md``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn import SyncBatchNorm
from torch.nn.parallel import DistributedDataParallel

from medimg_cli.augment import build_augment
from medimg_cli.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from medimg_cli.config import (
    build_optimizer,
    build_scheduler,
    check_numbers,
    monitor_mode,
    resolve_device,
    seed_everything,
)
from medimg_cli.data import build_data
from medimg_cli.data.batches import choose_loader, make_batches
from medimg_cli.distributed import (
    barrier,
    device_for_rank,
    is_distributed,
    is_main,
    join,
    launch,
    leave,
    requested_devices,
    sum_across,
    world,
)
from medimg_cli.errors import ConfigError
from medimg_cli.hydra_app import print_error, run_hydra
from medimg_cli.loop import TaskLoss, evaluate, train_epoch
from medimg_cli.metrics import TaskMetrics, task_metric_names
from medimg_cli.models import check_model_runs, create_model, model_args
from medimg_cli.models.transfer import forward_flops, freeze, layer_cells, load_pretrained, transfer_rows
from medimg_cli.results import (
    append_metrics_row,
    cases_csv,
    grid_markdown,
    grid_rich,
    make_console,
    markdown_table,
    rich_table,
    run_title,
    write_atomic,
    write_json,
    write_metrics_csv,
)
from medimg_cli.resume import resume_checkpoint
from medimg_cli.runinfo import device_name, git_commit, peak_memory, versions
from medimg_cli.speed import Speed, configure_backends
from medimg_cli.tracking import Tracker, sample_predictions

HELP = "train a model; Hydra overrides pick data, model, augment, optim, trainer"
log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    try:
        devices = requested_devices(argv)
        if devices > 1 and world()[1] == 1:  # trainer.devices=N: become N processes under torchrun
            return launch(argv, devices)
        argv = join(argv)
    except ConfigError as error:
        print_error("train", str(error))
        return 2
    try:
        return run_hydra("train", _hydra_task, argv)
    finally:
        leave()


def _hydra_task(cfg: DictConfig) -> dict[str, Any]:
    hydra_cfg = HydraConfig.get()
    return train(cfg, Path(hydra_cfg.runtime.output_dir), overrides=list(hydra_cfg.overrides.task))


def train(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says, writing into ``run_dir``; returns the summary.

    Args:
        cfg: the composed ``train`` config.
        run_dir: the run folder (Hydra's output directory).
        overrides: the command-line overrides, checked against ``RESUMABLE_KEYS`` on resume.
    """
    check_numbers(cfg)
    resume = resume_checkpoint(cfg, run_dir, overrides or [])
    if resume is not None:
        run_dir, cfg = resume["run_dir"], resume["cfg"]
    elif (run_dir / "metrics.csv").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with trainer.resume=true or pick another hydra.run.dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    device = device_for_rank(resolve_device(cfg.device))
    rank, processes, _ = world() if is_distributed() else (0, 1, 0)
    main_process = is_main()
    seed_everything(cfg.seed)
    trainer = cfg.trainer
    # checkpoints written before these keys existed lack them
    configure_backends(device, trainer.get("deterministic", False), trainer.get("cudnn_benchmark", "auto"))

    data = build_data(OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True))
    info = data.info
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    args = model_args(model_cfg, info)
    model = create_model(cfg.model.name, **args)
    # pretrained weights only for a new run: a resumed one gets every weight from last.pt
    loaded = set() if resume else load_pretrained(model, cfg.model.name, model_cfg.get("pretrained"), info.spatial_dims)
    frozen = freeze(model, model_cfg.get("freeze"))
    if processes > 1 and trainer.batch_size % processes:
        raise ConfigError(f"trainer.batch_size={trainer.batch_size} must split evenly over {processes} processes")
    if processes > 1 and trainer.get("sync_batchnorm", False):
        if device.type != "cuda":
            raise ConfigError("trainer.sync_batchnorm=true needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    check_model_runs(model, cfg.model.name, data.train["image"][:2].to(device))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(f"model.freeze={cfg.model.freeze} freezes every parameter; leave the head trainable")
    optimizer = build_optimizer(OmegaConf.to_container(cfg.optim, resolve=True), trainable)
    schedule_cfg = cfg.get("scheduler")  # runs saved before schedules existed have none
    schedule = build_scheduler(
        OmegaConf.to_container(schedule_cfg) if schedule_cfg is not None else {"name": "none"},
        optimizer,
        trainer.epochs,
    )
    augment = build_augment(OmegaConf.to_container(cfg.augment, resolve=True), info)
    loss_fn = TaskLoss(info)
    val_metrics = ["val_loss"] + [f"val_{m}" for m in task_metric_names(info)]
    mode = monitor_mode(trainer.monitor, val_metrics)
    speed = Speed.from_config(trainer, device, model, info.spatial_dims)
    runner, scaler = speed.prepare(model), speed.scaler()  # runner shares model's parameters
    # DDP averages the gradients of the processes; rank 0 evaluates with ``runner`` alone
    train_runner = (
        # static_graph: the same parameters every step, some never used (MONAI ViT's unused outputs)
        DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)
        if processes > 1
        else runner
    )
    loader, workers = choose_loader(
        trainer.get("loader", "memory"), trainer.get("workers", 0), (data.train, data.val, data.test), device
    )

    def batches(split: dict, size: int, **plan: Any) -> Any:
        return make_batches(split, size, device, loader, workers, **plan)

    train_batches = batches(
        data.train, trainer.batch_size, shuffle=True, drop_last=True, seed=cfg.seed, shard=(rank, processes)
    )
    val_batches = batches(data.val, trainer.eval_batch_size)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": None, "value": None}
    if resume is not None:
        state = resume["checkpoint"]
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if schedule is not None:
            schedule.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        history, best = state["history"], state["best"]
        if main_process:
            write_metrics_csv(run_dir / "metrics.csv", history)  # drop rows of an unfinished epoch
        log.info("resuming %s after epoch %d", run_dir, state["epoch"])
    elif main_process:
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if data.ids is not None:  # anonymous ids; reuse the split with data.splits=<this file>
            write_json(run_dir / "splits.json", data.ids)
        if data.skipped:
            write_atomic(run_dir / "skipped.txt", "\n".join(data.skipped) + "\n")
    layers = (resume["checkpoint"].get("layers") if resume else None) or transfer_rows(model, loaded, frozen)
    size = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "flops_per_image": forward_flops(model, info.in_channels, info.image_size, device),
    }
    console = make_console()
    if resume is None and main_process:
        headers, body = layer_cells(layers)
        title = f"{cfg.model.name}: layer groups, pretrained weights ({cfg.model.get('pretrained')}) and fine-tuning"
        write_atomic(run_dir / "model.md", grid_markdown(headers, body, title, _size_line(size)))
        if loaded or frozen:
            console.print(grid_rich(headers, body, title, sections=(len(body) - 2,)))
    log.info(
        "%s on %s (%s, %dD, %s; %s, %s loader): %s, %d/%d/%d images, run folder %s",
        cfg.model.name,
        cfg.data.name,
        info.task,
        info.spatial_dims,
        device_name(device),
        speed.describe(),
        loader,
        _size_line(size),
        len(data.train["image"]),
        len(data.val["image"]),
        len(data.test["image"]),
        run_dir,
    )

    checkpoint_base = {
        "model": {"name": cfg.model.name, "args": args},
        "layers": layers,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "data_fingerprint": data.fingerprint,
    }
    start = time.perf_counter()
    prior_seconds = resume["checkpoint"].get("wall_seconds", 0.0) if resume else 0.0
    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal or not main_process,
    )
    first_epoch = len(history) + 1
    tracker = Tracker(
        cfg.get("tracking") if main_process else {"tensorboard": False}, run_dir, checkpoint_base["config"], first_epoch
    )
    samples = {key: value[: tracker.images].to(device) for key, value in data.val.items()}
    with _exit_on_ctrl_c(run_dir, history):
        with progress:
            bar = progress.add_task(
                "train", total=len(train_batches), epoch=first_epoch, epochs=trainer.epochs, status=""
            )
            for epoch in range(first_epoch, trainer.epochs + 1):
                progress.reset(bar, total=len(train_batches), epoch=epoch, epochs=trainer.epochs, status="")
                epoch_start = time.perf_counter()
                stats = train_epoch(
                    train_runner,
                    train_batches,
                    epoch,
                    loss_fn,
                    optimizer,
                    augment,
                    speed,
                    scaler,
                    lambda: progress.advance(bar),
                )
                if schedule is not None:
                    schedule.step()
                if processes > 1:  # the loss of the global batch, the throughput of all processes
                    total, count, rate = sum_across(
                        stats["train_loss"] * stats["train_samples"],
                        stats["train_samples"],
                        stats["train_images_per_second"],
                    )
                    stats = {"train_loss": total / count, "train_images_per_second": rate}
                if not main_process:
                    barrier()  # rank 0 evaluates and writes the epoch
                    continue
                val = evaluate(runner, val_batches, loss_fn, speed.for_evaluation())
                row = {
                    "epoch": epoch,
                    "train_loss": stats["train_loss"],
                    **{f"val_{k}": v for k, v in val.items() if k != "seconds_per_image"},
                    "epoch_seconds": time.perf_counter() - epoch_start,
                    "train_images_per_second": stats["train_images_per_second"],
                    "seconds_per_image": val["seconds_per_image"],
                }
                history.append(row)
                value = row[trainer.monitor]
                if best["epoch"] is None or _improves(value, best["value"], mode):
                    best = {"epoch": epoch, "value": value}
                    save_checkpoint(
                        run_dir / "checkpoints" / "best.pt", {**checkpoint_base, **_state(model, epoch, history, best)}
                    )
                save_checkpoint(
                    run_dir / "checkpoints" / "last.pt",
                    {
                        **checkpoint_base,
                        **_state(model, epoch, history, best),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        **({"scheduler": schedule.state_dict()} if schedule is not None else {}),
                        "rng": rng_state(),
                        "wall_seconds": prior_seconds + time.perf_counter() - start,
                    },
                )
                # after the checkpoint, so that every row in metrics.csv can be resumed from
                append_metrics_row(run_dir / "metrics.csv", row)
                due = tracker.wants_samples(epoch)
                tracker.epoch(row, sample_predictions(model, samples["image"], info, samples) if due else None)
                status = f"loss {row['train_loss']:.4f}  {trainer.monitor} {value:.4f}"
                progress.update(bar, status=status)
                if progress.disable:
                    log.info("epoch %d/%d  %s  (%.1fs)", epoch, trainer.epochs, status, row["epoch_seconds"])
                barrier()
        if not main_process:
            return {"rank": rank}
        best_state = load_checkpoint(run_dir / "checkpoints" / "best.pt", device)
        model.load_state_dict(best_state["state_dict"])
        test_cases = TaskMetrics(info)
        test_batches = batches(data.test, trainer.eval_batch_size)
        test = evaluate(runner, test_batches, loss_fn, speed.for_evaluation(), test_cases)
        write_atomic(run_dir / "test_predictions.csv", cases_csv(test_cases.cases()))
        tracker.finish(test, len(history))

    summary = {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "task": info.task,
        "seed": cfg.seed,
        "epochs": trainer.epochs,
        "monitor": trainer.monitor,
        "best_epoch": best["epoch"],
        "best": next(r for r in history if r["epoch"] == best["epoch"]),
        "test": test,
        **size,
        **dict(zip(("peak_memory_mib", "peak_memory"), peak_memory(device), strict=True)),
        "layers": layers,
        "device": device_name(device),
        "processes": processes,
        "speed": f"{speed.describe()}, {loader} loader",  # the resolved auto settings
        "versions": versions(),
        "git_commit": git_commit(),
        "wall_seconds": prior_seconds + time.perf_counter() - start,
        "data_fingerprint": data.fingerprint,
        "run_dir": str(run_dir),
    }
    write_json(run_dir / "summary.json", summary)
    title = run_title(summary)
    write_atomic(
        run_dir / "table.md",
        markdown_table(history, trainer.table_every, test, best["epoch"], title=title),
    )
    console.print(rich_table(history, trainer.table_every, test, best["epoch"], title=title))
    console.print(f"run folder: {run_dir}")
    return summary


@contextlib.contextmanager
def _exit_on_ctrl_c(run_dir: Path, history: list[dict[str, Any]]) -> Iterator[None]:
    """Turn Ctrl-C into a short message and exit code 130; ``last.pt`` already holds the last epoch."""
    try:
        yield
    except KeyboardInterrupt:
        log.warning(
            "interrupted; %s keeps epoch %d. Resume: medimg train hydra.run.dir=%s trainer.resume=true",
            run_dir / "checkpoints" / "last.pt",
            len(history),
            run_dir,
        )
        raise SystemExit(130) from None


def _size_line(size: dict[str, int]) -> str:
    return (
        f"{size['parameters']:,} parameters ({size['trainable_parameters']:,} trained), "
        f"{size['flops_per_image'] / 1e9:.3g} GFLOPs forward per image"
    )


def _improves(value: float, best: float | None, mode: str) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if mode == "min" else value > best


def _state(model: Any, epoch: int, history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
    return {"state_dict": model.state_dict(), "epoch": epoch, "history": list(history), "best": dict(best)}
