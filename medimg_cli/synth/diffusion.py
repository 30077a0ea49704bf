"""A class-conditional denoising diffusion model from MONAI Generative: ``DiffusionModelUNet``
with a class embedding, trained with the ``DDPMScheduler``'s noise schedule (Ho et al.) to
predict the added noise, sampled with the ``DDIMScheduler`` in fewer steps (Song et al.).

Only the training step (MSE between the true and predicted noise) and the sampling loop over
the scheduler's timesteps are written here; the network and schedules are MONAI's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn


class ConditionalDiffusion(nn.Module):
    """The denoising network, its schedules and its Adam optimiser.

    Args:
        image_shape: ``(C, *spatial)`` of the images, scaled to [-1, 1]; each side divisible by
            ``2 ** (len(channels) - 1)``.
        num_classes: classes the network is conditioned on (a learned embedding per class).
        channels: feature channels per resolution level; attention on the deepest level only.
        timesteps: steps of the training noise schedule (linear betas).
        sample_steps: DDIM steps when sampling.
        lr: Adam learning rate.
    """

    def __init__(
        self, image_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (32, 64, 64),
        timesteps: int = 1000, sample_steps: int = 50, lr: float = 2.5e-4,
    ) -> None:  # fmt: skip
        super().__init__()
        self.image_shape, self.num_classes, self.sample_steps = tuple(image_shape), num_classes, sample_steps
        levels = len(channels)
        if any(side % 2 ** (levels - 1) for side in image_shape[1:]):
            raise ValueError(f"image size {list(image_shape[1:])} must be divisible by {2 ** (levels - 1)}")
        self.network = DiffusionModelUNet(
            spatial_dims=len(image_shape) - 1, in_channels=image_shape[0], out_channels=image_shape[0],
            channels=tuple(channels), attention_levels=(False,) * (levels - 1) + (True,), num_res_blocks=1,
            num_head_channels=channels[-1], norm_num_groups=min(16, min(channels)), num_class_embeds=num_classes,
        )  # fmt: skip
        self.schedule = DDPMScheduler(num_train_timesteps=timesteps)
        self.sampler = DDIMScheduler(num_train_timesteps=timesteps)
        self.optimizers = {"network": torch.optim.Adam(self.network.parameters(), lr=lr)}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One update on a real batch in [-1, 1]: noise it at random timesteps, predict the noise."""
        noise = torch.randn_like(images)
        steps = torch.randint(0, self.schedule.num_train_timesteps, (len(images),), device=images.device)
        predicted = self.network(self.schedule.add_noise(images, noise, steps), steps, class_labels=labels)
        loss = F.mse_loss(predicted, noise)
        self.optimizers["network"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["network"].step()
        return {"diffusion_loss": loss.item()}

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Images ``(N, C, *spatial)`` in [-1, 1] after ``sample_steps`` DDIM steps from noise
        that ``generator`` (on the labels' device) draws."""
        images = torch.randn(len(labels), *self.image_shape, generator=generator, device=labels.device)
        self.sampler.set_timesteps(self.sample_steps, device=labels.device)
        for step in self.sampler.timesteps:
            predicted = self.network(images, step.expand(len(labels)).to(labels.device), class_labels=labels)
            images, _ = self.sampler.step(predicted, int(step), images)
        return images.clamp(-1, 1)

    @property
    def losses(self) -> tuple[str, ...]:
        return ("diffusion_loss",)
