"""``report.html``: every table and plot of a report in one file that needs no network.

Plots are embedded as base64 PNG data URIs and the style sheet is inline; there is no script.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from medimg_cli.reporting.render import html_table
from medimg_cli.reporting.tables import Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 70em;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0; font-variant-numeric: tabular-nums; }
caption { text-align: left; padding-bottom: 0.3em; }
th, td { padding: 0.25em 0.8em; text-align: right; border-bottom: 1px solid #e4e4e4; white-space: nowrap; }
th { border-bottom: 2px solid #444; } tr.rule td { border-top: 2px solid #444; }
td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: 0.85em; max-width: 60em; margin-top: 0.2em; }
.metric { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; margin-bottom: 1.5em; }
.wide { overflow-x: auto; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def page(
    title: str, facts: Sequence[str], tables: Mapping[str, Sequence[Table]], images: Mapping[str, Mapping[str, Path]]
) -> str:
    """The HTML text: facts, then per panel its tables, each metric table beside its plot."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<ul>" + "".join(f"<li>{html.escape(fact)}</li>" for fact in facts) + "</ul>",
    ]
    for name, found in tables.items():
        if name:
            parts.append(f"<h2>{html.escape(name)}</h2>")
        for table in found:
            image = images.get(name, {}).get(table.name)
            if image is None:
                parts.append(f'<div class="wide">{html_table(table)}</div>')
                continue
            data = base64.b64encode(image.read_bytes()).decode()
            alt = html.escape(f"{table.title} per epoch, mean and sd per group")
            parts.append(
                f'<div class="metric"><div>{html_table(table)}</div>'
                f'<img src="data:image/png;base64,{data}" alt="{alt}"></div>'
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
