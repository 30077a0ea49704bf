"""The Flower ``ServerApp``: a Flower strategy aggregates the sites' weights each round, and the
global model is validated, checkpointed and written like an epoch of ``medimg train``.

The global run is an ordinary medimg ``Run`` of the pooled data (``training.setup``): round r is
its epoch r, so ``metrics.csv``, ``checkpoints/{best,last}.pt``, ``summary.json`` and the table
keep their layout and ``medimg eval``, ``report`` and ``export`` work on the global model.
``Rounds`` hooks into the strategy: it keeps the sites' training and validation replies (the
per-site rows of ``sites.csv``) and, after each aggregation, validates the global model on the
pooled val split, which in a simulation the server holds (in a deployment the sites' weighted
mean is what there is; see docs/federated.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, FedYogi, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, aggregate_metricrecords

from medimg_cli.epoch import epoch_row, validate, write_epoch
from medimg_cli.errors import ConfigError, TrainingStopped, unknown_choice
from medimg_cli.fileio import append_csv_row
from medimg_cli.metrics import METRICS
from medimg_cli.training import Run

log = logging.getLogger(__name__)
STRATEGIES = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi}
SITE_COLUMNS = ["round", "site", "images", "train_loss"] + [m.column for m in METRICS if m.evaluated]
OPTIMISER_STATE = ("current_arrays", "m_t", "v_t")  # what FedAdam and FedYogi carry between rounds


def build_strategy(fed: Mapping[str, Any], clients: int, rounds: Rounds) -> Strategy:
    """Flower's strategy ``federated.strategy``, sampling ``federated.fraction`` of the ``clients``
    sites for training each round (at least one) and all of them for validation."""
    name = fed.get("strategy")
    if name not in STRATEGIES:
        raise unknown_choice("federated.strategy", name, STRATEGIES)
    fraction = float(fed.get("fraction", 1.0))
    if not 0 < fraction <= 1:
        raise ConfigError(f"federated.fraction={fraction} must be in (0, 1]: the share of sites training each round")
    kwargs: dict[str, Any] = {
        "fraction_train": fraction,
        "min_train_nodes": max(1, math.ceil(fraction * clients)),
        "min_evaluate_nodes": clients,
        "min_available_nodes": clients,
        "train_metrics_aggr_fn": rounds.on_train,
        "evaluate_metrics_aggr_fn": rounds.on_validation,
    }
    if name == "fedprox":
        kwargs["proximal_mu"] = float(fed.get("proximal_mu", 0.0))
    if name in ("fedadam", "fedyogi"):
        kwargs |= {"eta": float(fed["server_lr"]), "tau": float(fed["tau"])}
        kwargs |= {"beta_1": float(fed["betas"][0]), "beta_2": float(fed["betas"][1])}
    return STRATEGIES[name](**kwargs)


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The server optimiser's arrays of FedAdam/FedYogi as tensors (``last.pt``); ``{}`` for the others."""
    return {
        key: {k: torch.from_numpy(np.asarray(v)) for k, v in value.items()}
        for key in OPTIMISER_STATE
        if (value := getattr(strategy, key, None))
    }


def restore_strategy(strategy: Strategy, state: Mapping[str, Any]) -> None:
    for key, value in state.items():
        setattr(strategy, key, {k: v.cpu().numpy() for k, v in value.items()})


def average_buffers(strategy: Strategy, buffers: set[str]) -> None:
    """Give the model's ``buffers`` (batch-norm running statistics, counters) the sites' weighted
    mean after each aggregation: FedAdam and FedYogi step every array with their server optimiser,
    which can drive a running variance negative; statistics are averaged, not optimised."""
    aggregate = strategy.aggregate_train

    def aggregate_train(server_round: int, replies: Any) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = aggregate(server_round, replies)
        contents = [reply.content for reply in replies if reply.has_content()]
        if arrays is not None and contents:
            mean = aggregate_arrayrecords(contents, strategy.weighted_by_key)
            for key in buffers & set(mean.keys()):
                arrays[key] = mean[key]
        return arrays, metrics

    strategy.aggregate_train = aggregate_train


def offset_rounds(strategy: Strategy, offset: int) -> None:
    """Number a resumed run's rounds on from ``offset`` in the strategy's own steps (the sites'
    ``server-round``, FedAdam's bias correction), though Flower counts each session from 1."""
    for name in ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate"):
        method = getattr(strategy, name)
        setattr(strategy, name, lambda server_round, *args, _method=method: _method(server_round + offset, *args))


class Rounds:
    """What each round leaves: the sites' replies and the global model's epoch of the run.

    Args:
        run: the global run (pooled data; its ``state`` counts the rounds done).
        sites: site names by node ``partition-id``.
        start: when this session began (``perf_counter``).
        report: called with each round's ``metrics.csv`` row and its site rows (the terminal).
        history: the site rows of earlier rounds (a resumed run's ``last.pt``).
    """

    def __init__(
        self, run: Run, sites: list[str], start: float, report: Callable[[dict, list], None], history: list
    ) -> None:
        self.run, self.sites, self.start, self.report = run, sites, start, report
        self.history = list(history)
        self.offset = run.state.epoch
        self.strategy: Strategy | None = None
        self.trained: dict[str, dict[str, float]] = {}
        self.mean: MetricRecord | None = None
        self.checked: dict[str, dict[str, float]] = {}
        self.clock = time.perf_counter()

    def on_train(self, records: list[RecordDict], key: str) -> MetricRecord:
        """``train_metrics_aggr_fn``: keep each site's numbers, return Flower's weighted mean."""
        self.trained = {self.sites[int(m["site-index"])]: dict(m) for m in _metrics(records)}
        self.mean = aggregate_metricrecords(records, key)  # train_loss weighted by training images
        return self.mean

    def on_validation(self, records: list[RecordDict], key: str) -> MetricRecord:
        """``evaluate_metrics_aggr_fn``: keep each site's validation of the global model."""
        self.checked = {self.sites[int(m["site-index"])]: dict(m) for m in _metrics(records)}
        return aggregate_metricrecords(records, key)

    def on_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """``evaluate_fn``, after each aggregation: validate, checkpoint and write the round."""
        if server_round == 0:  # Flower's call before the first round
            return None
        epoch, run = self.offset + server_round, self.run
        if not self.trained:
            raise TrainingStopped(f"round {epoch}: no site returned trained weights; {_failures(run, self.sites)}")
        missing = [site for site in self.sites if site not in self.trained]
        if missing and self.strategy.fraction_train == 1:  # every site was asked
            log.warning("round %d: %s sent no weights (%s); the round averaged the others", epoch,
                        ", ".join(missing), _failures(run, missing))  # fmt: skip
        run.model.load_state_dict(arrays.to_torch_state_dict())
        stats = {
            "train_loss": self.mean["train_loss"],
            "train_images_per_second": sum(m["train_images_per_second"] for m in self.trained.values()),
        }
        row = epoch_row(epoch, time.perf_counter() - self.clock, stats, validate(run, epoch))
        site_rows = [self._site_row(epoch, site) for site in self.sites]
        self.history += site_rows
        write_epoch(run, row, self.start, {"strategy": strategy_state(self.strategy), "site_history": self.history})
        for site_row in site_rows:
            append_csv_row(run.run_dir / "sites.csv", SITE_COLUMNS, [site_row.get(c) for c in SITE_COLUMNS])
        self.report(row, site_rows)
        self.trained, self.clock = {}, time.perf_counter()
        return MetricRecord({k: float(v) for k, v in row.items() if math.isfinite(float(v))})

    def _site_row(self, epoch: int, site: str) -> dict[str, Any]:
        checked, trained = self.checked.get(site, {}), self.trained.get(site, {})
        row = {"round": epoch, "site": site, "images": trained.get("num-examples")}
        row["train_loss"] = trained.get("train_loss")  # None: not sampled this round
        return row | {c: checked[c] for c in SITE_COLUMNS[4:] if c in checked}


def server_app(
    rounds: Rounds, strategy: Strategy, num_rounds: int, train_config: dict[str, Any], failed: list
) -> ServerApp:
    """The ``ServerApp`` of a simulation: ``run_rounds``; an error in it lands in ``failed``
    (Flower's simulation only logs the errors of its server thread)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_rounds(rounds, strategy, num_rounds, train_config, grid)
        except BaseException as error:  # noqa: BLE001 - handed to the command, which reports it
            failed.append(error)

    return app


def run_rounds(rounds: Rounds, strategy: Strategy, num_rounds: int, train_config: dict[str, Any], grid: Grid) -> None:
    """``num_rounds`` rounds of ``strategy`` on ``grid`` from the global run's weights."""
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(rounds.run.model.state_dict()),
        num_rounds=num_rounds,
        train_config=ConfigRecord(train_config),
        evaluate_fn=rounds.on_round,
    )


def _metrics(records: list[RecordDict]) -> list[MetricRecord]:
    return [next(iter(record.metric_records.values())) for record in records]


def _failures(run: Run, sites: list[str]) -> str:
    """The errors the sites wrote (``sites/<site>/error.txt``), or where to look."""
    found = [(site, run.run_dir / "sites" / site / "error.txt") for site in sites]
    errors = [f"{site}: {path.read_text().strip()}" for site, path in found if path.is_file()]
    return "; ".join(errors) or "see the sites' log above"
