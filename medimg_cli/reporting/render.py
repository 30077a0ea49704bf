"""A ``tables.Table`` as Markdown, LaTeX (booktabs), rich and HTML, with the best cells in bold."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

from rich.markup import escape
from rich.table import Table as RichTable

from medimg_cli.reporting.tables import Table


def _cells(table: Table, bold: Callable[[str], str], plain: Callable[[str], str] = str) -> list[list[str]]:
    """The rows' texts through ``bold`` at best cells and ``plain`` elsewhere."""
    return [
        [bold(text) if (r, c) in table.bold and text else plain(text) for c, text in enumerate(row)]
        for r, row in enumerate(table.rows)
    ]


def markdown(table: Table) -> str:
    """Bold title, a right-aligned pipe table, the caption below."""
    lines = [f"**{table.title}**", ""]
    lines += ["| " + " | ".join(table.headers) + " |", "|" + "---:|" * len(table.headers)]
    lines += ["| " + " | ".join(row) + " |" for row in _cells(table, lambda t: f"**{t}**")]
    if table.caption:
        lines += ["", table.caption]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\~{}"}


def latex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped; ``±`` as ``$\\pm$``."""
    text = re.sub(r"[&%$#_{}~]", lambda m: _LATEX_SPECIAL[m.group()], text)
    return text.replace("±", r"$\pm$").replace("≤", r"$\le$")


def latex(table: Table) -> str:
    """A booktabs ``table`` environment; needs ``\\usepackage{booktabs}``."""
    columns = "l" + "r" * (len(table.headers) - 1)
    rows = _cells(table, lambda t: r"\textbf{" + latex_escape(t) + "}", latex_escape)
    body = []
    for index, row in enumerate(rows):
        if index == table.section:
            body.append(r"\midrule")
        body.append(" & ".join(row) + r" \\")
    return "\n".join(
        [
            r"\begin{table}[ht]",
            r"\centering",
            r"\caption{" + latex_escape(table.title) + ". " + latex_escape(table.caption) + "}",
            r"\label{tab:" + table.name + "}",
            r"\begin{tabular}{" + columns + "}",
            r"\toprule",
            " & ".join(latex_escape(h) for h in table.headers) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    )


def rich(table: Table) -> RichTable:
    """The table for the terminal."""
    out = RichTable(title=escape(table.title), caption=escape(table.caption) or None)
    for header in table.headers:
        out.add_column(escape(header), justify="right", no_wrap=True)
    for r, row in enumerate(table.rows):
        cells = [f"[bold]{escape(t)}[/bold]" if (r, c) in table.bold else escape(t) for c, t in enumerate(row)]
        out.add_row(*cells, end_section=table.section is not None and r == table.section - 1)
    return out


def html_table(table: Table) -> str:
    """An HTML ``<table>`` with caption; best cells in ``<b>``."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    rows = []
    for r, row in enumerate(table.rows):
        cells = "".join(
            f"<td><b>{html.escape(t)}</b></td>" if (r, c) in table.bold and t else f"<td>{html.escape(t)}</td>"
            for c, t in enumerate(row)
        )
        rule = ' class="rule"' if r == table.section else ""
        rows.append(f"<tr{rule}>{cells}</tr>")
    return (
        f'<table id="{table.name}"><caption><b>{html.escape(table.title)}</b></caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<p class="note">{html.escape(table.caption)}</p>'
    )
