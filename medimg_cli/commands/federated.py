"""``medimg federated``: train one model across sites with Flower, where each site keeps its images.

    medimg federated data=phantom federated.clients=3 federated.rounds=3
    medimg federated federated=fedprox data.sites=3 data.site_column=site federated.baselines=true
    medimg federated hydra.run.dir=<its folder> trainer.resume=true     # continue an interrupted run

The recipe is ``medimg_cli/federated/run.py``: the global run, the rounds in Flower's simulation
engine, the tests on the pooled and per-site test splits, the baselines, the tables.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from medimg_cli.errors import ConfigError
from medimg_cli.hydra_app import run_hydra

HELP = "train across sites with Flower (FedAvg, FedProx, FedAdam, FedYogi) and compare with pooled and local training"


def main(argv: list[str]) -> int:
    return run_hydra("federated", _task, argv)


def _task(cfg: DictConfig) -> None:
    try:
        from medimg_cli.federated.run import federate  # Flower and Ray, only when running
    except ImportError as error:
        if "flwr" not in str(error) and "ray" not in str(error):
            raise
        raise ConfigError(f"medimg federated needs Flower: pip install 'medimg[federated]' ({error})") from None
    hydra_cfg = HydraConfig.get()
    federate(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
