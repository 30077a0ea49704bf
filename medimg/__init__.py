"""medimg's Python API: the commands as functions, for notebooks and scripts.

    import medimg
    summary = medimg.train(overrides=["model=unet", "data.task=segmentation", "trainer.epochs=5"])
    print(summary["test"])                                   # the test metrics of best.pt
    document = medimg.evaluate(summary["run_dir"] + "/checkpoints/best.pt", overrides=["eval.bootstrap=500"])
    model = medimg.load_model(summary["run_dir"] + "/checkpoints/best.pt")

Overrides are the command line's ``key=value`` items, composed from the same configs. The
functions raise ``medimg.ConfigError`` (one line, as the CLI prints it) for a user mistake. A
run writes the same folder as ``medimg train`` except Hydra's ``.hydra/`` and ``train.log``:
logging goes wherever the caller's Python logging sends it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from torch import nn

from medimg_cli.errors import ConfigError

__all__ = ["ConfigError", "evaluate", "load_model", "train"]


def _compose(name: str, overrides: Sequence[str]) -> Any:
    """The config ``conf/<name>.yaml`` with ``overrides``, as the command composes it."""
    with initialize_config_module(config_module="medimg_cli.conf", version_base="1.3"):
        try:
            return compose(config_name=name, overrides=list(overrides))
        except Exception as error:  # Hydra raises several types for a bad override
            raise ConfigError(f"medimg.{name}: the overrides {list(overrides)} do not compose: {error}") from None


def train(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train as ``medimg train <overrides>`` would, in ``run_dir`` (default: ``runs/<date>/<time>``).

    Returns:
        the run's ``summary.json`` contents (``summary["test"]``: the test metrics, fractions).
    """
    from medimg_cli.commands.train import train as train_run  # torch and MONAI load on first use

    cfg = _compose("train", overrides)
    if cfg.trainer.get("devices", 1) not in (1, None):
        raise ConfigError("medimg.train runs one process; for trainer.devices > 1 use the medimg train command")
    folder = Path(run_dir) if run_dir is not None else Path("runs") / time.strftime("%Y-%m-%d/%H-%M-%S")
    return train_run(cfg, folder, overrides=list(overrides))


def evaluate(checkpoint: str | Path, split: str = "test", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``medimg eval`` of ``checkpoint`` on ``split``: writes the eval folder, prints the table.

    Args:
        overrides: the command's other items, e.g. ``["eval.bootstrap=500", "data.path=site_b.csv"]``.

    Returns:
        the ``metrics.json`` document: every metric with its 95% CI.
    """
    from medimg_cli.commands.eval import evaluate_checkpoint_cfg

    items = [f"+{o}" if o.startswith("data.") else o for o in overrides]  # data: changes to the run's
    return evaluate_checkpoint_cfg(_compose("eval", [f"checkpoint={checkpoint}", f"split={split}", *items]))


def load_model(checkpoint: str | Path, device: str = "cpu") -> nn.Module:
    """The trained network of ``checkpoint`` in evaluation mode on ``device``: for ``model=monai``
    the plain MONAI network (it returns logits), else medimg's module (a dict of outputs, see
    ``medimg_cli.models``)."""
    from medimg_cli.models.monai_net import MonaiNet
    from medimg_cli.trained import load_trained

    model = load_trained(Path(checkpoint), device).model.eval()  # with sliding windows if it trained on patches
    return model.net if isinstance(model, MonaiNet) else model
