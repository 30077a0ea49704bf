"""Registration pairs: one sample holds a moving and a fixed image (``image`` ``(N, 2C, *spatial)``,
moving channels first) and their label maps (``mask`` ``(N, 2, *spatial)``).

``deformed_pairs`` makes the pair of each image by a known random deformation (the phantom's
registration mode): the fixed image is the original, the moving one the original warped by a
smooth random field (``deformation.random_deformations``), so the ideal registration is known and
the labels are exact.
"""

from __future__ import annotations

import torch

from medimg_cli.deformation import random_deformations, warp


def deformed_pairs(image: torch.Tensor, mask: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Pairs (moving = deformed ``image``, fixed = ``image``) of ``image`` ``(N, C, *spatial)`` float
    and ``mask`` ``(N, 1, *spatial)`` label maps; the deformations depend on ``seed`` only.

    Returns:
        ``image`` ``(N, 2C, *spatial)``, ``mask`` ``(N, 2, *spatial)`` (moving, fixed) and ``ddf``
        ``(N, D, *spatial)``, the deformation that made each moving image (pixels).
    """
    ddf = random_deformations(len(image), tuple(image.shape[2:]), seed)
    moving, moving_mask = warp(image, ddf), warp(mask, ddf, labels=True)
    return {"image": torch.cat([moving, image], dim=1), "mask": torch.cat([moving_mask, mask], dim=1), "ddf": ddf}
