"""``medimg benchmark experiment=<name>``: run an experiment's grid, then write its report.

The command line is split in two: items whose top-level key belongs to the ``benchmark``
config (``experiment``, ``benchmark.parallel``, ``report.*``, ``hydra.*``, an experiment's own keys such
as medmnist_v2's ``data.name``) compose that config through Hydra; every other item is for
the runs. Of those, ``key=...`` where ``key`` is a grid axis sets that axis (``seed=0,1``,
``data=phantom`` picks a named variant), ``key=a,b`` adds an axis, and the rest is given to
every run last (``trainer.epochs=5``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from medimg_cli.benchmark import grid
from medimg_cli.errors import ConfigError
from medimg_cli.fileio import write_json

log = logging.getLogger(__name__)
OWN_KEYS = {"experiment", "name", "description", "train", "grid", "benchmark", "report", "hydra"}


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` -> (items for the ``benchmark`` config, items for the runs).

    Hydra's flags and items whose key is in the ``benchmark`` config of the chosen experiment
    (or under one of ``OWN_KEYS``) are the benchmark's; medmnist_v2's ``data.name`` is, its
    ``data.root`` is not.
    """
    chosen = [a.split("=", 1)[1] for a in argv if a.split("=", 1)[0].lstrip("+~") == "experiment" and "=" in a]
    try:  # an experiment may add keys of its own (medmnist_v2: data.name)
        with initialize_config_module("medimg_cli.conf", version_base="1.3"):
            config = compose("benchmark", [f"experiment={e}" for e in chosen[-1:]])
    except Exception:  # an unknown experiment: the real composition reports it
        config = OmegaConf.create()

    def own(item: str) -> bool:
        key = item.split("=", 1)[0].lstrip("+~")
        known = OmegaConf.select(config, key, default=_MISSING) is not _MISSING
        return "=" not in item or item.startswith("-") or key.split(".")[0] in OWN_KEYS or known

    mine = [a for a in argv if own(a)]
    return mine, [a for a in argv if not own(a)]


_MISSING = object()


def override_note(overrides: list[str]) -> list[str]:
    """The report's line about command-line overrides, which the experiment's description omits."""
    return [f"overrides given to every run on the command line: {' '.join(overrides)}"] if overrides else []


def protocol_changes(overrides: list[str]) -> list[str]:
    """The overrides that change what the runs compute (``trainer.epochs=2``), which the
    experiment's description and any published numbers do not account for; neutral keys
    (printing, loaders, tracking, the device) are left out."""
    from medimg_cli.resume import neutral  # torch

    keys = [item.lstrip("+~").partition("=")[0] for item in overrides]
    return [item for item, key in zip(overrides, keys, strict=True) if not neutral(key) and key != "device"]


def gpu_pool(setting: Any) -> list[int]:
    """``benchmark.gpus``: ``null`` (no pinning), ``all`` (every visible CUDA GPU) or a list of indices."""
    if setting is None:
        return []
    if setting == "all":
        import torch

        count = torch.cuda.device_count()
        if not count:
            raise ConfigError("benchmark.gpus=all: no CUDA GPU is visible; leave benchmark.gpus=null on a CPU")
        return list(range(count))
    values = list(setting) if isinstance(setting, (list, tuple, ListConfig)) else [setting]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(f"benchmark.gpus={setting!r} must be null, all, or a list of GPU indices such as [0,1]")
    return values


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
    parallel = cfg.benchmark.parallel
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise ConfigError(f"benchmark.parallel={parallel!r} must be a whole number >= 1")
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
    failed = grid.execute(runs, parallel, gpu_pool(cfg.benchmark.get("gpus")))
    finished = [r for r in runs if r.state == "finished"]
    settings = OmegaConf.to_container(cfg.report, resolve=True)
    record = {
        "name": cfg.name,
        "description": cfg.description,
        "axes": list(axes),
        "overrides": fixed_extra,
        "report": settings,
        "runs": [{"folder": str(r.folder.relative_to(out)), "axes": r.axes, "state": r.state} for r in runs],
    }
    write_json(out / "benchmark.json", record)
    if finished:
        jobs = [load_job(r.folder, r.axes) for r in finished]
        order = {key: list(dict.fromkeys(r.axes[key] for r in runs)) for key in axes}
        left = len(runs) - len(finished)
        notes = [f"{left} of {len(runs)} runs unfinished, left out"] if left else []
        notes += override_note(fixed_extra)
        notes += [f"command: medimg benchmark {' '.join([*HydraConfig.get().overrides.task, *extra])}"]
        changed = protocol_changes(fixed_extra)
        title = f"{cfg.name}: {cfg.description}"
        title += f" [protocol changed: {' '.join(changed)}]" if changed else ""
        write_report(jobs, out, settings | {"changed": [c.partition("=")[0] for c in changed]}, title, order, notes)
    if failed:
        raise ConfigError(
            f"{len(failed)} of {len(runs)} runs failed (their train.out says why): "
            + ", ".join(str(r.folder) for r in failed)
            + "; the report covers the finished ones. Run the same command again to retry."
        )
    return record
