"""Registration pairs: one sample holds a moving and a fixed image (``image`` ``(N, 2C, *spatial)``,
moving channels first) and their label maps (``mask`` ``(N, 2, *spatial)``).

``deformed_pairs`` makes the pair of each image by a known random deformation (the phantom's
registration mode): the fixed image is the original, the moving one the original warped by a
smooth random field (``deformation.random_deformations``), so the ideal registration is known and
the labels are exact. ``paired_splits`` pairs the images of any segmentation dataset with each
other (inter-subject) or with one atlas, where the truth is known through the label maps only.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import torch

from medimg_cli.data import SPLITS, Splits
from medimg_cli.deformation import random_deformations, warp
from medimg_cli.errors import ConfigError, unknown_choice

LANDMARKS = 6  # corresponding points per phantom pair


def deformed_pairs(image: torch.Tensor, mask: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Pairs (moving = deformed ``image``, fixed = ``image``) of ``image`` ``(N, C, *spatial)`` float
    and ``mask`` ``(N, 1, *spatial)`` label maps; the deformations depend on ``seed`` only.

    Returns:
        ``image`` ``(N, 2C, *spatial)``, ``mask`` ``(N, 2, *spatial)`` (moving, fixed), ``landmarks``
        ``(N, 2, K, D)``: ``LANDMARKS`` random pixels inside each moving label map and the fixed
        points they show (``p + u(p)``, exact), and ``ddf`` ``(N, D, *spatial)``, the deformation
        that made each moving image (pixels).
    """
    ddf = random_deformations(len(image), tuple(image.shape[2:]), seed)
    moving, moving_mask = warp(image, ddf), warp(mask, ddf, labels=True)
    rng = np.random.default_rng([seed, 5])
    points = []
    for labels in moving_mask[:, 0]:  # moving(x) shows fixed(x + u(x))
        inside = torch.nonzero(labels > 0) if (labels > 0).any() else torch.nonzero(labels >= 0)
        points.append(inside[torch.from_numpy(rng.choice(len(inside), LANDMARKS))])
    at = torch.stack(points)  # (N, K, D) integer pixels
    shift = torch.stack([field[(slice(None), *p.T)].T for field, p in zip(ddf, at, strict=True)])  # (N, K, D)
    landmarks = torch.stack([at.float(), at.float() + shift], dim=1)
    pairs = {"image": torch.cat([moving, image], dim=1), "mask": torch.cat([moving_mask, mask], dim=1)}
    return pairs | {"landmarks": landmarks, "ddf": ddf}


PAIRINGS = ("inter_subject", "atlas")


def paired_splits(splits: Splits, how: str, seed: int) -> Splits:
    """Registration pairs from a segmentation dataset's splits, within each split:

    - ``inter_subject``: each image (moving) with another image of its split (fixed), drawn from
      ``seed``, never itself;
    - ``atlas``: each image with the first training image, the atlas, as the fixed image.

    The pair keeps the moving image's ids and metadata; ``info`` becomes the registration task's.
    """
    if how not in PAIRINGS:
        raise unknown_choice("data.pairs", how, PAIRINGS)
    rng = np.random.default_rng([seed, 4])  # a stream apart from the split's
    atlas = {key: splits.train[key][:1] for key in ("image", "mask")}
    for name in SPLITS:
        tensors = splits.split(name)
        count = len(tensors["image"])
        if how == "inter_subject" and count < 2:
            raise ConfigError(f"data.pairs=inter_subject: the {name} split has {count} image; it needs two to pair")
        partner = (np.arange(count) + rng.integers(1, count, size=count)) % count if how == "inter_subject" else None
        fixed = {k: atlas[k].expand(count, *atlas[k].shape[1:]) if partner is None else tensors[k][partner]
                 for k in ("image", "mask")}  # fmt: skip
        paired = {key: torch.cat([tensors[key], fixed[key]], dim=1) for key in ("image", "mask")}
        setattr(splits, name, paired)
    splits.info = dataclasses.replace(splits.info, task="registration", in_channels=2 * splits.info.in_channels)
    splits.fingerprint = hashlib.sha256(f"{splits.fingerprint}:{how}:{seed}".encode()).hexdigest()[:16]
    return splits
