"""The Flower ``ClientApp``: a site trains the global model on its own images and validates it.

Each site is an ordinary medimg ``Run`` (``training.setup``'s pieces) of the federated config with
``federated.site=<its name>`` and ``seed + site index``, kept in ``<run>/sites/<site>/``: the same
model, augmentation, loss, optimizer and schedule as ``medimg train``, and the same training step
(``epoch.train_one_epoch``). A round: load the global weights, train ``federated.local_epochs``
epochs (numbered on from the site's earlier rounds, so batch order and schedule continue), reply
with the weights and the number of training images. FedProx adds
``proximal_mu / 2 * ||w - w_global||^2`` to the loss, as Li et al. 2020 define it.

The site's optimizer, schedule and random state carry over between rounds, as they would between
the epochs of one run: they are saved at the site (``state_<round>.pt``, never sent), so FedAvg
with one site and one local epoch per round is exactly ordinary training, and an interrupted run
resumes. Only weights and counts leave a site.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medimg_cli.checkpoint import rng_state, save_checkpoint, set_rng_state
from medimg_cli.epoch import train_one_epoch, val_columns
from medimg_cli.fileio import load_tensors
from medimg_cli.loop import evaluate
from medimg_cli.training import Run, build_run


@dataclass
class Site:
    """A site's run in this worker process, its index and the random state it was built with."""

    run: Run
    index: int
    start: dict[str, Any]


_SITES: dict[tuple, Site] = {}  # the sites this worker process has built


def client_app(site_of: Callable[[Context], Site], folder_of: Callable[[Context], Path]) -> ClientApp:
    """The ``ClientApp``: ``site_of(context)`` is the site a node trains and validates (built once
    per worker process); an error is written to ``folder_of(context)/error.txt`` (the server names
    it) before Flower reports the failed reply."""
    app = ClientApp()

    def noted(step: Callable[[Site, Message], Message], msg: Message, context: Context) -> Message:
        try:
            return step(site_of(context), msg)
        except Exception as error:
            folder = folder_of(context)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "error.txt").write_text(f"{type(error).__name__}: {error}\n")
            raise

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return noted(local_training, msg, context)

    @app.evaluate()
    def check(msg: Message, context: Context) -> Message:
        return noted(local_validation, msg, context)

    return app


def simulated_client(cfg: dict[str, Any], run_dir: str, sites: list[str]) -> ClientApp:
    """The ``ClientApp`` of a simulation: node ``partition-id`` k is site ``sites[k]`` of the pooled
    data, kept in ``<run_dir>/sites/<sites[k]>/``.

    Args:
        cfg: the federated run's resolved config (plain containers: it travels to Flower's workers).
    """

    def folder_of(context: Context) -> Path:
        return Path(run_dir) / "sites" / sites[int(context.node_config["partition-id"])]

    def site_of(context: Context) -> Site:
        index = int(context.node_config["partition-id"])
        return built_site((run_dir, index), lambda: (site_config(cfg, index, sites[index]), folder_of(context)), index)

    return client_app(site_of, folder_of)


def built_site(key: tuple, recipe: Callable[[], tuple[DictConfig, Path]], index: int) -> Site:
    """The site ``key`` of this worker process, built from ``recipe()`` (its config and folder) once."""
    if key not in _SITES:
        cfg, folder = recipe()
        _SITES[key] = Site(build_run(cfg, folder, None), index, rng_state())  # the state right after building
    return _SITES[key]


def site_config(cfg: DictConfig | dict, index: int, name: str) -> DictConfig:
    """Site ``name``'s run config: its images alone, seed ``seed + index``, and a schedule as long
    as all its local epochs (``rounds x local_epochs``)."""
    site = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg)
    fed = site.federated
    site.federated.site, site.seed = name, site.seed + index
    site.trainer.epochs = fed.rounds * fed.local_epochs
    site.trainer.resume = False
    return site


def local_training(site: Site, msg: Message) -> Message:
    """Round ``server-round`` at a site: global weights in, ``local-epochs`` epochs, weights out."""
    run = site.run
    config = msg.content["config"]
    round_, epochs = int(config["server-round"]), int(config["local-epochs"])
    run.model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _restore(run, round_ - 1, site.start)
    mu = float(config.get("proximal-mu", 0.0))
    loss = Proximal(run.loss, run.model, mu) if mu > 0 else None
    for epoch in range((round_ - 1) * epochs + 1, round_ * epochs + 1):
        stats = train_one_epoch(run, epoch, loss=loss)
    _save(run, round_)
    # FedAvg weighs each site by its training images (McMahan et al. 2017's n_k)
    metrics = {
        "num-examples": len(run.data.train["image"]),
        "train_loss": stats["train_loss"],
        "site-index": site.index,
    }
    metrics["train_images_per_second"] = stats["train_images_per_second"]
    content = RecordDict({"arrays": ArrayRecord(run.model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def local_validation(site: Site, msg: Message) -> Message:
    """The global model on the site's validation images: ``val_<metric>`` per metric, the count
    and the site's index (the server's per-site table)."""
    run = site.run
    run.model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    found = evaluate(run.eval_model, run.val_batches, run.loss, run.speed.for_evaluation())
    metrics = {column: float(value) for column, value in val_columns(found).items() if value is not None}
    metrics |= {"num-examples": len(run.data.val["image"]), "site-index": site.index}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


class Proximal(nn.Module):
    """FedProx's local objective: ``loss + mu / 2 * ||w - w_global||^2`` over the trainable weights,
    ``w_global`` being the weights the round started from."""

    def __init__(self, loss: nn.Module, model: nn.Module, mu: float) -> None:
        super().__init__()
        self.loss, self.model, self.mu = loss, model, mu
        self.anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        trainable = (p for p in self.model.parameters() if p.requires_grad)
        distance = sum((p - a).pow(2).sum() for p, a in zip(trainable, self.anchor, strict=True))
        return self.loss(outputs, batch) + self.mu / 2 * distance


def _states(run: Run) -> dict[int, Path]:
    """The site's saved round states, by round."""
    return {int(path.stem.split("_")[1]): path for path in run.run_dir.glob("state_*.pt")}


def _restore(run: Run, previous: int, start: dict[str, Any]) -> None:
    """The optimizer, schedule, scaler and random state the site ended its last round up to
    ``previous`` with (a site sampled only in some rounds continues from its last); as built when
    it has not trained yet. A state of a later round (a round the server never finished before an
    interruption) is passed over."""
    rounds = [r for r in _states(run) if r <= previous]
    if not rounds:
        set_rng_state(start)
        return
    path = _states(run)[max(rounds)]
    state = load_tensors(path, f"site state {path}", run.device)
    if run.optimizer is not None:
        run.optimizer.load_state_dict(state["optimizer"])
    if run.schedule is not None:
        run.schedule.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])


def _save(run: Run, round_: int) -> None:
    """Keep this round's state at the site, and the one before (which a resumed round restarts from)."""
    optimizer = run.optimizer.state_dict() if run.optimizer is not None else None
    schedule = run.schedule.state_dict() if run.schedule is not None else None
    state = {"optimizer": optimizer, "scheduler": schedule, "scaler": run.scaler.state_dict(), "rng": rng_state()}
    save_checkpoint(run.run_dir / f"state_{round_}.pt", state)
    for old in sorted(r for r in _states(run) if r < round_)[:-1]:
        _states(run)[old].unlink(missing_ok=True)
