"""``padim``: a feature-statistics anomaly detector (PaDiM, Defard et al. 2021), in 2D or 3D.

A frozen encoder describes every position of an image by its features at a few depths; the
training images (normal only) give each position a Gaussian (mean and covariance of a fixed
random subset of the feature channels). An image's anomaly map is the Mahalanobis distance of
its features from that Gaussian, position by position, upsampled to the image; its score is
the map's maximum. Nothing is optimised: the training passes only add to the statistics (the
train loss column is 0), so one epoch fits the model and more epochs of the same images give
the same Gaussians.

The encoder needs no download: ``encoder: autoencoder`` takes the encoder of a medimg
autoencoder trained on the same normal images (``model.pretrained=<its best.pt>``), ``resnet18``
torchvision's ResNet-18 (2D; ``model.pretrained=imagenet`` from the local torch hub cache).
The statistics are written by hand: anomalib's PaDiM needs Lightning and its own data modules.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from medimg_cli.errors import ConfigError
from medimg_cli.models import MODELS
from medimg_cli.models.anomaly import ConvAutoencoder

log = logging.getLogger(__name__)
ENCODERS = ("autoencoder", "resnet18")


@MODELS.register("padim")
class Padim(nn.Module):
    """PaDiM on a frozen encoder (see the module docstring).

    Args:
        encoder: ``autoencoder`` (with ``channels`` and ``latent_size`` of the autoencoder whose
            weights ``model.pretrained`` loads) or ``resnet18``.
        features: channels kept at random (seeded) from the concatenated depths (PaDiM: 100).
        epsilon: added to the covariance's diagonal so it can be inverted (PaDiM: 0.01).
    """

    TASKS = ("anomaly",)
    FITTED = True  # statistics, fitted in training-mode passes: no optimizer
    PRETRAINED_PREFIX = "encoder."

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        image_size: Sequence[int],
        encoder: str = "autoencoder",
        channels: Sequence[int] = (32, 64, 128),
        latent_size: int = 128,
        features: int = 100,
        epsilon: float = 0.01,
    ) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ConfigError(f"model.encoder={encoder!r}: choose one of {', '.join(ENCODERS)}")
        self.image_size, self.epsilon = tuple(image_size), epsilon
        if encoder == "resnet18":
            if spatial_dims != 2:
                raise ConfigError("model.encoder=resnet18 is 2D; use model.encoder=autoencoder for volumes")
            self.encoder, self.IMAGENET = torchvision.models.resnet18(), "resnet18"
            self.encoder.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.stages = [self.encoder.layer1, self.encoder.layer2, self.encoder.layer3]
        else:
            self.encoder = ConvAutoencoder(
                spatial_dims, in_channels, num_classes, num_seg_classes, task, image_size, channels, latent_size
            )
            self.stages = list(self.encoder.net.encode)
        self.encoder.requires_grad_(False)
        with torch.no_grad():
            found = self._features(torch.zeros(1, in_channels, *image_size))
        self.grid = tuple(found[0].shape[2:])  # the first stage's positions
        width = sum(f.shape[1] for f in found)
        kept = min(features, width)
        chosen = torch.randperm(width, generator=torch.Generator().manual_seed(0))[:kept].sort().values
        positions = math.prod(self.grid)
        self.register_buffer("chosen", chosen)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("total", torch.zeros(positions, kept, dtype=torch.float64))
        self.register_buffer("outer", torch.zeros(positions, kept, kept, dtype=torch.float64))
        # derived from the sums when the model turns to evaluation or is loaded (not saved)
        self.register_buffer("mean", torch.zeros(positions, kept), persistent=False)
        eye = torch.eye(kept).expand(positions, -1, -1).clone()
        self.register_buffer("precision", eye, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: module._finalise())

    def layer_groups(self) -> dict[str, list[str]]:
        return {"encoder": ["encoder"]}

    def train(self, mode: bool = True) -> Padim:
        super().train(mode)
        self.encoder.eval()  # frozen: batch-norm statistics stay those it was trained with
        if not mode:
            self._finalise()
        return self

    def _features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The stages' outputs, the first stage's grid first."""
        found = []
        x = image
        if isinstance(self.encoder, ConvAutoencoder):
            x = self.encoder._pad(x)
        else:
            x = self.encoder.maxpool(self.encoder.relu(self.encoder.bn1(self.encoder.conv1(x))))
        for stage in self.stages:
            x = stage(x)
            found.append(x)
        return found

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` images -> ``(B, positions, features)`` embeddings."""
        found = self._features(image)
        mode = "bilinear" if image.dim() == 4 else "trilinear"
        joined = torch.cat([found[0]] + [F.interpolate(f, size=self.grid, mode=mode) for f in found[1:]], dim=1)
        return joined[:, self.chosen].flatten(2).transpose(1, 2)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training mode: add the images to the statistics. Returns the outputs of
        ``models.anomaly`` (``sample_loss`` the Mahalanobis score, 0 while fitting)."""
        with torch.no_grad():
            embedded = self.embed(image.float())
            if self.training:  # sums in float64: many images, large squares
                wide = embedded.double()
                self.count += embedded.shape[0]
                self.total += wide.sum(dim=0)
                self.outer += torch.einsum("bpi,bpj->pij", wide, wide)
                zero = torch.zeros(image.shape[0], device=image.device)
                return {"anomaly_map": torch.zeros_like(image[:, :1]), "anomaly_score": zero, "sample_loss": zero}
            distance = self.distances(embedded)
        mode = "bilinear" if image.dim() == 4 else "trilinear"
        maps = F.interpolate(distance.view(image.shape[0], 1, *self.grid), size=image.shape[2:], mode=mode)
        score = maps.flatten(1).amax(dim=1)
        return {"anomaly_map": maps, "anomaly_score": score, "sample_loss": score}

    def distances(self, embedded: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distances ``(B, positions)`` of ``embed``'s ``(B, positions, features)``."""
        centred = embedded - self.mean
        return torch.einsum("bpi,pij,bpj->bp", centred, self.precision, centred).clamp(min=0).sqrt()

    @torch.no_grad()
    def _finalise(self) -> None:
        """The mean and inverse covariance of each position from the sums (N(0, I) before the first
        training pass, which only counting FLOPs evaluates)."""
        if self.count == 0:
            self.mean.zero_()
            self.precision.copy_(torch.eye(self.mean.shape[1], dtype=self.mean.dtype).expand_as(self.precision))
            return
        mean = self.total / self.count
        covariance = self.outer / self.count - torch.einsum("pi,pj->pij", mean, mean)
        covariance += self.epsilon * torch.eye(mean.shape[1], dtype=mean.dtype, device=mean.device)
        self.mean.copy_(mean.float())
        self.precision.copy_(torch.linalg.inv(covariance).float())
