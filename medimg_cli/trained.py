"""A trained run rebuilt from its checkpoint alone: the model, the data and the evaluation speed.

``medimg eval`` and ``medimg export`` both start here, so a checkpoint is turned back into a
working model in one way only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import OmegaConf
from torch import nn

from medimg_cli.checkpoint import load_checkpoint, model_from_checkpoint
from medimg_cli.config import resolve_device
from medimg_cli.data import Splits, build_data
from medimg_cli.data.patches import patch_size
from medimg_cli.errors import ConfigError
from medimg_cli.federated.sites import federated_view
from medimg_cli.metrics import with_average
from medimg_cli.speed import Speed
from medimg_cli.training import whole_images

log = logging.getLogger(__name__)


class Trained(NamedTuple):
    """What ``load_trained`` returns; unpacks as ``payload, model, data, speed``."""

    payload: dict[str, Any]  # the checkpoint (see medimg_cli.checkpoint)
    model: nn.Module  # eval-ready, on the device, in the run's memory layout
    data: Splits
    speed: Speed  # the run's speed settings for evaluation (no compile, fp32)


def load_trained(
    path: Path,
    device: str = "auto",
    data_changes: Mapping[str, Any] | None = None,
    overlap: float | None = None,
    windows: bool = True,
) -> Trained:
    """Rebuild the run stored in the checkpoint at ``path``.

    ``data_changes`` (``{key: value}``) change the checkpoint's data config, e.g. to evaluate on
    another site; a key the run's data config lacks raises a ``ConfigError``. A run trained on
    patches predicts whole images through sliding windows (``overlap``: the run's unless given),
    or, with ``windows=False``, is the bare network that takes patches.
    """
    torch_device = resolve_device(device)
    payload = load_checkpoint(path, torch_device)
    config = payload["config"]
    unknown = [key for key in data_changes or {} if key not in config["data"]]
    if unknown:
        keys = ", ".join(sorted(config["data"]))
        raise ConfigError(f"data.{unknown[0]} is not a key of this run's data config; its keys: {keys}")
    data_cfg = OmegaConf.merge(config["data"], dict(data_changes or {}))
    data = build_data(OmegaConf.to_container(data_cfg, resolve=True))
    if config.get("federated") is not None:  # a federated run's sites (medimg eval's subgroup table per site)
        data = federated_view(data, data_cfg, config["federated"], config["trainer"]["batch_size"])
    data.info = with_average(data.info, (config.get("metrics") or {}).get("average"))
    if data.fingerprint != payload["data_fingerprint"] and not data_changes:
        log.warning("the rebuilt data differ from the data this model was trained on (fingerprint)")
    # the run's layout in fp32, as training evaluated, so the test split reproduces summary.json
    model = model_from_checkpoint(payload, path).to(torch_device)
    speed = Speed.from_config(config["trainer"], torch_device, model, data.info.spatial_dims, compile=False)
    speed = speed.for_evaluation()
    patch = patch_size(config["data"], data.info) if windows else None
    return Trained(payload, whole_images(speed.prepare(model), patch, config["trainer"], overlap), data, speed)
