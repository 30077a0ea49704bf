"""``medimg eval``: evaluate a checkpoint on a split, from the checkpoint alone.

    medimg eval checkpoint=runs/2026-11-21/10-00-00/checkpoints/best.pt split=test

The checkpoint holds the model's registry name and arguments and the run's resolved config,
so the model and the data (with its split) are rebuilt without the run's YAML files;
``data.<key>=<value>`` changes the data config, to evaluate on another site or dataset. The
analyses (``medimg_cli.evaluation``) write ``<run folder>/eval/<split>/`` and the headline
numbers are printed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from medimg_cli.data.batches import TensorBatches
from medimg_cli.evaluation.document import unit_of
from medimg_cli.evaluation.run import Settings, evaluate_split
from medimg_cli.hydra_app import run_hydra
from medimg_cli.loop import evaluate
from medimg_cli.losses import TaskLoss
from medimg_cli.tables import make_console
from medimg_cli.trained import load_trained

HELP = "evaluate a checkpoint: metrics with CIs, calibration, uncertainty, maps (checkpoint=<run>/checkpoints/best.pt)"
log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    # ``data`` is empty in eval.yaml: its keys are added to the checkpoint's data config
    argv = [f"+{a}" if a.startswith("data.") else a for a in argv]
    return run_hydra("eval", evaluate_checkpoint_cfg, argv)


def evaluate_checkpoint(
    path: Path, split: str = "test", device: str = "auto", batch_size: int | None = None
) -> dict[str, float]:
    """Rebuild the model and data of a checkpoint and compute the training loop's metrics on ``split``.

    Returns:
        ``loss``, the task's metrics (fractions) and ``seconds_per_image``: for the test split of
        ``best.pt``, the test numbers of the run's summary.json.
    """
    payload, model, data, speed = load_trained(path, device)
    size = batch_size or payload["config"]["trainer"]["eval_batch_size"]
    loss = TaskLoss(data.info, payload["config"].get("loss"))
    return evaluate(model, TensorBatches(data.split(split), size, speed.device), loss, speed)


def eval_folder(cfg: DictConfig) -> Path:
    """``out``, or ``<run folder>/eval/<split>`` with a digest of the data changes when there are any."""
    if cfg.out:
        return Path(cfg.out)
    name = cfg.split
    if cfg.data:
        changes = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True, default=str)
        name += "-" + hashlib.sha256(changes.encode()).hexdigest()[:8]
    return Path(cfg.checkpoint).parent.parent / "eval" / name


def evaluate_checkpoint_cfg(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate as the ``eval`` config says, write the eval folder and print the headline numbers."""
    path = Path(cfg.checkpoint)
    changes = OmegaConf.to_container(cfg.data, resolve=True)
    settings = Settings(**OmegaConf.to_container(cfg.eval, resolve=True))
    payload, model, data, speed = load_trained(path, cfg.device, changes, settings.overlap)
    out = eval_folder(cfg)
    size = cfg.batch_size or payload["config"]["trainer"]["eval_batch_size"]
    facts = {"checkpoint": str(path), "data_changes": changes}
    document = evaluate_split(model, payload, data, cfg.split, out, settings, speed, size, facts)
    print_evaluation(document, f"{path} on the {cfg.split} split ({document['cases']} cases)")
    log.info("wrote %s", out)
    return document


def print_evaluation(document: Mapping[str, Any], title: str) -> None:
    """The metrics with their CIs, calibration, risk-coverage and the randomisation check."""
    console = make_console()
    table = Table(title=title)
    for column in ("metric", "value", "95% CI"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    rows = dict(document["metrics"]) | {
        k: v for k, v in document.get("calibration", {}).items() if isinstance(v, dict) and "value" in v
    }
    for name, entry in rows.items():  # fractions in percent, as every other table shows them
        unit = unit_of(name, document.get("distance_unit", "mm"))
        scale, style = (100, "{:.2f}") if unit == "fraction" else (1, "{:.4f}")
        low, value, high = (style.format(entry[k] * scale) for k in ("low", "value", "high"))
        label = f"{name} %" if unit == "fraction" else name if unit == "score" else f"{name} ({unit})"
        table.add_row(label, value, "pooled, no CI" if math.isnan(entry["low"]) else f"[{low}, {high}]")
    console.print(table)
    if document.get("calibration", {}).get("temperature", 1.0) != 1.0:
        console.print(f"temperature fitted on the val split: T = {document['calibration']['temperature']:.3f}")
    decision = document.get("decision") or {}
    if decision.get("positive_class") is not None:
        value = "score" if document.get("task") == "anomaly" else "p"
        rule = "the more probable class" if decision["threshold"] is None else f"{value} >= {decision['threshold']:.4g}"
        rule += f" ({decision['rule']})" if decision["rule"] == "youden on the val split" else ""
        console.print(f"binary metrics of the positive class '{decision['positive_class']}'; called positive at {rule}")
    if "per_label" in document:
        console.print(f"per-label metrics at threshold {document['threshold']} (macro means above): metrics.csv")
    if "risk_coverage" in document:
        risk = document["risk_coverage"]
        console.print(
            f"risk-coverage ({document['uncertainty']}): AURC {risk['aurc']:.4f}; "
            f"{risk['quality']} of the 80% most certain cases {100 * risk['quality_at_80_percent']:.1f}%"
        )
    missing = document.get("missing_modality")
    if missing:  # the first quality metric, e.g. accuracy: what each blanked modality costs
        metric = next(iter(missing["all"]))
        drops = ", ".join(f"{name} {-100 * drop[metric]:+.1f}" for name, drop in missing.items() if name != "all")
        console.print(f"{metric} with each modality blanked, in points: {drops} (missing_modality.csv)")
    if "explain" in document:
        pointing = document["explain"]["pointing_game"]
        if pointing:
            console.print(
                f"pointing game: the {document['explain']['method']} peak lies inside the lesion mask in "
                f"{100 * pointing['peak_in_mask']:.1f}% of {pointing['cases']} correctly classified cases with a "
                f"lesion (random weights: {100 * pointing['random_weights_peak_in_mask']:.1f}%; lesions cover "
                f"{100 * pointing['lesion_share_of_pixels']:.1f}% of the pixels)"
            )
        check = document["explain"]["randomisation"]
        console.print(
            f"{document['explain']['method']} model-randomisation check: Spearman rho between the maps of the "
            f"trained and a randomly initialised model = {check['spearman_mean']:+.3f} "
            f"± {check['spearman_sd']:.3f} "
            f"over {document['explain']['cases']} cases; {check['verdict']}"
        )
