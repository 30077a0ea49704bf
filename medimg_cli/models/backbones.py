"""ImageNet backbones: ``resnet18``, ``resnet50``, ``densenet121``, ``efficientnet_b0``.

2D networks are torchvision's (so ``model.pretrained=imagenet`` loads torchvision's weights);
3D networks are MONAI's counterparts (``monai.networks.nets.resnet18/50``, ``DenseNet121``,
``EfficientNetBN``). The network lives in ``self.backbone`` with its own parameter names, its
ImageNet classifier removed, and is run as five stages (stem + four), each halving the
resolution at least once:

    image (B, C, *S) -> stem (B, c0, *S/4) -> stage1 ... stage4 (B, c4, *S/32)

``stem=cifar`` replaces the stride-2 stem (and its max pooling) by a stride-1 3x3
convolution, as the MedMNIST benchmark does for 28-pixel images; resolution then ends at S/8
(S/16 for efficientnet_b0, which has no stem pooling; not available for its 3D version).
With the standard stem, densenet121 needs at least 32 pixels per side.
Classification: global average pooling, dropout, linear on stage4. Masks: the light decoder
(``medimg_cli.models.heads.LightDecoder``) over all five stages.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks import nets as monai_nets
from monai.networks.layers import Conv
from torch import nn

from medimg_cli.models import MODELS
from medimg_cli.models.heads import ClassificationHead, LightDecoder, task_groups

STEMS = ("standard", "cifar")


def _resnet(arch: str) -> Callable[[int, int, bool], tuple[nn.Module, list[list[str]], list[int]]]:
    def build(spatial_dims: int, in_channels: int, cifar: bool) -> tuple[nn.Module, list[list[str]], list[int]]:
        if spatial_dims == 2:
            import torchvision

            net = torchvision.models.get_model(arch, weights=None)
            net.conv1 = _conv(2, in_channels, 64, 3 if cifar else 7, 1 if cifar else 2)
            act = "relu"
        else:
            net = getattr(monai_nets, arch)(
                spatial_dims=3,
                n_input_channels=in_channels,
                conv1_t_size=3 if cifar else 7,
                conv1_t_stride=1 if cifar else 2,
                feed_forward=False,
            )
            act = "act"
        if cifar:
            net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        expansion = 4 if arch == "resnet50" else 1
        stages = [["conv1", "bn1", act, "maxpool"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
        return net, stages, [64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]

    return build


def _densenet121(spatial_dims: int, in_channels: int, cifar: bool) -> tuple[nn.Module, list[list[str]], list[int]]:
    if spatial_dims == 2:
        import torchvision

        net = torchvision.models.densenet121(weights=None)
        net.classifier = nn.Identity()
    else:
        net = monai_nets.DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=1)
        net.class_layers = nn.Identity()
    net.features.conv0 = _conv(spatial_dims, in_channels, 64, 3 if cifar else 7, 1 if cifar else 2)
    if cifar:
        net.features.pool0 = nn.Identity()
    net.features.add_module("relu5", nn.ReLU())  # applied after norm5 in both libraries' forward
    f = "features."
    stages = [
        [f + "conv0", f + "norm0", f + "relu0", f + "pool0"],
        [f + "denseblock1", f + "transition1"],
        [f + "denseblock2", f + "transition2"],
        [f + "denseblock3", f + "transition3"],
        [f + "denseblock4", f + "norm5", f + "relu5"],
    ]
    return net, stages, [64, 128, 256, 512, 1024]


def _efficientnet_b0(spatial_dims: int, in_channels: int, cifar: bool) -> tuple[nn.Module, list[list[str]], list[int]]:
    if spatial_dims == 2:
        import torchvision

        net = torchvision.models.efficientnet_b0(weights=None)
        net.classifier = nn.Identity()
        net.features[0][0] = _conv(2, in_channels, 32, 3, 1 if cifar else 2)
        stages = [["features.0"], ["features.1", "features.2"], ["features.3"], ["features.4", "features.5"]]
        stages.append(["features.6", "features.7", "features.8"])
        return net, stages, [32, 24, 40, 112, 1280]
    if cifar:  # MONAI pads every block for the sizes a stride-2 stem gives; a stride-1 stem breaks that
        raise ValueError("model.stem=cifar is not available for the 3D efficientnet_b0; use model.stem=standard")
    net = monai_nets.EfficientNetBN(
        "efficientnet-b0", pretrained=False, spatial_dims=3, in_channels=in_channels, num_classes=1
    )
    net._fc = nn.Identity()
    stages = [["_conv_stem_padding", "_conv_stem", "_bn0", "_swish"], ["_blocks.0", "_blocks.1"], ["_blocks.2"]]
    stages += [
        ["_blocks.3", "_blocks.4"],
        ["_blocks.5", "_blocks.6", "_conv_head_padding", "_conv_head", "_bn1", "_swish"],
    ]
    return net, stages, [32, 24, 40, 112, 1280]


def _conv(spatial_dims: int, in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Module:
    conv = Conv[Conv.CONV, spatial_dims]
    return conv(in_channels, out_channels, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False)


class Backbone(nn.Module):
    """A torchvision (2D) or MONAI (3D) ImageNet architecture with medimg's task heads.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (the first convolution is built for them).
        num_classes: image-level classes.
        num_seg_classes: mask classes including background.
        task: ``classification``, ``segmentation`` or ``multitask``.
        stem: ``standard`` (ImageNet stride-2 stem) or ``cifar`` (stride 1, for 28-64 pixels).
        dropout: dropout before the linear layer.
        decoder_channels: width of the light mask decoder.
    """

    TASKS = ("classification", "segmentation", "multitask")
    PRETRAINED_PREFIX = "backbone."  # torchvision's parameter names live under self.backbone
    IMAGENET: str  # torchvision architecture name
    BUILD: Callable[[int, int, bool], tuple[nn.Module, list[list[str]], list[int]]]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        stem: str = "standard",
        dropout: float = 0.2,
        decoder_channels: int = 32,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"model.stem={stem!r} must be one of {', '.join(STEMS)}")
        self.task = task
        self.backbone, self.stages, channels = type(self).BUILD(spatial_dims, in_channels, stem == "cifar")
        # the stage modules, resolved once; a plain list, so they stay registered under backbone only
        self._stage_modules = [[self.backbone.get_submodule(path) for path in paths] for paths in self.stages]
        self.head = ClassificationHead(channels[-1], num_classes, dropout) if task != "segmentation" else None
        self.decoder = (
            LightDecoder(spatial_dims, channels, num_seg_classes, decoder_channels)
            if task != "classification"
            else None
        )

    def layer_groups(self) -> dict[str, list[str]]:
        """``stem``, ``stage1``..``stage4`` of the backbone, then ``head`` / ``decoder``."""
        names = ["stem", "stage1", "stage2", "stage3", "stage4"]
        groups = {name: [f"backbone.{path}" for path in paths] for name, paths in zip(names, self.stages, strict=True)}
        return groups | task_groups(self)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` image -> dict of logits (see ``medimg_cli.models``)."""
        features, x = [], image
        for modules in self._stage_modules:
            for module in modules:
                x = module(x)
            features.append(x)
        out = {}
        if self.head is not None:
            out["class_logits"] = self.head(x)
        if self.decoder is not None:
            out["seg_logits"] = self.decoder(features, image.shape[2:])
        return out


def _register(name: str, build: Callable[[int, int, bool], tuple[nn.Module, list[list[str]], list[int]]]) -> None:
    cls = type(name, (Backbone,), {"IMAGENET": name, "BUILD": staticmethod(build), "__doc__": Backbone.__doc__})
    MODELS.register(name)(cls)


_register("resnet18", _resnet("resnet18"))
_register("resnet50", _resnet("resnet50"))
_register("densenet121", _densenet121)
_register("efficientnet_b0", _efficientnet_b0)
