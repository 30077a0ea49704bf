"""Anomaly detectors that learn to reconstruct normal images (``data.task=anomaly``).

Trained on normal images only, a reconstruction model reproduces normal anatomy and fails on
what it never saw; the per-pixel squared error is the anomaly map and its mean the image's
anomaly score (the reconstruction methods of the MedIAnomaly benchmark, Cai et al. 2025).
Every model returns:

- ``reconstruction`` ``(B, C, *spatial)``;
- ``anomaly_map`` ``(B, 1, *spatial)``: squared error averaged over channels, in intensity units squared;
- ``anomaly_score`` ``(B,)``: the map's mean;
- ``sample_loss`` ``(B,)``: the method's training objective per image (``losses.TaskLoss``
  averages it over normal images).

The networks are MONAI's (``AutoEncoder``, ``VarAutoEncoder``, ``TransformerBlock``); the
memory module of Gong et al. (2019) has no library implementation and is written here.
Images are padded (replicating the edge) to a multiple of the encoder's total stride and the
outputs cropped back, so any size works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from monai.networks.nets import AutoEncoder, VarAutoEncoder
from torch import nn

from medimg_cli.models import MODELS


class Reconstructor(nn.Module):
    """What every reconstruction detector shares: padding, the noise of denoising training, the outputs.

    Args:
        image_size: the spatial size of the images; depth: the number of stride-2 stages.
        noise_std: standard deviation of the coarse Gaussian noise added to training inputs (a
            denoising autoencoder, Kascenas et al. 2022); 0: a plain autoencoder.
    """

    TASKS = ("anomaly",)

    def __init__(self, image_size: Sequence[int], depth: int, noise_std: float = 0.0) -> None:
        super().__init__()
        self.multiple = 2**depth
        self.padded = tuple(math.ceil(s / self.multiple) * self.multiple for s in image_size)
        self.grid = tuple(s // self.multiple for s in self.padded)  # the bottleneck's spatial size
        self.noise_std = noise_std

    def _pad(self, image: torch.Tensor) -> torch.Tensor:
        extra = [p - s for p, s in zip(self.padded, image.shape[2:], strict=True)]
        if not any(extra):
            return image
        return F.pad(image, [pad for e in reversed(extra) for pad in (0, e)], mode="replicate")

    def _noisy(self, image: torch.Tensor) -> torch.Tensor:
        """Training inputs with coarse noise (drawn at 1/8 resolution, upsampled): it hides
        lesion-sized structures, which the network learns to replace with normal tissue."""
        if not self.training or self.noise_std == 0:
            return image
        coarse = [max(1, s // 8) for s in image.shape[2:]]
        noise = torch.randn(image.shape[0], image.shape[1], *coarse, device=image.device, dtype=image.dtype)
        mode = "bilinear" if image.dim() == 4 else "trilinear"
        return image + self.noise_std * F.interpolate(noise, size=image.shape[2:], mode=mode, align_corners=False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` images -> the outputs of the module docstring."""
        padded = self._pad(image)
        reconstruction, extra = self.reconstruct(self._noisy(padded))
        reconstruction = reconstruction[(..., *(slice(0, s) for s in image.shape[2:]))]
        error = (image.float() - reconstruction.float()).pow(2).mean(dim=1, keepdim=True)
        score = error.flatten(1).mean(dim=1)
        return {
            "reconstruction": reconstruction,
            "anomaly_map": error,
            "anomaly_score": score,
            "sample_loss": score if extra is None else score + extra.float(),
        }

    def reconstruct(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, C, *padded)`` -> its reconstruction and an extra per-sample loss ``(B,)`` or ``None``."""
        raise NotImplementedError


def stages(spatial_dims: int, in_channels: int, channels: Sequence[int]) -> AutoEncoder:
    """MONAI's convolutional encoder (``encode``: stride-2 stages of ``channels``) and mirrored
    decoder (``decode``), residual units with batch norm; the output has ``in_channels``."""
    return AutoEncoder(
        spatial_dims, in_channels, in_channels, channels, (2,) * len(channels), num_res_units=1, norm="batch"
    )


class Memory(nn.Module):
    """Memory module of MemAE (Gong et al. 2019): a latent code is replaced by a sparse
    attention-weighted sum of ``slots`` learned normal prototypes, so an abnormal code can only
    be rebuilt from normal parts.

    Args:
        slots: number of prototypes; size: the latent size; shrink: the hard-shrinkage threshold
            on the attention weights (Gong et al.: 1 / slots to 3 / slots).
    """

    def __init__(self, slots: int, size: int, shrink: float) -> None:
        super().__init__()
        self.items = nn.Parameter(torch.randn(slots, size) / math.sqrt(size))
        self.shrink = shrink

    def forward(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, size)`` codes -> the rebuilt codes ``(B, size)`` and the attention entropy ``(B,)``."""
        weights = (code @ self.items.t()).softmax(dim=1)
        if self.shrink > 0:  # continuous hard shrinkage, eq. 7 of Gong et al.
            weights = F.relu(weights - self.shrink) * weights / ((weights - self.shrink).abs() + 1e-12)
            weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
        entropy = -(weights * (weights + 1e-12).log()).sum(dim=1)
        return weights @ self.items, entropy


# one network, three methods; each name keeps its defaults in conf/model/<name>.yaml and its row in tables
@MODELS.register("autoencoder")
@MODELS.register("memae")
@MODELS.register("denoising_autoencoder")
class ConvAutoencoder(Reconstructor):
    """A convolutional autoencoder with a dense latent code (MONAI ``AutoEncoder`` stages), in 2D or 3D;
    ``memory_slots > 0`` makes it a memory-augmented autoencoder, ``noise_std > 0`` a denoising one.

    Args:
        channels: channels of the stride-2 encoder stages (mirrored by the decoder).
        latent_size: length of the code between encoder and decoder.
        memory_slots, shrink, entropy_weight: the memory (``Memory``) and the weight of its
            attention entropy in the loss (Gong et al.: 0.0002).
        noise_std: see ``Reconstructor``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        image_size: Sequence[int],
        channels: Sequence[int] = (32, 64, 128),
        latent_size: int = 128,
        memory_slots: int = 0,
        shrink: float = 0.0025,
        entropy_weight: float = 0.0002,
        noise_std: float = 0.0,
    ) -> None:
        super().__init__(image_size, len(channels), noise_std)
        self.net = stages(spatial_dims, in_channels, channels)
        flat = channels[-1] * math.prod(self.grid)
        self.encode_latent, self.decode_latent = nn.Linear(flat, latent_size), nn.Linear(latent_size, flat)
        self.memory = Memory(memory_slots, latent_size, shrink) if memory_slots else None
        self.entropy_weight = entropy_weight

    def layer_groups(self) -> dict[str, list[str]]:
        groups = {"encoder": ["net.encode"], "latent": ["encode_latent", "decode_latent"]}
        return groups | ({"memory": ["memory"]} if self.memory else {}) | {"decoder": ["net.decode"]}

    def reconstruct(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.net.encode(image)
        code, extra = self.encode_latent(features.flatten(1)), None
        if self.memory is not None:
            code, entropy = self.memory(code)
            extra = self.entropy_weight * entropy
        features = self.decode_latent(code).view_as(features)
        return self.net.decode(features), extra


@MODELS.register("vae")
class VariationalAutoencoder(Reconstructor):
    """MONAI's ``VarAutoEncoder``: reconstruction error plus ``kl_weight`` x the KL divergence of
    the code from N(0, I) per pixel; at evaluation the code is the posterior mean.

    Args:
        channels, latent_size: as ``ConvAutoencoder``.
        kl_weight: weight of the KL term (summed over the code, divided by the pixel count).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        image_size: Sequence[int],
        channels: Sequence[int] = (32, 64, 128),
        latent_size: int = 128,
        kl_weight: float = 0.01,
        noise_std: float = 0.0,
    ) -> None:
        super().__init__(image_size, len(channels), noise_std)
        self.net = VarAutoEncoder(
            spatial_dims, (in_channels, *self.padded), in_channels, latent_size, channels, (2,) * len(channels),
            num_res_units=1, norm="batch", use_sigmoid=False, use_mean_at_inference=True,
        )  # fmt: skip
        self.kl_weight, self.pixels = kl_weight, in_channels * math.prod(self.padded)

    def layer_groups(self) -> dict[str, list[str]]:
        return {
            "encoder": ["net.encode", "net.intermediate"],
            "latent": ["net.mu", "net.logvar", "net.decodeL"],
            "decoder": ["net.decode"],
        }

    def reconstruct(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # MONAI's encode_forward views the features flat, which a channels-last tensor refuses
        flat = self.net.intermediate(self.net.encode(image)).reshape(image.shape[0], -1)
        mu, logvar = self.net.mu(flat), self.net.logvar(flat)
        reconstruction = self.net.decode_forward(self.net.reparameterize(mu, logvar), use_sigmoid=False)
        mu, logvar = mu.float(), logvar.float()
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
        return reconstruction, self.kl_weight * kl / self.pixels


@MODELS.register("hybrid_autoencoder")
class HybridAutoencoder(Reconstructor):
    """The hybrid CNN-attention design as an autoencoder: convolutional encoder and decoder (MONAI
    ``AutoEncoder`` stages) with ``depth`` transformer blocks over the bottleneck's positions, narrowed
    to ``hidden_size`` channels per position so that the network cannot pass the image through.

    Args:
        channels: the encoder stages; hidden_size, num_heads, depth: the attention blocks.
        noise_std: see ``Reconstructor``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_seg_classes: int,
        task: str,
        image_size: Sequence[int],
        channels: Sequence[int] = (32, 64, 128),
        hidden_size: int = 16,
        num_heads: int = 4,
        depth: int = 2,
        noise_std: float = 0.0,
    ) -> None:
        super().__init__(image_size, len(channels), noise_std)
        self.net = stages(spatial_dims, in_channels, channels)
        self.narrow, self.widen = nn.Linear(channels[-1], hidden_size), nn.Linear(hidden_size, channels[-1])
        self.position = nn.Parameter(torch.zeros(1, math.prod(self.grid), hidden_size))
        self.blocks = nn.Sequential(*(TransformerBlock(hidden_size, 4 * hidden_size, num_heads) for _ in range(depth)))

    def layer_groups(self) -> dict[str, list[str]]:
        attention = ["narrow", "position", "blocks", "widen"]
        return {"encoder": ["net.encode"], "attention": attention, "decoder": ["net.decode"]}

    def reconstruct(self, image: torch.Tensor) -> tuple[torch.Tensor, None]:
        features = self.net.encode(image)
        tokens = self.narrow(features.flatten(2).transpose(1, 2)) + self.position
        tokens = self.widen(self.blocks(tokens))
        return self.net.decode(tokens.transpose(1, 2).reshape(features.shape)), None
