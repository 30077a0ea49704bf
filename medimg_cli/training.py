"""Setting up a training run: everything ``medimg train`` builds before its first epoch.

``setup(cfg, run_dir)`` checks the config, builds the data, the model, the optimizer, the
schedule, the augmentation, the loss, the speed settings and the batches, restores ``last.pt``
when resuming (or writes the new run's files), and returns them as one ``Run``. The order of
the steps is part of the numbers: the model's initial weights come from the global RNG right
after seeding, so the steps that draw random numbers keep their order.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import SyncBatchNorm
from torch.nn.parallel import DistributedDataParallel

from medimg_cli.augment import Augmenter, build_augment
from medimg_cli.config import (
    build_optimizer,
    build_scheduler,
    check_numbers,
    resolve_device,
    seed_everything,
    with_task_defaults,
)
from medimg_cli.data import Splits, build_data
from medimg_cli.data.batches import choose_loader, make_batches
from medimg_cli.data.patches import PatchBatches, patch_size
from medimg_cli.data.plan import NETWORK_KEYS, memory_budget, network_plan, resolve_config, resolve_network, wants_plan
from medimg_cli.distributed import device_for_rank, is_distributed, world
from medimg_cli.errors import ConfigError
from medimg_cli.federated.sites import federated_view
from medimg_cli.fileio import hold_folder, release, remove_stale_temporaries, write_atomic, write_json
from medimg_cli.losses import TaskLoss
from medimg_cli.metrics import monitor_columns, monitor_mode, with_average
from medimg_cli.models import check_model_runs, create_model, model_args
from medimg_cli.models.transfer import forward_flops, freeze, layer_cells, load_pretrained, transfer_rows
from medimg_cli.resume import Resume, State, restore, resume_checkpoint
from medimg_cli.runinfo import device_name
from medimg_cli.sliding import SlidingWindow
from medimg_cli.speed import Speed, configure_backends
from medimg_cli.tables import grid_markdown, grid_rich, make_console

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A training run, ready for its next epoch.

    ``model`` is the network whose weights are saved; ``train_model`` and ``eval_model`` call it
    with the run's speed settings (compiled, channels-last) and, for ``train_model`` under DDP,
    with gradient averaging across processes. All three share the same parameters.
    """

    cfg: DictConfig
    run_dir: Path
    device: Any  # torch.device
    rank: int
    processes: int
    data: Splits
    model: nn.Module
    train_model: nn.Module
    eval_model: nn.Module
    optimizer: Any  # torch.optim.Optimizer, None for a model that fits statistics (padim)
    schedule: Any  # torch.optim.lr_scheduler.LRScheduler | None
    scaler: Any  # torch.amp.GradScaler
    augment: Augmenter
    loss: TaskLoss
    speed: Speed
    loader: str
    workers: int
    train_batches: Any  # TensorBatches | StreamBatches
    val_batches: Any
    monitor_mode: str
    state: State
    checkpoint_base: dict[str, Any]  # what every checkpoint of this run holds besides its state
    size: dict[str, int]  # parameters, trainable_parameters, flops_per_image
    ended_by: str = "trainer.epochs"  # or "trainer.max_minutes" when the time budget ended training
    skipped_batches: int = 0  # batches skipped for a non-finite loss (trainer.on_nonfinite=skip_batch)
    per_label: dict | None = None  # multi-label data: each label's test metrics (summary.json)
    warmup_seconds: dict = field(default_factory=dict)  # this session's first train step and validation pass
    processing: dict | None = None  # processing_time's seconds per image at batch 1 and batch B
    lock: Any = None  # the run folder's lock (fileio.hold_folder), released when the run ends

    @property
    def main(self) -> bool:
        """Whether this process evaluates and writes the run folder (rank 0)."""
        return self.rank == 0

    def batches(self, split: dict, size: int, **plan: Any) -> Any:
        """Batches of ``split`` with the run's loader."""
        return make_batches(split, size, self.device, self.loader, self.workers, **plan)


def setup(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> Run:
    """Build everything a run needs, restore it when resuming; see the module docstring.

    Args:
        cfg: the composed ``train`` config.
        run_dir: the run folder (Hydra's output directory).
        overrides: the command-line overrides, checked against ``RESUMABLE_KEYS`` on resume.
    """
    check_numbers(cfg)
    resume = resume_checkpoint(cfg, run_dir, overrides or [])
    if resume is not None:
        run_dir, cfg = resume.run_dir, resume.cfg
    else:
        cfg = with_task_defaults(cfg, overrides or [])
    lock = hold_folder(run_dir) if not is_distributed() or world()[0] == 0 else None
    if lock is not None and remove_stale_temporaries(run_dir):
        log.info("removed the half-written files of a killed run in %s", run_dir)
    try:
        if resume is None and (run_dir / "metrics.csv").exists():
            raise ConfigError(
                f"{run_dir} already holds a run; continue it with trainer.resume=true or pick another hydra.run.dir"
            )
        run = build_run(cfg, run_dir, resume)
    except BaseException:
        release(lock)
        raise
    run.lock = lock
    return run


def build_run(cfg: DictConfig, run_dir: Path, resume: Resume | None) -> Run:
    """The rest of ``setup``, in a run folder this process holds."""
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    device = device_for_rank(resolve_device(cfg.device))
    rank, processes, _ = world() if is_distributed() else (0, 1, 0)
    seed_everything(cfg.seed)
    # checkpoints written before these keys existed lack them
    configure_backends(device, cfg.trainer.get("deterministic", False), cfg.trainer.get("cudnn_benchmark", "auto"))
    data = planned_data(cfg, device)
    patch = patch_size(cfg.data, data.info)
    _plan_network(cfg, patch or data.info.image_size)
    if patch is not None:  # the network is built for, and sees, patches
        data.info = dataclasses.replace(data.info, image_size=patch)
    model, args, loaded, frozen = _build_model(cfg, data, device, processes, resume)
    trainable = [p for p in model.parameters() if p.requires_grad]
    fitted = getattr(model, "FITTED", False)
    if fitted and processes > 1:  # DDP would broadcast rank 0's statistics over the others'
        raise ConfigError(f"model '{cfg.model.name}' fits statistics in one process; use trainer.devices=1")
    optimizer, schedule, augment, loss = _build_training(cfg, data.info, trainable, fitted)
    mode = monitor_mode(cfg.trainer.monitor, monitor_columns(data.info))
    speed = Speed.from_config(cfg.trainer, device, model, data.info.spatial_dims)
    prepared, scaler = speed.prepare(model), speed.scaler()
    eval_model = whole_images(prepared, patch, cfg.trainer)
    # DDP averages the gradients of the processes; rank 0 evaluates with ``eval_model`` alone
    train_model = (
        # static_graph: the same parameters every step, some never used (MONAI ViT's unused outputs)
        DistributedDataParallel(
            prepared, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True
        )
        if processes > 1
        else prepared
    )
    trainer = cfg.trainer
    loader, workers = choose_loader(
        trainer.get("loader", "memory"), trainer.get("workers", 0), (data.train, data.val, data.test), device
    )
    run = Run(
        cfg, run_dir, device, rank, processes, data, model, train_model, eval_model, optimizer, schedule, scaler,
        augment, loss, speed, loader, workers, None, None, mode, State(), {}, {},
    )  # fmt: skip
    run.train_batches = _train_batches(run, patch)
    run.val_batches = run.batches(data.val, trainer.eval_batch_size)
    if resume is not None:
        run.state = restore(resume.checkpoint, model, optimizer, scaler, schedule)
        log.info("resuming %s after epoch %d", run_dir, run.state.epoch)
    elif run.main:
        _write_new_run_files(run)
    layers = (resume.checkpoint.get("layers") if resume else None) or transfer_rows(model, loaded, frozen)
    run.size = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "flops_per_image": forward_flops(model, data.info.in_channels, data.info.image_size, device),
    }
    run.checkpoint_base = {
        "model": {"name": cfg.model.name, "args": args},
        "layers": layers,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "data_fingerprint": data.fingerprint,
    }
    if resume is None and run.main:
        _describe_layers(run, layers, bool(loaded or frozen))
    _log_start(run)
    return run


def planned_data(cfg: DictConfig, device: Any) -> Splits:
    """The data of ``cfg``; keys set to ``auto`` are filled from a plan of the dataset
    (``data/plan.py``), which is written back into ``cfg`` (so config.yaml holds the values)."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True)
    if wants_plan(data_cfg):
        data_cfg["memory_gb"] = memory_budget(cfg.trainer.get("memory_gb"), device)
    data = build_data(data_cfg)
    if cfg.get("federated") is not None:  # sites named, or one site's images alone
        fed = OmegaConf.to_container(cfg.federated, resolve=True)
        data = federated_view(data, data_cfg, fed, cfg.trainer.batch_size)
    data.info = with_average(data.info, OmegaConf.select(cfg, "metrics.average", default=None))
    if data.plan is not None:
        resolve_config(cfg, data.plan)
    elif cfg.trainer.get("batch_size") == "auto":
        raise ConfigError("trainer.batch_size=auto comes from a plan: add data.patch_size=auto (segmentation of files)")
    return data


def _plan_network(cfg: DictConfig, size: tuple[int, ...]) -> None:
    """A ``dynunet`` model's ``auto`` topology from its input size when no dataset plan gave one."""
    if any(cfg.model.get(k) == "auto" for k in NETWORK_KEYS):
        spacing = cfg.data.get("spacing")  # a list once planned or set; None (or unplanned) means 1 per axis
        resolve_network(cfg, network_plan(size, list(spacing) if OmegaConf.is_list(spacing) else None))


def whole_images(model: nn.Module, patch: tuple[int, ...] | None, trainer: Mapping, overlap: float | None = None):
    """``model`` as it predicts whole images: through sliding windows of the patch size when the run
    trained on patches (``overlap``: ``trainer.overlap`` unless given)."""
    if patch is None:
        return model
    overlap = trainer.get("overlap", 0.5) if overlap is None else overlap
    return SlidingWindow(model, patch, overlap, trainer["batch_size"])


def _train_batches(run: Run, patch: tuple[int, ...] | None) -> Any:
    """Shuffled training batches of whole images, or ``trainer.steps_per_epoch`` batches of patches."""
    cfg, shard = run.cfg, (run.rank, run.processes)
    if patch is None:
        return run.batches(
            run.data.train, cfg.trainer.batch_size, shuffle=True, drop_last=True, seed=cfg.seed, shard=shard
        )
    steps, fraction = cfg.trainer.get("steps_per_epoch", 250), cfg.data.get("foreground_fraction", 0.33)
    return PatchBatches(run.data.train, cfg.trainer.batch_size, run.device, patch, fraction, steps, cfg.seed, shard)


def _build_model(
    cfg: DictConfig, data: Splits, device: Any, processes: int, resume: Resume | None
) -> tuple[nn.Module, dict[str, Any], set, set]:
    """The model on ``device`` with its arguments, the pretrained tensors loaded and the frozen ones."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    args = model_args(model_cfg, data.info)
    model = create_model(cfg.model.name, **args)
    # pretrained weights only for a new run: a resumed one gets every weight from last.pt
    loaded = (
        set()
        if resume
        else load_pretrained(
            model,
            cfg.model.name,
            model_cfg.get("pretrained"),
            args["spatial_dims"],
            model_cfg.get("pretrained_min_match", 0.5),
        )
    )
    if getattr(model, "FITTED", False) and not loaded and resume is None:
        log.warning(
            "model '%s' fits statistics on the features of an encoder with random weights; give trained ones with "
            "model.pretrained=<a medimg autoencoder's best.pt> (or imagenet)",
            cfg.model.name,
        )
    frozen = freeze(model, model_cfg.get("freeze"))
    batch_size = cfg.trainer.batch_size
    if processes > 1 and batch_size % processes:
        raise ConfigError(f"trainer.batch_size={batch_size} must split evenly over {processes} processes")
    if processes > 1 and cfg.trainer.get("sync_batchnorm", False):
        if device.type != "cuda":
            raise ConfigError("trainer.sync_batchnorm=true needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    check_model_runs(model, cfg.model.name, data.train["image"][:2].to(device))
    return model, args, loaded, frozen


def _build_training(
    cfg: DictConfig, info: Any, trainable: list[nn.Parameter], fitted: bool = False
) -> tuple[Any, Any, Augmenter, TaskLoss]:
    """The optimizer of the ``trainable`` parameters and its schedule (``None`` for a ``fitted``
    model, one whose training passes fit statistics), the augmentation and the loss."""
    augment = build_augment(OmegaConf.to_container(cfg.augment, resolve=True), info)
    loss_cfg = cfg.get("loss")  # runs saved before the loss group existed have none
    loss = TaskLoss(info, OmegaConf.to_container(loss_cfg, resolve=True) if loss_cfg is not None else None)
    if fitted:  # statistics fitted in training-mode passes (padim): nothing to optimise
        return None, None, augment, loss
    if not trainable:
        raise ConfigError(f"model.freeze={cfg.model.freeze} freezes every parameter; leave the head trainable")
    optimizer = build_optimizer(OmegaConf.to_container(cfg.optim, resolve=True), trainable)
    schedule_cfg = cfg.get("scheduler")  # runs saved before schedules existed have none
    schedule = build_scheduler(
        OmegaConf.to_container(schedule_cfg) if schedule_cfg is not None else {"name": "none"},
        optimizer,
        cfg.trainer.epochs,
    )
    return optimizer, schedule, augment, loss


def _write_new_run_files(run: Run) -> None:
    """config.yaml, and the anonymous split ids and skipped files when the source has them."""
    write_atomic(run.run_dir / "config.yaml", OmegaConf.to_yaml(run.cfg, resolve=True))
    if run.data.ids is not None:  # anonymous ids; reuse the split with data.splits=<this file>
        write_json(run.run_dir / "splits.json", run.data.ids)
    if run.data.skipped:
        write_atomic(run.run_dir / "skipped.txt", "\n".join(run.data.skipped) + "\n")
    if run.data.plan is not None:
        write_json(run.run_dir / "plan.json", run.data.plan)


def size_line(size: dict[str, int]) -> str:
    """``"1,234 parameters (1,234 trained), 0.01 GFLOPs forward per image"``."""
    return (
        f"{size['parameters']:,} parameters ({size['trainable_parameters']:,} trained), "
        f"{size['flops_per_image'] / 1e9:.3g} GFLOPs forward per image"
    )


def _describe_layers(run: Run, layers: list, show: bool) -> None:
    """model.md: the layer groups with their pretrained weights and fine-tuning; printed when ``show``."""
    headers, body = layer_cells(layers)
    cfg = run.cfg
    title = f"{cfg.model.name}: layer groups, pretrained weights ({cfg.model.get('pretrained')}) and fine-tuning"
    write_atomic(run.run_dir / "model.md", grid_markdown(headers, body, title, size_line(run.size)))
    if show:
        make_console().print(grid_rich(headers, body, title, sections=(len(body) - 2,)))


def _log_start(run: Run) -> None:
    info, data = run.data.info, run.data
    log.info(
        "%s on %s (%s, %dD, %s; %s, %s loader): %s, %d/%d/%d images, run folder %s",
        run.cfg.model.name,
        run.cfg.data.name,
        info.task,
        info.spatial_dims,
        device_name(run.device),
        run.speed.describe(),
        run.loader,
        size_line(run.size),
        len(data.train["image"]),
        len(data.val["image"]),
        len(data.test["image"]),
        run.run_dir,
    )
