"""Sample mixing for classification: mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019).

Each sample is mixed with a partner from the same batch (a random permutation). Labels
become soft targets ``(B, classes)``, which the cross-entropy and binary cross-entropy
losses take as they are. Cutmix pastes a box of the partner into the image and the same box
of its mask, so masks stay exact; mixup blends whole images, which a mask cannot follow, so it
is refused for tasks that segment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medimg_cli.augment.transforms import TRANSFORMS, Params, RandomTransform, per_sample, uniform
from medimg_cli.data.native import PIXEL_MAPS


class MixTransform(RandomTransform):
    """Mixes samples and labels; built with the dataset's class count."""

    KIND = "mix"

    def __init__(self, prob: float = 0.5, alpha: float = 1.0) -> None:
        super().__init__(prob)
        if alpha <= 0:
            raise ValueError(f"alpha={alpha} must be > 0")
        self.alpha = float(alpha)
        self.num_classes = 0
        self.multilabel = False

    def bind(self, num_classes: int, multilabel: bool, segments: bool) -> None:
        """Attach what the data says: label format, and whether masks must follow."""
        self.num_classes, self.multilabel = num_classes, multilabel

    def soft_labels(self, label: torch.Tensor) -> torch.Tensor:
        """Labels as float targets ``(B, classes)``."""
        if self.multilabel or label.dim() == 2:
            return label.float()
        return F.one_hot(label, self.num_classes).float()

    def draw(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Applied flags, partner indices and Beta(alpha, alpha) weights (1 where not applied)."""
        applied = self.applied(batch, device)
        beta = torch.distributions.Beta(
            torch.tensor(self.alpha, device=device), torch.tensor(self.alpha, device=device)
        ).sample((batch,))
        partner = torch.randperm(batch, device=device)
        return applied, partner, torch.where(applied, beta, torch.ones_like(beta))

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Params]:
        raise NotImplementedError


@TRANSFORMS.register("mixup")
class Mixup(MixTransform):
    """``x = lam x + (1 - lam) x[partner]``, the same for the labels; ``lam ~ Beta(alpha, alpha)``.

    Args:
        prob: probability that a sample is mixed.
        alpha: Beta distribution parameter (small: mostly one image dominates).
    """

    def __init__(self, prob: float = 0.5, alpha: float = 0.4) -> None:
        super().__init__(prob, alpha)

    def bind(self, num_classes: int, multilabel: bool, segments: bool) -> None:
        if segments:
            raise ValueError("mixup blends images, and masks cannot be blended; use cutmix for tasks that segment")
        super().bind(num_classes, multilabel, segments)

    def __call__(self, batch):
        image = batch["image"]
        applied, partner, lam = self.draw(image.shape[0], image.device)
        out = dict(batch)
        weight = per_sample(lam, image)
        out["image"] = weight * image + (1 - weight) * image[partner]
        labels = self.soft_labels(batch["label"])
        out["label"] = lam[:, None] * labels + (1 - lam[:, None]) * labels[partner]
        return out, {"applied": applied, "weight": lam, "partner": partner.float()}


@TRANSFORMS.register("cutmix")
class Cutmix(MixTransform):
    """Paste a box of the partner covering ``1 - lam`` of the image (``lam ~ Beta(alpha, alpha)``);
    the label weight is the area actually kept after clipping the box to the image.

    Args:
        prob: probability that a sample is mixed.
        alpha: Beta distribution parameter.
    """

    def __call__(self, batch):
        image = batch["image"]
        size, spatial, device = image.shape[0], image.shape[2:], image.device
        applied, partner, lam = self.draw(size, device)
        side = (1 - lam) ** (1 / len(spatial))  # box side as a fraction of each image side
        inside = torch.ones(size, *spatial, dtype=torch.bool, device=device)
        for axis, length in enumerate(spatial):
            centre = uniform(size, 0, 1, device)
            low, high = (centre - side / 2).clamp(0, 1), (centre + side / 2).clamp(0, 1)
            position = (torch.arange(length, device=device) + 0.5) / length
            along = (position[None] >= low[:, None]) & (position[None] < high[:, None])  # (B, length)
            shape = [size] + [1] * len(spatial)
            shape[1 + axis] = length
            inside = inside & along.view(shape)
        box = inside[:, None]  # (B, 1, *spatial)
        out = dict(batch)
        out["image"] = torch.where(box, image[partner], image)
        for key in PIXEL_MAPS:
            if key in batch:
                out[key] = torch.where(box, batch[key][partner], batch[key])
        kept = 1 - box.flatten(1).float().mean(1)
        if "label" in batch:
            labels = self.soft_labels(batch["label"])
            out["label"] = kept[:, None] * labels + (1 - kept[:, None]) * labels[partner]
        return out, {"applied": applied, "kept": kept, "partner": partner.float()}
