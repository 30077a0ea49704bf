"""Sweeps (``medimg train -m``): what each job returns, the Optuna direction, the closing table.

- Every job returns its monitored validation value (``trainer.monitor`` at the best epoch), which
  is what Hydra's Optuna sweeper (``hydra/sweeper=optuna``) optimises; the basic sweeper ignores it.
- ``optuna_direction`` points the Optuna study the way ``trainer.monitor`` improves (``minimize``
  for ``val_loss``, ``maximize`` for ``val_dice``...) unless ``hydra.sweeper.direction`` is given.
- ``SweepSummary``, a Hydra callback in ``conf/train.yaml``, prints one table of the sweep's runs
  when it ends, the best run starred, and the ``medimg report`` line that makes the full report.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from medimg_cli.errors import ConfigError
from medimg_cli.metrics import BY_COLUMN, METRICS
from medimg_cli.tables import grid_rich, make_console, run_headers

DIRECTION_RESOLVER = "medimg_direction"
# Hydra's Optuna sweeper (1.3) builds Optuna's pre-3.0 distribution classes, which Optuna 4+ still
# accepts but warns about on every trial; the warning is about the plugin's code, not the user's.
warnings.filterwarnings("ignore", "[A-Za-z]*Distribution has been deprecated", FutureWarning)


def _direction(column: str) -> str:
    """Which way Optuna should push ``column``: ``maximize`` for metrics that improve upwards."""
    metric = BY_COLUMN.get(column)
    return "maximize" if metric is not None and metric.higher else "minimize"


if not OmegaConf.has_resolver(DIRECTION_RESOLVER):
    OmegaConf.register_new_resolver(DIRECTION_RESOLVER, _direction)


def optuna_direction(argv: list[str]) -> list[str]:
    """``argv`` with ``hydra.sweeper.direction`` following ``trainer.monitor`` when it selects
    the Optuna sweeper and sets no direction itself (its default, minimize, would be wrong for
    every monitored metric but the loss)."""
    if "hydra/sweeper=optuna" not in argv or any(a.startswith("hydra.sweeper.direction=") for a in argv):
        return argv
    return [*argv, f"hydra.sweeper.direction='${{{DIRECTION_RESOLVER}:${{trainer.monitor}}}}'"]


def check_direction(monitor: str, sweeper: DictConfig) -> None:
    """Refuse an Optuna sweep that would push ``monitor`` the wrong way: ``hydra.sweeper.direction``
    set against it, or a study in ``hydra.sweeper.storage`` created for the other direction (Optuna
    loads an existing study with its own direction, whatever the sweep asks).

    Raises:
        ConfigError: naming the direction, the monitor and the fix.
    """
    wanted = _direction(monitor)
    asked = str(sweeper.get("direction"))
    if asked != wanted:
        raise ConfigError(
            f"hydra.sweeper.direction={asked}, but trainer.monitor={monitor} improves the other way;"
            f" pass hydra.sweeper.direction={wanted} or leave it out"
        )
    if not sweeper.get("storage") or not sweeper.get("study_name"):
        return
    import optuna

    try:
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
    except KeyError:  # not created yet
        return
    made = study.direction.name.lower()  # minimize | maximize
    if made != wanted:
        raise ConfigError(
            f"study '{sweeper.study_name}' in {sweeper.storage} was made to {made}, but trainer.monitor={monitor}"
            f" needs {wanted}; name a new hydra.sweeper.study_name"
        )


def objective(summary: dict[str, Any]) -> float | None:
    """The job's return value: ``trainer.monitor`` at the best epoch (NaN fails the Optuna trial)."""
    if "monitor" not in summary:  # DDP processes other than rank 0
        return None
    value = summary["best"].get(summary["monitor"])
    return math.nan if value is None else float(value)


def optuna_note(folder: Path) -> list[str]:
    """The Optuna study's best trial, from the ``optimization_results.yaml`` its sweeper writes
    into the sweep folder (``[]`` for other folders). A study continued across sweeps (the same
    ``hydra.sweeper.storage`` and ``study_name``) may find its best in an earlier sweep."""
    path = folder / "optimization_results.yaml"
    if not path.is_file():
        return []
    found = OmegaConf.to_container(OmegaConf.load(path))
    if "best_params" not in found:
        return []
    params = " ".join(f"{k}={v}" for k, v in found["best_params"].items())
    return [f"Optuna's best trial: {params} (monitored value {found['best_value']:.4g})"]


class SweepSummary(Callback):
    """At the end of a sweep: one table of its finished runs and the ``medimg report`` hint."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from medimg_cli.reporting import find_jobs  # the report machinery, only when a sweep ends

        root = Path(config.hydra.sweep.dir)
        console = make_console()
        try:
            jobs, unfinished, _ = find_jobs(root)
        except ConfigError as error:
            console.print(f"sweep: {error}", highlight=False)
            return
        console.print(sweep_table(jobs))
        for line in optuna_note(root):
            console.print(line, highlight=False)
        if unfinished:
            console.print(f"{len(unfinished)} unfinished run(s) left out: {', '.join(f.name for f in unfinished)}")
        console.print(f"full report (tables, statistics, plots): medimg report {root}", highlight=False)


def _short(value: str) -> str:
    """An override value for the table: Optuna's floats to 4 significant digits (config.yaml keeps them whole)."""
    try:
        return value if float(value).is_integer() else f"{float(value):.4g}"
    except ValueError:
        return value


def sweep_table(jobs: list[Any]):
    """A rich table, one row per run (``reporting.Job``): its job folder, the overrides that vary,
    the best epoch, the monitored validation value there and the test metrics; ``*`` marks the run
    with the best monitored value."""
    monitor = jobs[0].summary["monitor"]
    metric = BY_COLUMN[monitor]
    values = [objective(job.summary) for job in jobs]
    finite = [v for v in values if v is not None and not math.isnan(v)]
    best = (max if metric.higher else min)(finite) if finite else None
    axes = list(jobs[0].axes)
    tests = [m for m in METRICS if m.kind == "quality" and any(m.key in job.summary["test"] for job in jobs)]
    named = run_headers(jobs[0].summary)  # which F1
    headers = ["run", *axes, "best epoch", f"{metric.header} (monitor)"]
    headers += [f"test {named.get(m.key, m.header)}" for m in tests]
    body = []
    for job, value in zip(jobs, values, strict=True):
        cells = [job.folder.name + ("*" if value == best else ""), *(_short(job.axes[k]) for k in axes)]
        cells += [str(job.summary["best_epoch"]), metric.show(value)]
        body.append(cells + [m.show(job.summary["test"].get(m.key)) for m in tests])
    caption = f"* best {monitor} ({'highest' if metric.higher else 'lowest'}); test = each run's best.pt"
    return grid_rich(headers, body, f"Sweep: {len(jobs)} runs", caption)
