"""A class-conditional GAN from MONAI's ``Generator`` and ``Discriminator`` (DCGAN-style
transposed-convolution generator, strided-convolution critic).

The class enters the generator as a one-hot vector beside the latent noise, and the
discriminator as one-hot maps stacked on the image's channels (Mirza and Osindero's conditional
GAN); the loss is the non-saturating one of Goodfellow et al. The networks are MONAI's; only the
conditioning and the two-player step are written here, because MONAI has no GAN trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import Discriminator, Generator
from torch import nn


class ConditionalGAN(nn.Module):
    """Generator and discriminator with their Adam optimisers.

    Args:
        image_shape: ``(C, *spatial)`` of the images, scaled to [-1, 1].
        num_classes: classes the generator is conditioned on.
        latent_dim: length of the noise vector.
        channels: feature channels of the generator's upsampling stages, widest first (the
            discriminator uses them in reverse); each stage doubles the size, so the image side
            must be divisible by 2 ** len(channels).
        lr: Adam learning rate of both networks (betas 0.5, 0.999 as in DCGAN).
    """

    def __init__(
        self, image_shape: Sequence[int], num_classes: int, latent_dim: int = 64,
        channels: Sequence[int] = (64, 32), lr: float = 2e-4,
    ) -> None:  # fmt: skip
        super().__init__()
        self.image_shape, self.num_classes, self.latent_dim = tuple(image_shape), num_classes, latent_dim
        stages, spatial = len(channels), self.image_shape[1:]
        start = [side // 2**stages for side in spatial]
        if any(side % 2**stages for side in spatial):
            raise ValueError(f"image size {list(spatial)} must be divisible by {2**stages} (2 ** stages)")
        self.generator = Generator(
            latent_shape=(latent_dim + num_classes,), start_shape=(channels[0], *start),
            channels=(*channels[1:], 16, image_shape[0]), strides=(*[2] * stages, 1),
        )  # fmt: skip
        self.discriminator = Discriminator(
            in_shape=(image_shape[0] + num_classes, *spatial), channels=(*reversed(channels),),
            strides=(2,) * stages, last_act=None,
        )  # fmt: skip
        self.optimizers = {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999)),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999)),
        }

    def generate(self, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, *spatial)`` in [-1, 1] for ``labels`` ``(N,)`` from ``noise`` ``(N, latent_dim)``."""
        code = torch.cat([noise, F.one_hot(labels, self.num_classes).float()], dim=1)
        return torch.tanh(self.generator(code))

    def _judge(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        maps = F.one_hot(labels, self.num_classes).float()[(...,) + (None,) * (images.dim() - 2)]
        maps = maps.expand(-1, -1, *images.shape[2:])  # (N, classes, *spatial)
        return self.discriminator(torch.cat([images, maps], dim=1))[:, 0]

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One discriminator and one generator update on a real batch in [-1, 1]; their losses."""
        noise = torch.randn(len(images), self.latent_dim, device=images.device)
        fake = self.generate(labels, noise)
        real_logits, fake_logits = self._judge(images, labels), self._judge(fake.detach(), labels)
        d_loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        d_loss = d_loss + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizers["discriminator"].step()
        fooled = self._judge(fake, labels)
        g_loss = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        self.optimizers["generator"].zero_grad(set_to_none=True)
        g_loss.backward()
        self.optimizers["generator"].step()
        return {"generator_loss": g_loss.item(), "discriminator_loss": d_loss.item()}

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Images ``(N, C, *spatial)`` in [-1, 1]; ``generator`` (on the labels' device) draws the noise."""
        noise = torch.randn(len(labels), self.latent_dim, generator=generator, device=labels.device)
        return self.generate(labels, noise)

    @property
    def losses(self) -> tuple[str, ...]:
        return ("generator_loss", "discriminator_loss")
