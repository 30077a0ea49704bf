"""``medimg benchmark``: an experiment's grid of runs and its report, or ``speed``.

medimg benchmark experiment=seed_comparison                  # medimg_cli/benchmark/experiment.py
medimg benchmark experiment=seed_comparison data=phantom trainer.epochs=5 seed=0,1
medimg benchmark speed models=[resnet18] image_sizes=[28]    # medimg_cli/benchmark/speed.py
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig

import medimg_cli
from medimg_cli.hydra_app import print_error, run_hydra

HELP = "run an experiment's grid of runs and write its report; or measure speed (medimg benchmark speed)"
EXPERIMENTS = Path(medimg_cli.__file__).parent / "conf" / "experiment"


def main(argv: list[str]) -> int:
    if argv and argv[0] == "speed":
        from medimg_cli.benchmark.speed import speed

        return run_hydra(
            "benchmark speed", lambda cfg: speed(cfg, Path(HydraConfig.get().runtime.output_dir)), argv[1:]
        )
    from medimg_cli.benchmark.experiment import run_experiment, split_arguments

    named = any(a.split("=", 1)[0].lstrip("+~") == "experiment" for a in argv)
    if not named and not any(a.startswith("-") for a in argv):  # --help and --cfg show the default one
        experiments = ", ".join(sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
        message = f"name an experiment: medimg benchmark experiment=<name>, one of {experiments}"
        print_error("benchmark", f"{message}; or: medimg benchmark speed")
        return 2
    own, extra = split_arguments(argv)
    return run_hydra("benchmark", lambda cfg: run_experiment(cfg, extra), own)
