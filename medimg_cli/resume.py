"""Resuming a run: which ``last.pt`` and config to continue, and which keys may change.

A resumed run keeps its saved config; the command line may change only ``RESUMABLE_KEYS``
(repeating the original overrides is fine). ``medimg benchmark`` leaves the same keys out of
a run's identity (``grid.IGNORED_KEYS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medimg_cli.checkpoint import load_checkpoint
from medimg_cli.errors import ConfigError

# Keys (or groups of keys) a resumed run may change; anything else would make it a different
# experiment. The loaders give identical batches, so they may change too; tracking only adds viewers.
RESUMABLE_KEYS = (
    "trainer.resume",
    "trainer.epochs",
    "trainer.table_every",
    "device",
    "trainer.loader",
    "trainer.workers",
    "tracking",
)


def resumable(key: str) -> bool:
    """Whether a resumed run may change ``key`` (a key of ``RESUMABLE_KEYS`` or inside one of its groups)."""
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def resume_checkpoint(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict[str, Any] | None:
    """The run folder, saved config and ``last.pt`` to resume, or ``None`` for a new run."""
    target = cfg.trainer.resume
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
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if resumable(key) or key.startswith("hydra"):
            continue
        given, kept = OmegaConf.select(cfg, key, default=None), OmegaConf.select(saved, key, default=None)
        if given != kept:
            raise ConfigError(
                f"{key} cannot change when resuming (saved: {kept}, given: {given}); only "
                f"{', '.join(RESUMABLE_KEYS)} can. Start a new run to change it."
            )
    for key in ["trainer.resume", *(o.lstrip("+~").split("=", 1)[0] for o in overrides)]:
        if resumable(key):
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    return {"run_dir": folder, "cfg": saved, "checkpoint": checkpoint}
