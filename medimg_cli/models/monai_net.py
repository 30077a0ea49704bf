"""``monai``: any network of ``monai.networks.nets`` by class name, without editing medimg.

    medimg train model=monai model.net=SegResNet data.task=segmentation
    medimg train model=monai model.net=DenseNet121 data.task=classification 'model.args={init_features: 32}'

``model.args`` are the network's own arguments; the data fill the ones MONAI's networks name
alike: ``spatial_dims``, ``in_channels`` (``n_input_channels``), ``out_channels`` (or
``num_classes``: the classes, or the mask classes when segmenting) and ``img_size``. The network's
output must be the task's logits, ``(B, classes)`` or ``(B, mask classes, *spatial)`` (the first
of a tuple, as ViT and deep-supervision networks return); one dry run on a zero image checks it
when the model is built, so a network that cannot do the task is refused in one line. Only
``monai.networks.nets`` is looked in: a config names a class, it never imports a module.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import monai.networks.nets
import torch
from torch import nn

from medimg_cli.errors import ConfigError
from medimg_cli.models import MODELS

FILLED = {  # MONAI's argument names -> what the data give
    "spatial_dims": "spatial_dims",
    "in_channels": "in_channels",
    "n_input_channels": "in_channels",
    "out_channels": "outputs",
    "num_classes": "outputs",
    "img_size": "image_size",
}


def network_class(name: str) -> type[nn.Module]:
    """The class ``name`` of ``monai.networks.nets``, or a ``ConfigError`` listing a few."""
    found = getattr(monai.networks.nets, str(name), None)
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        known = sorted(n for n in dir(monai.networks.nets) if n[0].isupper())
        raise ConfigError(
            f"model.net={name!r} is not a network of monai.networks.nets (e.g. {', '.join(known[:12])}, ...)"
        )
    return found


@MODELS.register("monai")
class MonaiNet(nn.Module):
    """A MONAI network that classifies or segments (see the module docstring).

    Args:
        net: the class name in ``monai.networks.nets``, e.g. ``SegResNet``.
        args: its other keyword arguments.
    """

    TASKS = ("classification", "segmentation")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        image_size: Sequence[int],
        net: str = "DenseNet121",
        args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.key = "class_logits" if task == "classification" else "seg_logits"
        outputs = num_classes if task == "classification" else num_seg_classes
        given = {"spatial_dims": spatial_dims, "in_channels": in_channels, "outputs": outputs}
        given["image_size"] = tuple(image_size)
        cls = network_class(net)
        parameters = inspect.signature(cls).parameters
        filled = {name: given[source] for name, source in FILLED.items() if name in parameters}
        if not {"out_channels", "num_classes"} & set(filled):
            raise ConfigError(
                f"model.net={net} has no out_channels or num_classes argument, so its outputs cannot be set "
                f"for data.task={task}"
            )
        try:
            self.net = cls(**{**filled, **dict(args or {})})
        except (TypeError, ValueError, AssertionError) as error:
            raise ConfigError(f"model.net={net} cannot be built from model.args={dict(args or {})}: {error}") from None
        expected = (outputs,) if task == "classification" else (outputs, *image_size)
        self._check(net, task, torch.zeros(2, in_channels, *image_size), expected)

    def _check(self, net: str, task: str, image: torch.Tensor, expected: tuple[int, ...]) -> None:
        """Refuse a network whose output is not the task's logits, leaving its weights as they were."""
        state = {k: v.clone() for k, v in self.state_dict().items()}
        try:
            with torch.no_grad(), torch.random.fork_rng():
                shape = tuple(self.eval()(image)[self.key].shape[1:])
        except RuntimeError as error:
            raise ConfigError(f"model.net={net} cannot run on images {tuple(image.shape[1:])}: {error}") from None
        finally:
            self.load_state_dict(state)
            self.train()
        if shape != expected:
            raise ConfigError(
                f"model.net={net} gives outputs of shape {shape} where data.task={task} needs {expected}; "
                "pick a network (or model.args) for this task"
            )

    def layer_groups(self) -> dict[str, list[str]]:
        return {"network": ["net"]}  # one group: MONAI's networks name their parts each their own way

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(image)
        return {self.key: out[0] if isinstance(out, (tuple, list)) else out}
