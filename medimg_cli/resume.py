"""Resuming a run: which ``last.pt`` and config to continue, which keys may change, and the
training state it restores.

A resumed run keeps its saved config; the command line may change only ``RESUMABLE_KEYS``
(repeating the original overrides is fine). ``medimg benchmark`` leaves ``NEUTRAL_KEYS`` out
of a run's identity, so both lists come from here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medimg_cli.checkpoint import load_checkpoint, set_rng_state
from medimg_cli.errors import ConfigError
from medimg_cli.metrics import improves

log = logging.getLogger(__name__)

# Keys (or groups of keys) that cannot change a run's numbers: how to resume, print, load
# (the loaders give identical batches) or track. A benchmark ignores them in a run's identity.
NEUTRAL_KEYS = ("trainer.resume", "trainer.table_every", "trainer.loader", "trainer.workers", "tracking")
# A resumed run may also train longer (more epochs, a larger time budget) or move to another
# device; anything else would make it a different experiment. They stay part of a benchmark run's identity.
RESUMABLE_KEYS = (*NEUTRAL_KEYS, "trainer.epochs", "trainer.max_minutes", "device", "federated.rounds")


def resumable(key: str) -> bool:
    """Whether a resumed run may change ``key`` (a key of ``RESUMABLE_KEYS`` or inside one of its groups)."""
    return _within(key, RESUMABLE_KEYS)


def neutral(key: str) -> bool:
    """Whether ``key`` cannot change a run's numbers (a key of ``NEUTRAL_KEYS`` or inside one of its groups)."""
    return _within(key, NEUTRAL_KEYS)


def _within(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


@dataclass
class Resume:
    """What a resumed run continues: its folder, its saved config (with the resumable keys of the
    command line) and its ``last.pt`` payload."""

    run_dir: Path
    cfg: DictConfig
    checkpoint: dict[str, Any]


@dataclass
class State:
    """Where training stands.

    Attributes:
        history: the ``metrics.csv`` rows of the finished epochs.
        best_epoch: the epoch of ``best.pt`` (``None`` before the first).
        best_value: its ``trainer.monitor`` value.
        prior_seconds: wall time of earlier sessions of this run, s.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    prior_seconds: float = 0.0

    @property
    def epoch(self) -> int:
        """The last finished epoch (0 before the first)."""
        return len(self.history)

    def record(self, row: dict[str, Any], monitor: str, mode: str) -> bool:
        """Add an epoch's row; returns whether it is the new best by ``row[monitor]`` (``mode``
        ``min`` or ``max``). The first epoch is best until a finite value beats it; NaN never is."""
        self.history.append(row)
        if self.best_epoch is not None and not improves(row[monitor], self.best_value, mode):
            return False
        self.best_epoch, self.best_value = int(row["epoch"]), row[monitor]
        return True

    def best(self) -> dict[str, Any]:
        """``{"epoch", "value"}`` as checkpoints store it."""
        return {"epoch": self.best_epoch, "value": self.best_value}


def _requeued() -> bool:
    """Whether this is a SLURM job started again (``scontrol requeue``, preemption with requeue)."""
    return (os.environ.get("SLURM_RESTART_COUNT") or "0").strip() not in ("", "0")


def resume_checkpoint(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> Resume | None:
    """The run folder, saved config and ``last.pt`` to resume, or ``None`` for a new run.

    A SLURM job that was requeued (after preemption, or by submitit at its time limit) runs the same
    command in the same folder again, without ``trainer.resume``: it resumes on its own."""
    target = cfg.trainer.resume
    if target in (False, None) and _requeued() and (run_dir / "checkpoints" / "last.pt").is_file():
        log.info("SLURM requeued this job (restart %s): resuming %s", os.environ["SLURM_RESTART_COUNT"], run_dir)
        target = True
    if target is False or target is None:
        return None
    folder = run_dir if target is True else Path(str(target))
    if folder.is_file():
        folder = folder.parent.parent  # <run>/checkpoints/last.pt
    last = folder / "checkpoints" / "last.pt"
    if not last.is_file():
        raise ConfigError(
            f"trainer.resume={target}: {last} does not exist; "
            "pass hydra.run.dir=<run folder> trainer.resume=true, or trainer.resume=<run folder>"
        )
    checkpoint = load_checkpoint(last)
    saved = OmegaConf.create(checkpoint["config"])
    keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    for key in keys:
        if resumable(key) or key.startswith("hydra"):
            continue
        given, kept = OmegaConf.select(cfg, key, default=None), OmegaConf.select(saved, key, default=None)
        if given != kept:
            raise ConfigError(
                f"{key} cannot change when resuming (saved: {kept}, given: {given}); only "
                f"{', '.join(RESUMABLE_KEYS)} can. Start a new run to change it."
            )
    for key in ["trainer.resume", *keys]:
        if resumable(key):
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    return Resume(folder, saved, checkpoint)


def restore(
    checkpoint: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
) -> State:
    """Load a ``last.pt`` payload into the training objects and the RNGs; returns its ``State``."""
    model.load_state_dict(checkpoint["state_dict"])
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])
    if schedule is not None:
        schedule.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"])
    best = checkpoint["best"]
    return State(checkpoint["history"], best["epoch"], best["value"], checkpoint.get("wall_seconds", 0.0))
