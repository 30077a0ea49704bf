"""Run outputs: ``metrics.csv`` (one row per epoch), ``summary.json`` and the per-epoch table.

The table is laid out like the comparison tables of the papers: one row per epoch (or every
k-th epoch), metrics in percent, timings in seconds, and a final row for the test split.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from rich.console import Console
from rich.table import Table

COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_f1",
    "val_auc",
    "val_dice",
    "val_iou",
    "epoch_seconds",
    "train_images_per_second",
    "seconds_per_image",
)
# column -> (header, format); fractions are shown in percent as in the papers' tables
_DISPLAY = {
    "epoch": ("epoch", "{:.0f}"),
    "train_loss": ("train loss", "{:.4f}"),
    "val_loss": ("val loss", "{:.4f}"),
    "val_accuracy": ("acc %", "pct"),
    "val_f1": ("F1 %", "pct"),
    "val_auc": ("AUC %", "pct"),
    "val_dice": ("Dice %", "pct"),
    "val_iou": ("IoU %", "pct"),
    "epoch_seconds": ("epoch s", "{:.2f}"),
    "train_images_per_second": ("train img/s", "{:.0f}"),
    "seconds_per_image": ("s/img", "{:.2e}"),
}


def make_console() -> Console:
    """A console for tables: the terminal's width, or a wide one when output is redirected."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: the permissions a plain open() would give new files


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO]:
    """A temporary file beside ``path`` that replaces it when the block ends without error, so
    readers never see a half-written file; it gets the permissions ``open`` would give."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str | bytes) -> None:
    """Replace ``path`` with ``text`` (or bytes) atomically (see ``atomic_file``)."""
    with atomic_file(path, "wb" if isinstance(text, bytes) else "w") as file:
        file.write(text)


def _csv_value(value: Any) -> str:
    """One CSV cell: numbers as ``repr`` (round-trips), text quoted when it must be, NaN/None empty."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return f'"{value.replace(chr(34), 2 * chr(34))}"' if any(c in value for c in ',"\n') else value
    return repr(value)


def append_metrics_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append one epoch to ``metrics.csv`` (header first if new), flushed to disk."""
    new = not path.exists()
    with path.open("a", newline="") as file:
        writer = csv.writer(file)
        if new:
            writer.writerow(COLUMNS)
        writer.writerow([_csv_value(row.get(c)) for c in COLUMNS])
        file.flush()
        os.fsync(file.fileno())


def write_metrics_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` atomically from ``rows`` (used when a run resumes)."""
    lines = [",".join(COLUMNS)] + [",".join(_csv_value(r.get(c)) for c in COLUMNS) for r in rows]
    write_atomic(path, "\n".join(lines) + "\n")


def read_metrics_csv(path: Path) -> list[dict[str, float | None]]:
    """Rows of ``metrics.csv`` with numbers as floats and empty cells as ``None``."""
    with path.open(newline="") as file:
        return [{k: (float(v) if v else None) for k, v in row.items()} for row in csv.DictReader(file)]


def cases_csv(cases: Mapping[str, Any]) -> str:
    """CSV text of ``TaskMetrics.cases()``: one row per case, in split order.

    Columns: ``case`` (the position in the split; no identifiers), ``label`` (``label_<k>`` per
    label when multi-label), ``prediction`` and ``p_<k>`` (class probabilities), ``dice``, ``iou``.
    """
    columns: dict[str, list] = {}
    count = len(next(iter(cases.values())))
    columns["case"] = list(range(count))
    if "label" in cases:
        labels, probs = cases["label"], cases["probs"]
        if labels.ndim == 2:
            columns |= {f"label_{k}": labels[:, k].int().tolist() for k in range(labels.shape[1])}
        else:
            columns["label"] = labels.tolist()
            columns["prediction"] = probs.argmax(dim=1).tolist()
        columns |= {f"p_{k}": probs[:, k].tolist() for k in range(probs.shape[1])}
    for key in ("dice", "iou"):
        if key in cases:
            columns[key] = cases[key].tolist()
    return columns_csv(columns)


def columns_csv(columns: Mapping[str, Sequence[Any]]) -> str:
    """CSV text of equally long columns, header first (NaN and ``None`` as empty cells)."""
    count = len(next(iter(columns.values()), []))
    lines = [",".join(columns)]
    lines += [",".join(_csv_value(column[i]) for column in columns.values()) for i in range(count)]
    return "\n".join(lines) + "\n"


def read_cases_csv(path: Path) -> dict[str, np.ndarray]:
    """``test_predictions.csv`` back as arrays: ``label`` ``(N,)`` or ``(N, L)``, ``probs``
    ``(N, K)``, ``dice``, ``iou`` ``(N,)`` (only those present)."""
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
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
    found |= {key: table[key] for key in ("dice", "iou") if key in table}
    return found


def _without_nan(value: Any) -> Any:
    """NaN floats become ``None`` (JSON ``null``), in nested dicts and lists too."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically; NaN becomes ``null``."""
    write_atomic(path, json.dumps(_without_nan(data), indent=2, default=str, allow_nan=False) + "\n")


def run_title(summary: Mapping[str, Any]) -> str:
    """The table title of a run, from the ``model``, ``data``, ``task`` and ``seed`` of its summary."""
    return f"{summary['model']} on {summary['data']} ({summary['task']}), seed {summary['seed']}"


def select_rows(
    rows: Sequence[Mapping[str, Any]], every: int, best_epoch: int | None = None
) -> list[Mapping[str, Any]]:
    """Every ``every``-th epoch, the best epoch and the last epoch, in epoch order."""
    last = int(rows[-1]["epoch"]) if rows else None
    return [r for r in rows if int(r["epoch"]) % every == 0 or int(r["epoch"]) in (best_epoch, last)]


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    fmt = _DISPLAY[column][1]
    return f"{100 * value:.1f}" if fmt == "pct" else fmt.format(value)


def _table_cells(
    rows: Sequence[Mapping[str, Any]], every: int, test: Mapping[str, Any] | None, best_epoch: int | None
) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the table; columns without any value are left out."""
    columns = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    body = []
    for row in select_rows(rows, every, best_epoch):
        cells = [_cell(c, row.get(c)) for c in columns]
        if best_epoch is not None and int(row["epoch"]) == best_epoch:
            cells[0] += "*"
        body.append(cells)
    if test:
        test_row = {f"val_{k}": v for k, v in test.items()} | {"seconds_per_image": test.get("seconds_per_image")}
        body.append(
            ["test"]
            + [
                _cell(c, test_row.get(c)) if c.startswith("val_") or c == "seconds_per_image" else ""
                for c in columns[1:]
            ]
        )
    headers = [_DISPLAY[c][0] for c in columns]
    return headers, body


def rich_table(
    rows: Sequence[Mapping[str, Any]],
    every: int = 1,
    test: Mapping[str, Any] | None = None,
    best_epoch: int | None = None,
    title: str | None = None,
) -> Table:
    """The per-epoch table for the terminal (``*`` marks the best epoch)."""
    headers, body = _table_cells(rows, every, test, best_epoch)
    return grid_rich(headers, body, title, _CAPTION, sections=(len(body) - 2,) if test is not None else ())


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    every: int = 1,
    test: Mapping[str, Any] | None = None,
    best_epoch: int | None = None,
    title: str | None = None,
) -> str:
    """The same table as ``rich_table``, in Markdown."""
    headers, body = _table_cells(rows, every, test, best_epoch)
    return grid_markdown(headers, body, title, "\\" + _CAPTION)


_CAPTION = "* best validation epoch; test = best checkpoint on the test split"


def grid_rich(
    headers: Sequence[str],
    body: Sequence[Sequence[str]],
    title: str | None = None,
    caption: str | None = None,
    sections: Sequence[int] = (),
) -> Table:
    """A right-aligned rich table of text cells; a rule follows each row index in ``sections``."""
    table = Table(title=title, caption=caption)
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)
    for index, cells in enumerate(body):
        table.add_row(*cells, end_section=index in sections)
    return table


def grid_markdown(
    headers: Sequence[str], body: Sequence[Sequence[str]], title: str | None = None, caption: str | None = None
) -> str:
    """The same table as ``grid_rich``, in Markdown (bold title above, caption below)."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    if caption:
        lines += ["", caption]
    return "\n".join(lines) + "\n"
