"""The tables of a federated run: the global model per round (``medimg train``'s layout, rows =
rounds), each site's validation per round, and the comparison with the baselines on the pooled
and per-site test splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medimg_cli.metrics import METRICS, Metric
from medimg_cli.tables import grid_markdown, grid_rich

ROUND_HEADERS = {"epoch": "round", "epoch_seconds": "round s"}
HEADLINE = ("accuracy", "auc", "dice")  # the comparison's metrics, those the task has


def monitored(monitor: str) -> Metric:
    """The ``metrics.METRICS`` entry of the ``trainer.monitor`` column."""
    return next(m for m in METRICS if m.column == monitor)


def site_cells(
    history: Sequence[Mapping[str, Any]], sites: Sequence[str], monitor: str, tests: Mapping[str, Mapping], shown: set
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the per-site table: the global model's ``monitor`` on each site's val
    split in the rounds ``shown`` (``history``: ``sites.csv`` rows), then each site's test row."""
    metric = monitored(monitor)
    by_round: dict[int, dict[str, Any]] = {}
    for row in history:
        if int(row["round"]) in shown:
            by_round.setdefault(int(row["round"]), {})[row["site"]] = row.get(monitor)
    body = [[str(r)] + [metric.show(values.get(site)) for site in sites] for r, values in sorted(by_round.items())]
    if tests:
        body.append(["test"] + [metric.show(tests.get(site, {}).get(metric.key)) for site in sites])
    return ["round", *(f"{site} {metric.header}" for site in sites)], body


def comparison_cells(results: Mapping[str, Mapping[str, Mapping]], sites: Sequence[str]) -> tuple[list, list]:
    """Headers and rows of the comparison: one row per model (``results``: name -> ``{"pooled":
    test metrics, <site>: test metrics}``), the headline metrics on the pooled test split, then
    the first headline on each site's."""
    first = next(iter(results.values()))["pooled"]
    shown = [m for m in METRICS if m.key in HEADLINE and first.get(m.key) is not None]
    headers = [f"pooled {m.header}" for m in shown] + [f"{site} {shown[0].header}" for site in sites]
    body = [
        [name]
        + [m.show(result["pooled"].get(m.key)) for m in shown]
        + [shown[0].show(result.get(site, {}).get(shown[0].key)) for site in sites]
        for name, result in results.items()
    ]
    return ["model", *headers], body


def site_tables(
    history: Sequence[Mapping], sites: Sequence[str], monitor: str, tests: Mapping, results: Mapping, shown: set
) -> tuple[list, str]:
    """The per-site and comparison tables as rich tables (for the terminal) and as Markdown;
    ``shown``: the rounds the global table shows (``tables.select_rows``)."""
    title = f"per site: the global model's {monitored(monitor).title} on each site's val split"
    title += ", then test" if tests else ""
    headers, body = site_cells(history, sites, monitor, tests, shown)
    sections = (len(body) - 2,) if tests else ()  # a rule above the test row
    tables, markdown = [grid_rich(headers, body, title, sections=sections)], grid_markdown(headers, body, title)
    if results:
        title = "the federated model against centralised training (pooled data) and each site alone, on test"
        headers, body = comparison_cells(results, sites)
        tables.append(grid_rich(headers, body, title))
        markdown += "\n" + grid_markdown(headers, body, title)
    return tables, markdown
