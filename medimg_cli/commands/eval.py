"""``medimg eval``: evaluate a checkpoint on a split, from the checkpoint alone.

    medimg eval checkpoint=runs/2026-11-21/10-00-00/checkpoints/best.pt split=test

The checkpoint holds the model's registry name and arguments and the run's resolved config,
so the model and the data (with its split) are rebuilt without the run's YAML files. The
metrics are printed and written to ``<run folder>/eval/<split>.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.table import Table

from medimg_cli.checkpoint import load_checkpoint, model_from_checkpoint
from medimg_cli.config import resolve_device
from medimg_cli.data import build_data
from medimg_cli.data.batches import TensorBatches
from medimg_cli.hydra_app import run_hydra
from medimg_cli.loop import TaskLoss, evaluate
from medimg_cli.results import make_console, write_json
from medimg_cli.speed import Speed

HELP = "evaluate a checkpoint on a split (checkpoint=<run>/checkpoints/best.pt split=test)"
log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    return run_hydra("eval", evaluate_checkpoint_cfg, argv)


def evaluate_checkpoint_cfg(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate as the ``eval`` config says, print the metrics and write them to JSON."""
    path = Path(cfg.checkpoint)
    metrics = evaluate_checkpoint(path, cfg.split, cfg.device, cfg.batch_size)
    table = Table(title=f"{path} on the {cfg.split} split")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.6g}")
    make_console().print(table)
    out = path.parent.parent / "eval" / f"{cfg.split}.json"
    out.parent.mkdir(exist_ok=True)
    write_json(out, {"checkpoint": str(path), "split": cfg.split, "metrics": metrics})
    log.info("wrote %s", out)
    return metrics


def evaluate_checkpoint(
    path: Path, split: str = "test", device: str = "auto", batch_size: int | None = None
) -> dict[str, float]:
    """Rebuild the model and data of a checkpoint and evaluate on ``split``.

    Returns:
        ``loss``, the task's metrics (fractions) and ``seconds_per_image``.
    """
    torch_device = resolve_device(device)
    payload = load_checkpoint(path, torch_device)
    config = payload["config"]
    data = build_data(config["data"])
    if data.fingerprint != payload["data_fingerprint"]:
        log.warning("the rebuilt data differ from the data this model was trained on (fingerprint)")
    # the run's layout in fp32, as training evaluated, so the test split reproduces summary.json
    model = model_from_checkpoint(payload).to(torch_device)
    speed = Speed.from_config(config["trainer"], torch_device, model, data.info.spatial_dims, compile=False)
    speed = speed.for_evaluation()
    model = speed.prepare(model)
    size = batch_size or config["trainer"]["eval_batch_size"]
    return evaluate(model, TensorBatches(data.split(split), size, torch_device), TaskLoss(data.info), speed)
