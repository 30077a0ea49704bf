"""``medimg federated``, top to bottom: set up the global run (pooled data with each image's site,
the global model, ``last.pt`` when resuming), run the rounds in Flower's simulation engine
(``server_app`` and ``client_app``, one simulated node per site), test the best global model on
the pooled and per-site test splits, train the baselines when asked, and write the tables.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medimg_cli.checkpoint import load_checkpoint
from medimg_cli.commands.train import build_summary, epoch_status, test_best
from medimg_cli.errors import ConfigError
from medimg_cli.federated.client import simulated_client
from medimg_cli.federated.report import ROUND_HEADERS, monitored, site_tables
from medimg_cli.federated.server import (
    SITE_COLUMNS,
    Rounds,
    average_buffers,
    build_strategy,
    offset_rounds,
    restore_strategy,
    run_rounds,
    server_app,
)
from medimg_cli.federated.sites import COLUMN, site_names, site_splits
from medimg_cli.fileio import csv_text, release, write_atomic, write_json
from medimg_cli.loop import evaluate
from medimg_cli.tables import make_console, markdown_table, rich_table, run_headers, run_title, select_rows
from medimg_cli.training import Run, setup

log = logging.getLogger(__name__)


def federate(
    cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None, deployed: tuple[Any, list[str]] | None = None
) -> dict[str, Any]:
    """Run ``cfg``'s federated training into ``run_dir``; returns the summary (``summary.json``).

    Args:
        overrides: the command line's, checked on resume.
        deployed: ``(grid, site names)`` under Flower's deployment engine (``federated/deploy.py``):
            the rounds run on that grid, and the server's data are its own held-out images, not
            the sites' (no per-site tests, no baselines). ``None``: a simulation of the sites.
    """
    if cfg.trainer.get("devices", 1) != 1:
        raise ConfigError(f"trainer.devices={cfg.trainer.devices}: each site trains in one process; "
                          "simulation.gpus_per_site shares GPUs among the sites")  # fmt: skip
    run = setup(cfg, run_dir, overrides)
    try:
        start = time.perf_counter()
        fed = run.cfg.federated
        run.cfg.trainer.epochs = fed.rounds  # a resumed run's saved value predates federated.rounds=<more>
        if deployed and fed.baselines:
            raise ConfigError("federated.baselines=true needs every site's images in one place: simulation only")
        sites = deployed[1] if deployed else site_names(run.data)
        if not deployed:
            _describe_sites(run, sites)
        if run.state.epoch < fed.rounds:
            _rounds(run, sites, start, deployed[0] if deployed else None)
        test = test_best(run)
        tests = {} if deployed else site_tests(run, sites)
        results = {f"federated ({fed.strategy})": {"pooled": test, **tests}}
        if fed.baselines:
            results |= baselines(run, sites)
        return _finish(run, sites, test, tests, results if fed.baselines else {}, time.perf_counter() - start)
    finally:
        release(run.lock)


def _rounds(run: Run, sites: list[str], start: float, grid: Any) -> None:
    """The rounds left: on ``grid`` (deployment), or in Flower's simulation engine (Ray) with one
    node per site."""
    fed, done = run.cfg.federated, run.state.epoch
    saved = load_checkpoint(run.run_dir / "checkpoints" / "last.pt") if done else {}
    history = saved.get("site_history", [])
    if done:  # sites.csv as last.pt has it (an interruption may have come between the two)
        rows = ([row.get(c) for c in SITE_COLUMNS] for row in history)
        write_atomic(run.run_dir / "sites.csv", csv_text(SITE_COLUMNS, rows))
    rounds = Rounds(run, sites, start, _reporter(run, sites), history)
    strategy = rounds.strategy = build_strategy(fed, len(sites), rounds)
    restore_strategy(strategy, saved.get("strategy", {}))
    if fed.strategy in ("fedadam", "fedyogi"):
        average_buffers(strategy, {name for name, _ in run.model.named_buffers()})
    if done:
        offset_rounds(strategy, done)
    train_config = {"local-epochs": int(fed.local_epochs)}
    if grid is not None:
        run_rounds(rounds, strategy, fed.rounds - done, train_config, grid)
    else:
        failed: list[BaseException] = []  # what the server thread raised
        _simulate(run, sites, server_app(rounds, strategy, fed.rounds - done, train_config, failed))
        if failed:
            raise failed[0]
    if run.state.epoch < fed.rounds:
        raise RuntimeError(f"Flower's strategy stopped after round {run.state.epoch} of {fed.rounds} (its log above)")


def _simulate(run: Run, sites: list[str], server: Any) -> None:
    """Flower's simulation engine (Ray starts here): the ``server`` app and one node per site."""
    from flwr.simulation import run_simulation

    cfg, simulation = OmegaConf.to_container(run.cfg, resolve=True), run.cfg.simulation
    if run.device.type == "cuda" and not simulation.gpus_per_site:
        # Ray hides the GPUs from sites that hold no share of one
        if str(cfg["device"]).startswith("cuda"):
            raise ConfigError(f"device={cfg['device']}: give the sites GPU shares, e.g. simulation.gpus_per_site=0.5")
        log.warning("the sites train on the CPU (simulation.gpus_per_site=0); 0.5 puts two sites on each GPU")
        cfg["device"] = "cpu"
    client = simulated_client(cfg, str(run.run_dir), sites)
    resources = {"num_cpus": simulation.cpus_per_site, "num_gpus": float(simulation.gpus_per_site)}
    backend = {"client_resources": resources, "init_args": {"logging_level": "ERROR", "configure_logging": False}}
    with _quiet_flower():
        run_simulation(server, client, num_supernodes=len(sites), backend_config=backend)


def site_tests(run: Run, sites: list[str]) -> dict[str, dict[str, float]]:
    """The loaded model's test metrics on each site's test images."""
    found = {}
    for site in sites:
        split = site_splits(run.data, site).test
        if not len(split["image"]):  # a partition may leave a small site without test images
            found[site] = {}
            continue
        batches = run.batches(split, run.cfg.trainer.eval_batch_size)
        found[site] = evaluate(run.eval_model, batches, run.loss, run.speed.for_evaluation())
    return found


def baselines(run: Run, sites: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Centralised training on the pooled data and each site alone, for ``rounds x local_epochs``
    epochs each (``<run>/baselines/<name>/``, resumable), tested like the global model."""
    from medimg_cli.commands.train import train  # the ordinary recipe

    fed, results = run.cfg.federated, {}
    for index, site in enumerate([None, *sites]):
        name = site or "centralised"
        cfg = OmegaConf.create(OmegaConf.to_container(run.cfg, resolve=True))
        cfg.federated.site, cfg.seed = site, cfg.seed + max(index - 1, 0)
        cfg.trainer.epochs, cfg.tracking = fed.rounds * fed.local_epochs, {"tensorboard": False}
        folder = run.run_dir / "baselines" / name
        cfg.trainer.resume = (folder / "checkpoints" / "last.pt").is_file()
        if not (folder / "summary.json").is_file():
            log.info("baseline %s: %d epochs", name, cfg.trainer.epochs)
            train(cfg, folder)
        run.model.load_state_dict(load_checkpoint(folder / "checkpoints" / "best.pt", run.device)["state_dict"])
        pooled = evaluate(run.eval_model, run.batches(run.data.test, run.cfg.trainer.eval_batch_size), run.loss,
                          run.speed.for_evaluation())  # fmt: skip
        results[name if site is None else f"local {site}"] = {"pooled": pooled, **site_tests(run, sites)}
    return results


def _finish(run: Run, sites: list[str], test: dict, tests: dict, results: dict, seconds: float) -> dict[str, Any]:
    """``summary.json`` (the run's, plus ``federated``) and ``table.md``, printed too."""
    fed = run.cfg.federated
    summary = build_summary(run, test, seconds)
    history = load_checkpoint(run.run_dir / "checkpoints" / "last.pt").get("site_history", [])
    summary["federated"] = {
        "strategy": fed.strategy,
        "rounds": fed.rounds,
        "local_epochs": fed.local_epochs,
        "fraction": fed.fraction,
        # images per site and split; deployed, the server does not know them (sites.csv has each site's count)
        "sites": {site: _counts(run, site) for site in sites} if tests else list(sites),
        "site_test": tests,
        **({"comparison": results} if results else {}),
    }
    write_json(run.run_dir / "summary.json", summary)
    title = f"{run_title(summary)}: {fed.strategy}, {len(sites)} sites, {fed.local_epochs} local epoch(s) per round"
    headers = run_headers(summary) | ROUND_HEADERS
    every, best = run.cfg.trainer.table_every, run.state.best_epoch
    shown = {int(row["epoch"]) for row in select_rows(run.state.history, every, best)}
    tables, site_markdown = site_tables(history, sites, run.cfg.trainer.monitor, tests, results, shown)
    markdown = markdown_table(run.state.history, every, test, best, title=title, headers=headers)
    write_atomic(run.run_dir / "table.md", markdown + "\n" + site_markdown)
    console = make_console()
    for table in [rich_table(run.state.history, every, test, best, title=title, headers=headers), *tables]:
        console.print(table)
    console.print(f"run folder: {run.run_dir}")
    return summary


def _counts(run: Run, site: str) -> dict[str, int]:
    return {split: run.data.meta[split][COLUMN].count(site) for split in ("train", "val", "test")}


def _describe_sites(run: Run, sites: list[str]) -> None:
    counts = ", ".join(f"{site} {c['train']}/{c['val']}/{c['test']}" for site in sites if (c := _counts(run, site)))
    log.info("%d sites (train/val/test images): %s", len(sites), counts)


def _reporter(run: Run, sites: list[str]) -> Any:
    """The line printed after each round: the global model's numbers, then each site's monitor."""
    metric, clock = monitored(run.cfg.trainer.monitor), time.perf_counter()
    rounds, first = run.cfg.federated.rounds, run.state.epoch

    def report(row: dict[str, Any], site_rows: list[dict[str, Any]]) -> None:
        done = int(row["epoch"])
        status = epoch_status(run, row, rounds, (time.perf_counter() - clock) / (done - first))
        per_site = "  ".join(f"{r['site']} {metric.show(r.get(metric.column))}" for r in site_rows)
        log.info("round %d/%d  %s  |  %s", done, rounds, status, per_site)

    return report


@contextlib.contextmanager
def _quiet_flower() -> Iterator[None]:
    """Flower's INFO lines (each message of each round) down to warnings while the simulation runs
    (medimg prints one line per round instead), without its notice that ``run_simulation`` will
    give way to ``flwr run`` (the deployment path, docs/federated.md) and Ray's about GPU variables."""
    from flwr.common.logger import FLOWER_LOGGER

    level = FLOWER_LOGGER.level
    FLOWER_LOGGER.setLevel(logging.WARNING)
    FLOWER_LOGGER.addFilter(_not_deprecation)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
            yield
    finally:
        FLOWER_LOGGER.setLevel(level)
        FLOWER_LOGGER.removeFilter(_not_deprecation)


def _not_deprecation(record: logging.LogRecord) -> bool:
    return "DEPRECATED FEATURE" not in str(record.msg)
