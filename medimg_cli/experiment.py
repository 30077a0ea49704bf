"""``medimg benchmark experiment=<name>``: run an experiment's grid, then write its report.

The command line is split in two: items whose top-level key belongs to the ``benchmark``
config (``experiment``, ``parallel``, ``report.*``, ``hydra.*``, an experiment's own keys such
as medmnist_v2's ``data.name``) compose that config through Hydra; every other item is for
the runs. Of those, ``key=...`` where ``key`` is a grid axis sets that axis (``seed=0,1``,
``data=phantom`` picks a named variant), ``key=a,b`` adds an axis, and the rest is given to
every run last (``trainer.epochs=5``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from medimg_cli import grid
from medimg_cli.errors import ConfigError
from medimg_cli.results import write_json

log = logging.getLogger(__name__)
OWN_KEYS = {"experiment", "name", "description", "train", "grid", "parallel", "report", "hydra"}


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` -> (items for the ``benchmark`` config, items for the runs)."""
    keys = set(OWN_KEYS)
    chosen = [a.split("=", 1)[1] for a in argv if a.split("=", 1)[0].lstrip("+~") == "experiment" and "=" in a]
    try:  # an experiment may add keys of its own (medmnist_v2: data.name)
        with initialize_config_module("medimg_cli.conf", version_base="1.3"):
            keys |= set(compose("benchmark", [f"experiment={e}" for e in chosen[-1:]]))
    except Exception:  # an unknown experiment: the real composition reports it
        pass
    own = [a for a in argv if a.startswith("-") or _top_key(a) in keys]
    return own, [a for a in argv if a not in own]


def _top_key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("+~").split(".", 1)[0]


def run_experiment(cfg: DictConfig, extra: list[str]) -> dict[str, Any]:
    """Run the grid of ``cfg`` (the ``benchmark`` config) plus the run overrides ``extra``; report."""
    from medimg_cli.reporting import load_job, write_report  # numpy, scipy, matplotlib

    out = Path(HydraConfig.get().runtime.output_dir)
    axes: dict[str, Any] = OmegaConf.to_container(cfg.grid, resolve=True)
    fixed_extra = []
    for item in extra:
        key, sep, value = item.partition("=")
        if sep and key in axes:
            axes[key] = grid.select(axes, key, value.split(","))
        elif sep and "," in value and not value.startswith(("[", "{", "'", '"')):
            axes[key] = value.split(",")
        else:
            fixed_extra.append(item)
    if not isinstance(cfg.parallel, int) or cfg.parallel < 1:
        raise ConfigError(f"parallel={cfg.parallel!r} must be a whole number >= 1")
    runs = grid.expand(list(cfg.train), axes, fixed_extra)
    grid.locate(runs, out / "runs")
    states = {state: sum(r.state == state for r in runs) for state in ("finished", "interrupted", "new")}
    log.info(
        "%s: %d runs (%s) in %s; %d finished, %d to resume, %d to start",
        cfg.name,
        len(runs),
        " x ".join(f"{len(v)} {k}" for k, v in axes.items()),
        out,
        *states.values(),
    )
    failed = grid.execute(runs, cfg.parallel)
    finished = [r for r in runs if r.state == "finished"]
    settings = OmegaConf.to_container(cfg.report, resolve=True)
    record = {
        "name": cfg.name,
        "description": cfg.description,
        "axes": list(axes),
        "report": settings,
        "runs": [{"folder": str(r.folder.relative_to(out)), "axes": r.axes, "state": r.state} for r in runs],
    }
    write_json(out / "benchmark.json", record)
    if finished:
        jobs = [load_job(r.folder, r.axes) for r in finished]
        order = {key: list(dict.fromkeys(r.axes[key] for r in runs)) for key in axes}
        left = len(runs) - len(finished)
        notes = [f"{left} of {len(runs)} runs unfinished, left out"] if left else []
        if fixed_extra:
            notes.append(f"overrides given to every run on the command line: {' '.join(fixed_extra)}")
        write_report(jobs, out, settings, f"{cfg.name}: {cfg.description}", order, notes)
    if failed:
        raise ConfigError(
            f"{len(failed)} of {len(runs)} runs failed (their train.out says why): "
            + ", ".join(str(r.folder) for r in failed)
            + "; the report covers the finished ones. Run the same command again to retry."
        )
    return json.loads(json.dumps(record))
