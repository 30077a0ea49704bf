"""Calibration: expected calibration error, Brier score, reliability bins, temperature scaling.

- ECE (Guo et al. 2017): the top-class confidences are put into ``bins`` equal-width bins on
  (0, 1]; ECE = sum over bins of (cases in bin / N) * |accuracy in bin - mean confidence in bin|.
- Brier score: the mean over cases of sum_k (p_k - y_k)^2 with one-hot y (the multi-class form;
  for two classes it is twice scikit-learn's binary ``brier_score_loss`` on p_1).
- Temperature scaling: one scalar T > 0 dividing the logits, fitted on the validation split by
  minimising the negative log-likelihood; it changes confidences, never the predicted class.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """Per bin of top-class confidence: ``count``, ``confidence`` (mean) and ``accuracy``, ``(bins,)``.

    Args:
        probs: ``(N, K)`` class probabilities.
        labels: ``(N,)`` integer labels.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # bin i holds (i/bins, (i+1)/bins]
    count = np.bincount(which, minlength=bins).astype(float)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, confidence, bins) / count
        accuracy = np.bincount(which, correct, bins) / count
    return {"count": count, "confidence": mean_confidence, "accuracy": accuracy}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of ``(N, K)`` probabilities against ``(N,)`` labels (see the module docstring)."""
    table = reliability_bins(probs, labels, bins)
    used = table["count"] > 0
    gaps = np.abs(table["accuracy"][used] - table["confidence"][used])
    return float((table["count"][used] * gaps).sum() / len(labels))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score of ``(N, K)`` probabilities against ``(N,)`` labels."""
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)``: ``(N, K)`` logits, ``(N,)`` labels.

    Optimises log T with L-BFGS, so T stays positive.
    """
    logits, labels = logits.detach().double().cpu(), labels.long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())
