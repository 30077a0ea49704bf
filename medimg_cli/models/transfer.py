"""Transfer learning: pretrained weights, frozen layer groups and the seed-001 Table 2 summary.

Every model names its layer groups with ``layer_groups()``: an ordered dict of group name ->
parameter-name prefixes (module paths), encoder groups first, then the task parts ``head`` and
``decoder``, which are always new and randomly initialised. Every parameter is in exactly one
group.

- ``model.pretrained=imagenet`` loads torchvision's ImageNet weights (2D backbones only) through
  the torch hub cache (``$TORCH_HOME/hub/checkpoints``); ``model.pretrained=/path/file.pth``
  loads a local state dict: a torchvision-style one, or a medimg checkpoint's ``state_dict``.
  Tensors are matched by name (with the model's ``PRETRAINED_PREFIX`` tried too) and shape; a
  first convolution with another number of input channels is adapted (see
  ``adapt_in_channels``); everything else that does not fit is skipped and reported.
- ``model.freeze=none|backbone|backbone_but_last|[group, ...]`` stops gradients for whole
  groups; frozen groups also stay in inference mode (batch-norm statistics and dropout fixed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from medimg_cli.errors import ConfigError, unknown_choice
from medimg_cli.fileio import load_tensors

log = logging.getLogger(__name__)
HEAD_GROUPS = ("head", "decoder")
FREEZE_CHOICES = ("none", "backbone", "backbone_but_last")


def group_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Group name -> its ``(name, parameter)`` pairs, in the order of ``model.layer_groups()``."""
    groups = layer_groups(model)
    out: dict[str, list[tuple[str, nn.Parameter]]] = {group: [] for group in groups}
    for name, parameter in model.named_parameters():
        owners = [g for g, prefixes in groups.items() if any(_owns(p, name) for p in prefixes)]
        if len(owners) != 1:
            where = "no layer group" if not owners else f"{len(owners)} layer groups ({', '.join(owners)})"
            raise ConfigError(
                f"{type(model).__name__}.layer_groups() puts parameter {name} in {where}; each must be in exactly "
                "one: list its module's name (a prefix of the parameter's) in one group, or drop layer_groups()"
            )
        out[owners[0]].append((name, parameter))
    return out


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """The model's ``layer_groups()``, or one group ``model`` holding everything when it has none."""
    return model.layer_groups() if hasattr(model, "layer_groups") else {"model": [""]}


def _owns(prefix: str, name: str) -> bool:
    """Whether the module path ``prefix`` ("" for the whole model) holds the parameter ``name``."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def adapt_in_channels(weight: torch.Tensor, shape: Sequence[int]) -> torch.Tensor | None:
    """Fit a pretrained convolution ``(O, 3, *k)`` to ``shape`` ``(O, C, *k)``, or ``None``.

    One input channel gets the sum of the RGB filters, so a grey image gives the response the
    RGB network gives to that image copied into R, G and B. Other channel counts repeat the RGB
    filters cyclically, scaled by ``3 / C`` to keep the activation scale (as timm does).
    """
    if weight.dim() < 3 or weight.dim() != len(shape) or weight.shape[0] != shape[0] or weight.shape[2:] != shape[2:]:
        return None
    channels = shape[1]
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(channels) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / channels)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str, min_match: float = 0.5) -> set[str]:
    """Copy the tensors of ``state`` that fit ``model``; returns the model keys that were loaded.

    Args:
        model: the freshly built model.
        state: name -> tensor, e.g. a torchvision ``state_dict``.
        origin: where ``state`` came from, for messages.
        min_match: the smallest share of the model's tensors that must be loaded
            (``model.pretrained_min_match``): a file of another architecture that happens to share
            a few layer names would otherwise leave the model mostly random without a word.
    """
    own = model.state_dict()
    prefix = getattr(model, "PRETRAINED_PREFIX", "")
    loaded: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state.items():
        name = key.removeprefix("module.")  # saved from DataParallel / DDP
        target = next((k for k in (name, prefix + name) if k in own), None)
        if target is None or not isinstance(value, torch.Tensor):
            skipped.append(f"{key} (not in the model)")
            continue
        if value.shape != own[target].shape:
            adapted = adapt_in_channels(value, own[target].shape)
            if adapted is None:
                skipped.append(f"{key} (shape {tuple(value.shape)}, model {tuple(own[target].shape)})")
                continue
            log.info("adapted %s from %d to %d input channels", key, value.shape[1], own[target].shape[1])
            value = adapted
        loaded[target] = value.to(own[target].dtype)
    if not loaded:
        raise ConfigError(
            f"model.pretrained: none of the {len(state)} tensors in {origin} fit model "
            f"{type(model).__name__} (first: {next(iter(state), 'none')}); is it the same architecture?"
        )
    if len(loaded) < min_match * len(own):
        raise ConfigError(
            f"model.pretrained: only {len(loaded)} of the model's {len(own)} tensors fit {origin} "
            f"({len(loaded) / len(own):.0%} < model.pretrained_min_match={min_match}); is it the same architecture? "
            "Lower model.pretrained_min_match to load it anyway"
        )
    model.load_state_dict(loaded, strict=False)
    log.info("loaded %d of %d tensors from %s", len(loaded), len(own), origin)
    if skipped:
        log.info(
            "not loaded: %s", ", ".join(skipped[:8]) + (f" and {len(skipped) - 8} more" if len(skipped) > 8 else "")
        )
    return set(loaded)


def load_pretrained(model: nn.Module, name: str, spec: Any, spatial_dims: int, min_match: float = 0.5) -> set[str]:
    """Apply ``model.pretrained``: ``none``, ``imagenet`` or a path; returns the loaded keys."""
    if spec is None or spec == "none":
        return set()
    if spec == "imagenet":
        return load_state(
            model, imagenet_state_dict(model, name, spatial_dims), f"torchvision's ImageNet {name}", min_match
        )
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.pretrained={spec}: no such file; give none, imagenet or a .pth state dict")
    payload = load_tensors(path, f"model.pretrained={spec}")
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"model.pretrained={spec}: holds a {type(payload).__name__}, not a state dict")
    return load_state(model, state, str(path), min_match)


def imagenet_state_dict(model: nn.Module, name: str, spatial_dims: int) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``model.IMAGENET`` (downloaded once into the hub cache)."""
    import torchvision

    arch = getattr(model, "IMAGENET", None)
    if arch is None:
        raise ConfigError(
            f"model '{name}' has no ImageNet weights; use model.pretrained=none or a local file, "
            "or a torchvision backbone (resnet18, resnet50, densenet121, efficientnet_b0)"
        )
    if spatial_dims != 2:
        raise ConfigError(
            f"model.pretrained=imagenet: ImageNet weights are 2D and this is a 3D {name}; "
            "give a 3D state dict as model.pretrained=/path/file.pth, or model.pretrained=none"
        )
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return torchvision.models.get_model(arch, weights=weights).state_dict()
    except (OSError, RuntimeError) as error:
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        raise ConfigError(
            f"model.pretrained=imagenet: cannot get {weights.url} ({str(error).splitlines()[0]}). "
            f"Offline, copy that file to {target}"
        ) from None


def freeze(model: nn.Module, spec: Any) -> list[str]:
    """Freeze the layer groups that ``model.freeze`` names; returns them.

    ``backbone`` is every group but ``head`` and ``decoder``; ``backbone_but_last`` leaves the
    deepest encoder group trainable too. Frozen modules are kept in eval mode by a forward
    pre-hook, so ``model.train()`` does not update their batch-norm statistics.
    """
    groups = list(layer_groups(model))
    encoder = [g for g in groups if g not in HEAD_GROUPS]
    if spec is None or spec == "none":
        return []
    if spec == "backbone":
        chosen = encoder
    elif spec == "backbone_but_last":
        chosen = encoder[:-1]
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        chosen = list(spec)
        for group in chosen:
            if group not in groups:
                raise unknown_choice("model.freeze group", group, groups)
    else:
        raise unknown_choice("model.freeze", spec, [*FREEZE_CHOICES, "[group, ...]"])
    parameters = group_parameters(model)
    for group in chosen:
        for _, parameter in parameters[group]:
            parameter.requires_grad_(False)
        for prefix in layer_groups(model)[group]:
            module = _submodule(model, prefix)
            if module is not None:
                module.register_forward_pre_hook(_keep_eval)
    return chosen


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:  # a bare parameter such as a position embedding
        return None


def _keep_eval(module: nn.Module, _inputs: Any) -> None:
    if module.training:
        module.eval()


def transfer_rows(model: nn.Module, loaded: set[str], frozen: Sequence[str]) -> list[dict[str, Any]]:
    """One row per layer group: pretrained (yes / partly / no), frozen, parameters, trained."""
    rows = []
    for group, parameters in group_parameters(model).items():
        total = sum(p.numel() for _, p in parameters)
        from_file = sum(p.numel() for n, p in parameters if n in loaded)
        trained = sum(p.numel() for _, p in parameters if p.requires_grad)
        pretrained = "no" if from_file == 0 else "yes" if from_file == total else "partly"
        rows.append(
            {
                "group": group,
                "pretrained": pretrained,
                "frozen": group in frozen,
                "parameters": total,
                "trained": trained,
            }
        )
    return rows


def forward_flops(model: nn.Module, in_channels: int, image_size: Sequence[int], device: torch.device) -> int:
    """Forward FLOPs for one image (a multiply-add counts 2), from torch's ``FlopCounterMode``.

    Convolutions, matrix products and attention are counted; element-wise operations
    (normalisation, activations) are not, as in fvcore and the papers' tables.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    image = torch.zeros(1, in_channels, *image_size, device=device)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def layer_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the seed-001 Table 2 layout for ``transfer_rows``, with a total row."""
    headers = ["layer group", "pretrained weights", "fine-tuning", "parameters", "parameters trained"]
    body = []
    for row in rows:
        approach = "frozen" if row["frozen"] else "updated" if row["pretrained"] != "no" else "trained from random init"
        body.append([row["group"], row["pretrained"], approach, f"{row['parameters']:,}", f"{row['trained']:,}"])
    total, trained = sum(r["parameters"] for r in rows), sum(r["trained"] for r in rows)
    body.append(["total", "", "", f"{total:,}", f"{trained:,}"])
    return headers, body
