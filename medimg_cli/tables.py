"""Tables for people: the per-epoch table of a run (terminal and Markdown) and plain text grids.

The per-epoch table is laid out like the comparison tables of the papers: one row per epoch
(or every k-th epoch), the columns of ``metrics.METRICS`` shown as each specifies (fractions in
percent, timings in seconds), and a final row for the test split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from medimg_cli.metrics import METRICS, f1_header

_CAPTION = "* best validation epoch; test = best checkpoint on the test split"


def make_console() -> Console:
    """A console for tables: the terminal's width, or a wide one when output is redirected."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def run_title(summary: Mapping[str, Any]) -> str:
    """The table title of a run, from the ``model``, ``data``, ``task`` and ``seed`` of its summary
    (and its synthetic training images: ``+ 273 synthetic`` or ``synthetic only``; its fusion of
    several modalities: ``cnn (late fusion of 2 modalities)``)."""
    mixed = summary.get("synthetic")
    extra = "" if not mixed else f" + {mixed['images']} synthetic" if mixed["mode"] == "add" else " on synthetic only"
    fused = summary.get("fusion")
    model = summary["model"] + (f" ({fused['fusion']} fusion of {fused['modalities']} modalities)" if fused else "")
    return f"{model} on {summary['data']}{extra} ({summary['task']}), seed {summary['seed']}"


def run_headers(summary: Mapping[str, Any]) -> dict[str, str]:
    """Column headers that depend on the run: which F1 it reports (``F1 % (pneumonia)``, ``macro F1 %``)."""
    if summary.get("f1_average") is None:
        return {}
    return {"f1": f1_header(summary["f1_average"], (summary.get("positive_class") or {}).get("name"))}


def select_rows(
    rows: Sequence[Mapping[str, Any]], every: int, best_epoch: int | None = None
) -> list[Mapping[str, Any]]:
    """Every ``every``-th epoch, the best epoch and the last epoch, in epoch order."""
    last = int(rows[-1]["epoch"]) if rows else None
    return [r for r in rows if int(r["epoch"]) % every == 0 or int(r["epoch"]) in (best_epoch, last)]


def _table_cells(
    rows: Sequence[Mapping[str, Any]],
    every: int,
    test: Mapping[str, Any] | None,
    best_epoch: int | None,
    headers: Mapping[str, str] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the table; columns without any value are left out. ``headers``
    (metric key -> header) replaces the specification's headers (``run_headers``)."""
    metrics = [m for m in METRICS if any(r.get(m.column) is not None for r in rows)]
    body = []
    for row in select_rows(rows, every, best_epoch):
        cells = [m.show(row.get(m.column)) for m in metrics]
        if best_epoch is not None and int(row["epoch"]) == best_epoch:
            cells[0] += "*"
        body.append(cells)
    if test:
        body.append(["test"] + [m.show(test.get(m.key)) if m.evaluated else "" for m in metrics[1:]])
    return [(headers or {}).get(m.key, m.header) for m in metrics], body


def rich_table(
    rows: Sequence[Mapping[str, Any]],
    every: int = 1,
    test: Mapping[str, Any] | None = None,
    best_epoch: int | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Table:
    """The per-epoch table for the terminal (``*`` marks the best epoch)."""
    columns, body = _table_cells(rows, every, test, best_epoch, headers)
    return grid_rich(columns, body, title, _CAPTION, sections=(len(body) - 2,) if test is not None else ())


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    every: int = 1,
    test: Mapping[str, Any] | None = None,
    best_epoch: int | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """The same table as ``rich_table``, in Markdown."""
    columns, body = _table_cells(rows, every, test, best_epoch, headers)
    return grid_markdown(columns, body, title, "\\" + _CAPTION)


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
