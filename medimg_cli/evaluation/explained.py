"""``eval.explain``: which cases get maps, the overlays, the pointing game and the
model-randomisation check of one split (the maps themselves come from ``explain.py``).

- Overlays: the ``eval.cases`` most confident, least confident and misclassified cases, each
  with the trained maps and the maps of the same architecture with random weights.
- Pointing game (Zhang et al. 2016), when the data have lesion masks: how often the map's peak
  lies inside the mask, over every correctly classified case with a lesion.
- Randomisation check (Adebayo et al. 2018): the mean signed Spearman rho between trained and
  random-weight maps. Within ``RANDOMISATION_THRESHOLD`` of 0 the maps changed (they depend on
  the weights); above it they are unchanged, below minus it inverted: either way they follow the
  image more than the model. The sign is kept because an inverted map is not an unchanged one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medimg_cli.evaluation import figures
from medimg_cli.evaluation.explain import explain, randomised, rank_correlations, target_layer
from medimg_cli.fileio import columns_csv, write_atomic

RANDOMISATION_THRESHOLD = 0.5  # |mean Spearman rho| below which maps "depend on the weights"


def explain_cases(
    folder: Path,
    model: nn.Module,
    payload: Mapping[str, Any],
    tensors: dict[str, torch.Tensor],
    probs: np.ndarray,
    ids: list[str],
    names: tuple[str, ...],
    settings: Any,
) -> dict[str, Any]:
    """Maps of the chosen cases into ``folder`` (overlays, ``explain.csv``); returns the summary.

    Args:
        model: the trained classifier, on the device the maps are computed on.
        payload: its checkpoint (the architecture, rebuilt with random weights for the check).
        tensors: the split's ``image``, ``label`` and, when known, ``mask``.
        probs: ``(N, K)`` class probabilities of the split.
        settings: the ``eval`` settings (``explain``, ``target_layer``, ``cases``, ``steps``, ``seed``).
    """
    method = settings.explain
    device = next(model.parameters()).device
    layer = target_layer(model, settings.target_layer) if method in ("gradcam", "gradcam++") else None
    labels, preds = tensors["label"].numpy(), probs.argmax(1)
    masks = tensors.get("mask")
    groups, chosen = _choose_cases(labels, probs, masks, settings.cases)
    images = tensors["image"][chosen].to(device)
    classes = torch.as_tensor(preds[chosen])
    trained = explain(model, images, classes, method, layer, settings.steps).cpu()
    random_model = randomised(payload["model"]["name"], payload["model"]["args"], settings.seed).to(device)
    shuffled = explain(random_model, images, classes, method, layer, settings.steps).cpu()
    rho = rank_correlations(trained, shuffled)
    maps = {"trained": trained, "random": shuffled, "rho": rho, "method": method}
    _overlays(folder, groups, chosen, tensors, probs, maps, ids, names)
    membership = {c: [g for g, cases in groups.items() if c in cases] for c in chosen}
    table = {
        "case": [int(c) for c in chosen],
        "id": [ids[c] for c in chosen],
        "groups": [" ".join(membership[c]) for c in chosen],
        "spearman_vs_random_weights": rho.tolist(),
    }
    pointing = None
    if masks is not None:
        pointing, table["peak_in_mask"] = _pointing_game(
            masks[chosen], trained, shuffled, preds[chosen] == labels[chosen]
        )
    write_atomic(folder / "explain.csv", columns_csv(table))
    summary = {"method": method, "target_layer": layer, "cases": len(chosen), "pointing_game": pointing}
    return summary | {"randomisation": _randomisation_verdict(rho)}


def _choose_cases(
    labels: np.ndarray, probs: np.ndarray, masks: torch.Tensor | None, count: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The shown groups (``count`` most and least confident, misclassified) and every case to map:
    those plus, when masks are known, each correctly classified case with a lesion."""
    preds, confidence = probs.argmax(1), probs.max(1)
    by_confidence = np.argsort(-confidence, kind="stable")
    wrong = by_confidence[preds[by_confidence] != labels[by_confidence]]
    groups = {
        "most_confident": by_confidence[:count],
        "least_confident": by_confidence[::-1][:count].copy(),
        "misclassified": wrong[:count],
    }
    chosen = np.concatenate(list(groups.values()))
    if masks is not None:  # the pointing game scores every correctly classified case with a lesion
        lesions = masks.flatten(1).amax(1).numpy() > 0
        chosen = np.concatenate([chosen, np.flatnonzero(lesions & (preds == labels))])
    return groups, np.unique(chosen)


def _overlays(
    folder: Path,
    groups: dict[str, np.ndarray],
    chosen: np.ndarray,
    tensors: dict[str, torch.Tensor],
    probs: np.ndarray,
    maps: dict[str, Any],
    ids: list[str],
    names: tuple[str, ...],
) -> None:
    """One overlay grid per group: the trained map above the random-weights map of each case."""
    labels, preds, confidence = tensors["label"].numpy(), probs.argmax(1), probs.max(1)
    masks, method, rho = tensors.get("mask"), maps["method"], maps["rho"]
    position = {case: i for i, case in enumerate(chosen)}
    for group, cases in groups.items():
        if not len(cases):
            continue
        at = [position[c] for c in cases]
        titles = [
            f"{ids[c]}\ntrue {names[labels[c]]}\npred {names[preds[c]]} ({confidence[c]:.2f})\nrho {rho[i]:.2f}"
            for c, i in zip(cases, at, strict=True)
        ]
        figures.overlay_figure(
            folder / f"{group}.png",
            tensors["image"][cases],
            [maps["trained"][at], maps["random"][at]],
            titles,
            [method, f"{method}, random weights"],
            masks[cases] if masks is not None else None,
        )


def _pointing_game(
    masks: torch.Tensor, trained: torch.Tensor, shuffled: torch.Tensor, correct: np.ndarray
) -> tuple[dict[str, Any], list[bool | None]]:
    """Pointing game (Zhang et al. 2016): is the map's peak inside the lesion mask? Scored over the
    correctly classified cases with a lesion; returns the summary and each case's hit (``None``
    without a lesion)."""
    lesion = masks.flatten(1) > 0
    hits = [lesion.gather(1, m.flatten(1).argmax(1, keepdim=True))[:, 0] for m in (trained, shuffled)]
    scored = torch.as_tensor(correct) & lesion.any(1)

    def share(values: torch.Tensor) -> float:
        return float(values[scored].float().mean()) if scored.any() else float("nan")

    summary = {
        "cases": int(scored.sum()),  # correctly classified cases with a lesion
        "peak_in_mask": share(hits[0]),
        "random_weights_peak_in_mask": share(hits[1]),
        "lesion_share_of_pixels": float(lesion[scored].float().mean()) if scored.any() else float("nan"),
    }
    return summary, [bool(h) if a else None for h, a in zip(hits[0], lesion.any(1), strict=True)]


def _randomisation_verdict(rho: np.ndarray) -> dict[str, Any]:
    """The model-randomisation check's summary from the per-case signed rank correlations ``rho``."""
    mean = float(rho.mean())
    if mean >= RANDOMISATION_THRESHOLD:
        outcome, verdict = (
            "unchanged",
            "the maps barely change with random weights: they may show the image",
        )
    elif mean <= -RANDOMISATION_THRESHOLD:
        outcome, verdict = "inverted", "the maps invert when the weights are randomised: they still follow the image"
    else:
        outcome, verdict = "changed", "the maps change when the weights are randomised: they depend on the model"
    return {
        "spearman_mean": mean,
        "spearman_sd": float(rho.std()),
        "threshold": RANDOMISATION_THRESHOLD,
        "outcome": outcome,
        "passed": outcome == "changed",
        "verdict": verdict,
    }
