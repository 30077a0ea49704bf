"""``medimg federated`` across real sites: the ``ServerApp`` and ``ClientApp`` that Flower's
deployment engine runs (SuperLink at the coordinating centre, a SuperNode at each site), with the
same rounds, training step and records as the simulation. The Flower App that names them is
``deploy/flower/pyproject.toml``; docs/federated.md has the commands.

Run config (``flwr run ... --run-config``):
    medimg-config  a federated config YAML (``medimg federated --cfg job > federated.yaml``), the
                   same file at the server and every site: model, training, strategy, rounds,
                   ``federated.clients`` (the number of sites); its data are the server's
                   held-out images, on which it validates and tests the global model
    run-dir        the server's run folder
Node config (``flower-supernode --node-config``):
    site-index     0, 1, ...: the site's number (seed + index; ``site_<index + 1>`` in the tables)
    data           a YAML file of the site's own data config (a manifest, folder, DICOM study...)
    folder         where the site keeps its run files and round state (never sent)
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from medimg_cli.federated.client import Site, built_site, client_app, site_config

server = ServerApp()


@server.main()
def _serve(grid: Grid, context: Context) -> None:
    from medimg_cli.federated.run import federate  # the recipe; the sites' side needs less

    cfg = _config(context)
    sites = [f"site_{k + 1}" for k in range(int(cfg.federated.clients))]
    federate(_one_group(cfg), Path(str(context.run_config["run-dir"])), deployed=(grid, sites))


def _site(context: Context) -> Site:
    """This SuperNode's site: the config's training with the site's own data, in its own folder."""
    node = context.node_config
    index = int(node["site-index"])

    def recipe() -> tuple[DictConfig, Path]:
        cfg = _config(context)
        cfg.data = OmegaConf.load(str(node["data"]))
        return site_config(_one_group(cfg), index, "site_1"), _folder(context)

    return built_site((str(node["folder"]), index), recipe, index)


def _folder(context: Context) -> Path:
    return Path(str(context.node_config["folder"]))


client = client_app(_site, _folder)


def _config(context: Context) -> DictConfig:
    return OmegaConf.load(str(context.run_config["medimg-config"]))


def _one_group(cfg: DictConfig) -> DictConfig:
    """``cfg`` with its data as one group of images: a deployed party (server or site) holds its
    own images only, so nothing is partitioned."""
    cfg.federated.clients, cfg.federated.partition, cfg.federated.site = 1, "iid", None
    if "site_column" in cfg.data:
        cfg.data.site_column = None
    return cfg
