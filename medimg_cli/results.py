"""A run's record files: ``metrics.csv`` (one row per epoch) and ``test_predictions.csv``.

The columns of ``metrics.csv`` are ``metrics.COLUMNS``; rows are appended and flushed as each
epoch ends, and rewritten atomically when a run resumes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medimg_cli.fileio import append_csv_row, columns_csv, csv_text, read_csv, write_atomic
from medimg_cli.metrics import COLUMNS

# per-case segmentation (and registration) values of test_predictions.csv
CASE_METRICS = ("dice", "iou", "hd95", "folding", "jacobian_std", "tre")


def append_metrics_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append one epoch to ``metrics.csv`` (header first if new), flushed to disk."""
    append_csv_row(path, COLUMNS, [row.get(c) for c in COLUMNS])


def write_metrics_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` atomically from ``rows`` (used when a run resumes)."""
    write_atomic(path, csv_text(COLUMNS, ([r.get(c) for c in COLUMNS] for r in rows)))


def read_metrics_csv(path: Path) -> list[dict[str, float | None]]:
    """Rows of ``metrics.csv`` with numbers as floats and empty cells as ``None``."""
    return [{k: (float(v) if v else None) for k, v in row.items()} for row in read_csv(path)]


def cases_csv(cases: Mapping[str, Any]) -> str:
    """CSV text of ``TaskMetrics.cases()``: one row per case, in split order.

    Columns: ``case`` (the position in the split; no identifiers), ``label`` (``label_<k>`` per
    label when multi-label), ``prediction`` and ``p_<k>`` (class probabilities), ``dice``, ``iou``
    (and for registration ``hd95``, ``folding``, ``jacobian_std``, ``tre``).
    """
    columns: dict[str, list] = {}
    count = len(next(iter(cases.values())))
    columns["case"] = list(range(count))
    if "score" in cases:  # anomaly detection
        columns |= {"label": cases["label"].tolist(), "score": cases["score"].tolist()}
    elif "label" in cases:
        labels, probs = cases["label"], cases["probs"]
        if labels.ndim == 2:
            columns |= {f"label_{k}": labels[:, k].int().tolist() for k in range(labels.shape[1])}
        else:
            columns["label"] = labels.tolist()
            columns["prediction"] = probs.argmax(dim=1).tolist()
        columns |= {f"p_{k}": probs[:, k].tolist() for k in range(probs.shape[1])}
    for key in CASE_METRICS:
        if key in cases:
            columns[key] = cases[key].tolist()
    return columns_csv(columns)


def read_cases_csv(path: Path) -> dict[str, np.ndarray]:
    """``test_predictions.csv`` back as arrays: ``label`` ``(N,)`` or ``(N, L)``, ``probs``
    ``(N, K)``, ``dice``, ``iou``, ``score`` ``(N,)`` (only those present)."""
    rows = read_csv(path)
    names = list(rows[0]) if rows else []
    table = {name: np.array([float(row[name]) if row[name] else np.nan for row in rows]) for name in names}
    found: dict[str, np.ndarray] = {}
    label_columns = [n for n in names if n.startswith("label_")]
    if "label" in table:
        found["label"] = table["label"].astype(int)
    elif label_columns:
        found["label"] = np.stack([table[n] for n in label_columns], axis=1).astype(int)
    probs = [n for n in names if n.startswith("p_")]
    if probs:
        found["probs"] = np.stack([table[n] for n in probs], axis=1)
    found |= {key: table[key] for key in (*CASE_METRICS, "score") if key in table}
    return found
