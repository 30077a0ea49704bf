"""Checks on composed configs and the run-wide settings they imply (seeding, device, optimizer).

Hydra composes the YAML; this module turns bad values into one-line ``ConfigError`` messages
before anything is built, and maps names to torch objects.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from medimg_cli.errors import ConfigError, check_arguments
from medimg_cli.registry import Registry

log = logging.getLogger(__name__)

# key: (type, smallest allowed value, example). Keys absent from a config are not checked.
_NUMBERS: dict[str, tuple[type, float, str]] = {
    "seed": (int, 0, "seed=0"),
    "trainer.epochs": (int, 1, "trainer.epochs=50"),
    "trainer.batch_size": (int, 1, "trainer.batch_size=32"),
    "trainer.eval_batch_size": (int, 1, "trainer.eval_batch_size=256"),
    "trainer.table_every": (int, 1, "trainer.table_every=5"),
    "optim.lr": (float, 0, "optim.lr=0.001"),
    "optim.weight_decay": (float, 0, "optim.weight_decay=0.0001"),
    "optim.momentum": (float, 0, "optim.momentum=0.9"),
    "scheduler.gamma": (float, 0, "scheduler.gamma=0.1"),
    "scheduler.eta_min": (float, 0, "scheduler.eta_min=0"),
    "data.seed": (int, 0, "data.seed=0"),
    "data.num_samples": (int, 10, "data.num_samples=700"),
    "data.image_size": (int, 1, "data.image_size=32"),
    "data.spatial_dims": (int, 2, "data.spatial_dims=3"),
    "data.mask_classes": (int, 2, "data.mask_classes=3"),
    "tracking.images": (int, 0, "tracking.images=4"),
    "tracking.image_every": (int, 1, "tracking.image_every=10"),
    "trainer.steps_per_epoch": (int, 1, "trainer.steps_per_epoch=250"),
    "model.pretrained_min_match": (float, 0, "model.pretrained_min_match=0.5"),
}
_MAXIMUM = {"model.pretrained_min_match": 1}  # shares: at most 1
_POSITIVE = {"optim.lr", "scheduler.gamma"}  # strictly greater than the minimum
_BOOLEANS = ("data.binary", "optim.nesterov", "trainer.deterministic")
_PER_AXIS = {"data.image_size"}  # an int, or a list with one int per spatial axis
_PLANNED = {"trainer.batch_size"}  # may also be "auto": filled from the data plan (data/plan.py)


def check_numbers(cfg: DictConfig) -> None:
    """Raise a ``ConfigError`` for the first number or flag with a wrong type or range."""
    for key, (kind, minimum, example) in _NUMBERS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or (key in _PLANNED and value == "auto"):
            continue
        for item in value if key in _PER_AXIS and isinstance(value, ListConfig) else [value]:
            _check_number(key, item, kind, minimum, example)
    for key in _BOOLEANS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")


def _check_number(key: str, value: object, kind: type, minimum: float, example: str) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int and not (is_number and float(value).is_integer()):
        raise ConfigError(f"{key}={value!r} must be an integer, e.g. {example}")
    if not is_number:
        raise ConfigError(f"{key}={value!r} must be a number, e.g. {example}")
    if value < minimum or (key in _POSITIVE and value <= minimum):
        bound = ">" if key in _POSITIVE else ">="
        raise ConfigError(f"{key}={value!r} must be {bound} {minimum:g}, e.g. {example}")
    if key in _MAXIMUM and value > _MAXIMUM[key]:
        raise ConfigError(f"{key}={value!r} must be <= {_MAXIMUM[key]:g}, e.g. {example}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; ``cpu``, ``cuda``, ``cuda:N``, ``mps`` are checked."""
    spec = str(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device={spec!r} is not a device. Valid: auto, cpu, cuda, cuda:N, mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={spec!r} is not supported. Valid: auto, cpu, cuda, cuda:N, mps")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"device={spec} but CUDA is not available here; use device=auto or device=cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={spec} but this machine has {count} CUDA device(s): cuda:0..cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but Apple MPS is not available here; use device=auto or device=cpu")
    return device


OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("adam")(torch.optim.Adam)
OPTIMIZERS.register("adamw")(torch.optim.AdamW)
OPTIMIZERS.register("sgd")(torch.optim.SGD)

SCHEDULERS: Registry[type[torch.optim.lr_scheduler.LRScheduler]] = Registry("scheduler")
SCHEDULERS.register("multistep")(torch.optim.lr_scheduler.MultiStepLR)
SCHEDULERS.register("cosine")(torch.optim.lr_scheduler.CosineAnnealingLR)


def build_optimizer(cfg: Mapping, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer ``cfg["name"]`` with the other keys of ``cfg`` as its arguments."""
    cls = OPTIMIZERS.get(cfg["name"])
    args = {key: value for key, value in cfg.items() if key != "name"}
    check_arguments("optim", cls.__name__, cls, args)
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    return cls(params, **args)


def build_scheduler(
    cfg: Mapping, optimizer: torch.optim.Optimizer, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch learning-rate schedule ``cfg["name"]`` (``None`` for ``none``).

    ``multistep`` multiplies the rate by ``gamma`` after each epoch in ``milestones``;
    ``cosine`` anneals it to ``eta_min`` over ``epochs``.
    """
    name = cfg["name"]
    args = {key: value for key, value in cfg.items() if key != "name"}
    if name == "none":
        return None
    cls = SCHEDULERS.get(name)
    check_arguments("scheduler", cls.__name__, cls, args)
    if name == "cosine":
        args["T_max"] = epochs
    if "milestones" in args:
        milestones = list(args["milestones"])
        if not all(isinstance(m, int) and 1 <= m for m in milestones):
            raise ConfigError(f"scheduler.milestones={milestones} must be epoch numbers >= 1, e.g. [50,75]")
        args["milestones"] = milestones
    return cls(optimizer, **args)


# group -> option that a task needs when the composed one cannot do it (the defaults are for images)
TASK_DEFAULTS = {"registration": {"model": "localnet", "loss": "registration"}}


def with_task_defaults(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """``cfg`` with the ``TASK_DEFAULTS`` of ``data.task`` in place of config groups left at the
    images' defaults (``medimg train data.task=registration`` trains ``localnet`` with the
    ``registration`` loss). A group chosen on the command line stays, so a model that cannot do the
    task is refused by name rather than replaced."""
    from medimg_cli.models import MODELS, model_names  # they import MONAI, which the other commands do not need
    from medimg_cli.registration_losses import REGISTRATION_LOSSES

    chosen = {override.lstrip("+~").split("=")[0] for override in overrides}
    fits = {
        "model": lambda name: name in model_names() and cfg.data.task in getattr(MODELS.get(name), "TASKS", ()),
        "loss": lambda name: name in REGISTRATION_LOSSES.names(),
    }
    for group, option in TASK_DEFAULTS.get(cfg.data.get("task"), {}).items():
        if group in chosen or fits[group](cfg[group].get("name")):
            continue
        replacement = OmegaConf.load(Path(__file__).parent / "conf" / group / f"{option}.yaml")
        log.info("data.task=%s: %s=%s (choose another with %s=...)", cfg.data.task, group, option, group)
        with open_dict(cfg):
            cfg[group] = replacement
    return cfg
