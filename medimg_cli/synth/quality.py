"""How good synthetic images are, without downloads: distances in the feature space of a
classifier medimg trained on the real training split, and a memorisation check in pixel space.

- Frechet distance (Heusel et al.'s FID formula on these features instead of Inception's):
  ``|mu_r - mu_s|^2 + Tr(C_r + C_s - 2 (C_r C_s)^(1/2))``; 0 for identical sets.
- Precision and recall on k-NN manifolds (Kynkaenniemi et al., 2019): the share of synthetic
  features inside some real feature's ball (radius: its distance to its k-th nearest real
  neighbour), and the share of real features inside some synthetic one's ball.
- Memorisation: each synthetic image's nearest real training image (root mean square pixel
  difference); a generator that copies shows pairs at distance near 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch


def frechet_distance(real: np.ndarray, synthetic: np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted to ``(N, D)`` and ``(M, D)`` feature sets."""
    mu_r, mu_s = real.mean(0), synthetic.mean(0)
    cov_r, cov_s = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(synthetic, rowvar=False))
    root = scipy.linalg.sqrtm(cov_r @ cov_s)
    root = root.real if np.iscomplexobj(root) else root  # rounding leaves tiny imaginary parts
    return float(((mu_r - mu_s) ** 2).sum() + np.trace(cov_r + cov_s - 2 * root))


def _radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Each point's distance to its k-th nearest other point of the same set."""
    distances = torch.cdist(features, features)
    return distances.kthvalue(k + 1, dim=1).values  # the 1st is the point itself, at 0


def precision_recall(real: np.ndarray, synthetic: np.ndarray, k: int = 3) -> tuple[float, float]:
    """k-NN manifold precision and recall of ``synthetic`` ``(M, D)`` against ``real`` ``(N, D)``."""
    r, s = torch.from_numpy(real).double(), torch.from_numpy(synthetic).double()
    if min(len(r), len(s)) <= k:
        raise ValueError(f"precision and recall with k={k} need more than {k} images in each set")
    between = torch.cdist(s, r)  # (M, N)
    precision = (between <= _radii(r, k)[None, :]).any(1).double().mean().item()
    recall = (between <= _radii(s, k)[:, None]).any(0).double().mean().item()
    return precision, recall


def nearest_real(synthetic: torch.Tensor, real: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """For each synthetic image ``(M, C, *spatial)``: the index of the closest real image
    ``(N, C, *spatial)`` and the root mean square pixel difference to it ``(M,)``."""
    flat_real = real.flatten(1).double()
    found = [torch.cdist(part.flatten(1).double(), flat_real).min(1) for part in synthetic.split(chunk)]
    distance = torch.cat([f.values for f in found]) / flat_real.shape[1] ** 0.5
    return torch.cat([f.indices for f in found]), distance.float()


@torch.no_grad()
def head_features(model: torch.nn.Module, images: torch.Tensor, batch: int = 128) -> np.ndarray:
    """``(N, D)`` features: what a medimg classifier's head pools before its linear layer."""
    linear = getattr(getattr(model, "head", None), "linear", None)
    if linear is None:
        raise ValueError("the classifier has no medimg classification head (cnn, resnet*, densenet121, "
                         "efficientnet_b0, transformer, hybrid have one)")  # fmt: skip
    kept: list[torch.Tensor] = []
    hook: Callable = lambda module, inputs: kept.append(inputs[0].detach().double().cpu())  # noqa: E731
    handle = linear.register_forward_pre_hook(hook)
    device = next(model.parameters()).device
    try:
        model.eval()
        for part in images.split(batch):
            model(part.to(device))
    finally:
        handle.remove()
    return torch.cat(kept).numpy()
