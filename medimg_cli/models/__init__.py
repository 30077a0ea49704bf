"""Model registry: ``model=<name>`` builds the network registered under that name.

Every model takes the data-derived keyword arguments ``spatial_dims``, ``in_channels``,
``num_classes``, ``num_seg_classes`` and ``task`` (and ``image_size`` when its signature has
it), plus the keys of its YAML file except ``name``, ``pretrained`` and ``freeze`` (which
``medimg_cli.models.transfer`` applies after building). It returns a dict of logits:
``class_logits`` ``(B, num_classes)`` when the task classifies and ``seg_logits``
``(B, num_seg_classes, *spatial)`` when it segments; ``layer_groups()`` names its parameter
groups (encoder first, then ``head`` / ``decoder``; optional: without it the model is one group
``model``), and ``TASKS`` lists the tasks it can do. Installed packages add models through the
entry point group ``medimg.models`` (``medimg_cli/plugins.py``).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medimg_cli.data import DataInfo
from medimg_cli.errors import ConfigError, check_arguments
from medimg_cli.plugins import load_plugins
from medimg_cli.registry import Registry

MODELS: Registry[type[nn.Module]] = Registry("model")
TRANSFER_KEYS = ("pretrained", "pretrained_min_match", "freeze")  # applied to the built model, not passed to it


def _load_all() -> None:
    """Import every module of this package, so each family registers itself (no list to forget),
    and the models installed packages declare (entry point group ``medimg.models``)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    load_plugins("medimg.models", MODELS)


def model_args(cfg: Mapping, info: DataInfo) -> dict[str, Any]:
    """The full keyword arguments of a model: its config keys plus what the data determines."""
    args = {key: value for key, value in cfg.items() if key not in ("name", *TRANSFER_KEYS)}
    args.update(
        spatial_dims=info.spatial_dims,
        in_channels=info.in_channels,
        num_classes=info.num_classes,
        num_seg_classes=info.num_seg_classes,
        task=info.task,
    )
    if info.modalities > 1:  # models.fusion: how the modalities meet
        args["modalities"] = info.modalities
    _load_all()
    if "image_size" in inspect.signature(MODELS.get(cfg["name"])).parameters:
        args["image_size"] = tuple(info.image_size)
    return args


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; bad arguments raise a ``ConfigError``.

    Args:
        name: registry key, e.g. ``"cnn"``.
        **kwargs: the model's arguments (see ``model_args``); ``fusion``, ``modality_dropout`` and
            ``modalities`` wrap it in ``models.fusion.Fused`` when the images hold several modalities.
    """
    from medimg_cli.models.fusion import FUSION_KEYS, Fused, check_fusion

    _load_all()
    cls = MODELS.get(name)
    tasks = getattr(cls, "TASKS", ())
    if kwargs.get("task") not in tasks:
        raise ConfigError(f"model '{name}' cannot do data.task={kwargs.get('task')}; it supports {', '.join(tasks)}")
    fusion = {key: kwargs.pop(key) for key in FUSION_KEYS if key in kwargs}
    modalities, how, dropout = (
        fusion.get("modalities", 1),
        fusion.get("fusion", "early"),
        fusion.get("modality_dropout", 0),
    )
    check_fusion(how, dropout, modalities)
    if how == "early" and not dropout:
        return _build(cls, name, kwargs)
    channels = kwargs["in_channels"] // modalities

    def build(in_channels: int) -> nn.Module:
        return _build(cls, name, {**kwargs, "in_channels": in_channels})

    classes = (kwargs.get("num_classes", 0), kwargs.get("num_seg_classes", 0))
    return Fused(build, modalities, channels, how, dropout, classes, kwargs["task"], kwargs["spatial_dims"])


def _build(cls: type[nn.Module], name: str, kwargs: dict[str, Any]) -> nn.Module:
    check_arguments("model", f"model '{name}'", cls, kwargs)
    try:
        return cls(**kwargs)
    except ConfigError:  # the model's own one-line reason
        raise
    except (TypeError, ValueError, AssertionError) as error:
        raise ConfigError(f"model '{name}' cannot be built from {kwargs}: {error}") from error


def model_names() -> list[str]:
    """All registered model names."""
    _load_all()
    return MODELS.names()


def check_model_runs(model: nn.Module, name: str, images: torch.Tensor) -> None:
    """Run one training-mode forward pass so that shape problems fail now, with one line.

    The model's weights, buffers (batch-norm statistics) and the RNG states are left as they were.

    Args:
        model: the built model, on the training device.
        name: its registry name, for the message.
        images: a few samples ``(B, C, *spatial)`` with ``B >= 2``.
    """
    state = copy.deepcopy(model.state_dict())
    devices = [images.device] if images.device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            model.train()
            model(images)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ConfigError(f"model '{name}' cannot run on images of shape {tuple(images.shape[1:])}: {reason}") from None
    finally:
        model.load_state_dict(state)
