"""What ``medimg eval`` is asked (``Settings``, the ``eval`` config group) and what it finds
(``Evaluation``: the JSON document, the rows of ``metrics.csv`` and per-case values)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Settings:
    """The ``eval`` config group (see ``conf/eval.yaml``)."""

    bootstrap: int = 2000
    seed: int = 0
    bins: int = 15
    temperature: bool = False
    uncertainty: str = "none"
    samples: int = 20
    subgroups: list[str] | None = None
    masks: bool = True
    explain: str | None = None
    target_layer: str | None = None
    cases: int = 8
    steps: int = 32
    overlap: float | None = None  # used by load_trained, which builds the sliding-window model
    save_probabilities: bool = False
    nsd_tolerance: float = 1.0
    cldice: bool = False
    case_map: bool = False
    threshold: Any = None  # binary tasks: null (most probable class), youden, or a probability


DISTANCES = (
    "hd95",
    "asd",
    "identity_hd95",
    "tre",
    "identity_tre",
)  # in mm (pixels without a spacing): metrics.json's distance_unit
SCORES = ("brier", "jacobian_std")  # brier: a squared error summed over classes, in [0, 2]; a Jacobian sd


def unit_of(metric: str, distance_unit: str = "mm") -> str:
    """What a metric's value is in: ``fraction`` (in [0, 1]; tables show it in percent), a
    distance unit, or ``score``."""
    return distance_unit if metric in DISTANCES else "score" if metric in SCORES else "fraction"


@dataclass
class Evaluation:
    """What one evaluation found: the JSON document, the rows of metrics.csv and per-case values."""

    document: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: dict[str, list] = field(default_factory=dict)  # classification columns of predictions.csv
    cases: dict[str, np.ndarray] = field(default_factory=dict)  # per-case arrays for the subgroups

    def add(self, metric: str, klass: str, value: float, interval: tuple[float, float, int], cases: int) -> None:
        low, high, _ = interval
        self.rows.append({"metric": metric, "class": klass, "value": value, "low": low, "high": high, "n": cases})
