"""Reports of groups of finished runs: the papers' comparison tables with honest statistics.

``write_report`` groups runs by one axis (the tables' columns, e.g. ``model``) and, when other
axes vary besides the seed, into panels (e.g. one per dataset), then writes into ``out``:

- ``tables.md``: per panel the test table, the statistics, and one table per metric (rows =
  epochs at ``every``, columns = groups, mean ± sd over seeds, then the test row);
- ``tables.tex``: the same tables in LaTeX (booktabs, best cell in bold);
- ``results.csv``: tidy, one row per run x split x epoch x metric;
- ``plots/*.png``: each metric against the epoch per group (± sd band);
- ``report.html``: all of it in one self-contained file (images embedded, no network).

Runs come from ``medimg benchmark`` (which knows its axes) or from any folder of runs
(``find_jobs``: a Hydra multirun folder, a benchmark folder, or runs collected by hand).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from medimg_cli.errors import ConfigError
from medimg_cli.fileio import csv_text, write_atomic
from medimg_cli.metrics import BY_KEY
from medimg_cli.reporting import render
from medimg_cli.reporting.html import page
from medimg_cli.reporting.plots import metric_plot
from medimg_cli.reporting.tables import (
    EPOCH_METRICS,
    PER_RUN,
    QUALITY,
    Table,
    comparison_table,
    epoch_table,
    epochs_shown,
    interval_table,
    metric_title,
    published_table,
    test_table,
)
from medimg_cli.results import read_cases_csv, read_metrics_csv
from medimg_cli.resume import neutral
from medimg_cli.tables import make_console

SETTINGS = {"columns": "model", "every": 10, "alpha": 0.05, "bootstrap": 2000, "published": {}, "tolerance": 0.02}
# What the protocol block states, as the runs' config.yaml has it: (label, dotted key).
PROTOCOL = (
    ("epochs", "trainer.epochs"), ("batch", "trainer.batch_size"), ("optimiser", "optim.name"), ("lr", "optim.lr"),
    ("weight decay", "optim.weight_decay"), ("schedule", "scheduler.name"), ("augmentation", "augment.name"),
    ("loss", "loss.name"), ("data", "data.name"), ("task", "data.task"), ("image size", "data.image_size"),
    ("MedMNIST size", "data.size"), ("upsampled to", "data.upsample"), ("model", "model.name"),
    ("pretrained", "model.pretrained"), ("monitor", "trainer.monitor"), ("precision", "trainer.precision"),
    ("seed", "seed"),
)  # fmt: skip


def protocol_lines(jobs: Sequence[Job]) -> list[str]:
    """``Protocol (as run): epochs 2; batch 128; ...``: every setting of ``PROTOCOL`` the runs have,
    with all the values they used, read from their saved configs (not from an experiment's text)."""
    parts = []
    for label, key in PROTOCOL:
        values = []
        for job in jobs:
            node: Any = job.config
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None and str(node) not in values:
                values.append(str(node))
        if values:
            parts.append(f"{label} {', '.join(sorted(values, key=lambda v: (len(v), v)))}")
    devices = sorted({job.summary.get("device", "?") for job in jobs})
    return [f"Protocol (as run): {'; '.join(parts)}", f"device: {'; '.join(devices)}"]


@dataclass
class Job:
    """A finished run: its folder, its values of the axes, and what it wrote."""

    folder: Path
    axes: dict[str, str]
    summary: dict[str, Any]
    rows: list[dict[str, float | None]]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.summary["seed"])

    @cached_property
    def _by_epoch(self) -> dict[int, dict[str, float | None]]:
        return {int(row["epoch"]): row for row in self.rows}

    def value(self, column: str, epoch: int) -> float | None:
        """``metrics.csv``'s ``column`` at ``epoch`` (``None`` when absent)."""
        return self._by_epoch.get(epoch, {}).get(column)

    def test(self, key: str) -> float | None:
        """A test metric of the best checkpoint (``loss`` included)."""
        return self.summary.get("test", {}).get(key)

    def cases(self) -> dict | None:
        """The per-case test predictions, or ``None`` for runs written before they were saved."""
        path = self.folder / "test_predictions.csv"
        return read_cases_csv(path) if path.is_file() else None

    def label(self, key: str) -> str:
        """This run's value of ``key``: an axis, else the summary's (``model``, ``data``)."""
        return str(self.axes.get(key, self.summary.get(key, "")))


def load_job(folder: Path, axes: Mapping[str, str]) -> Job:
    """Read a finished run folder (``summary.json``, ``metrics.csv``, ``config.yaml``)."""
    config = folder / "config.yaml"
    return Job(
        folder,
        dict(axes),
        json.loads((folder / "summary.json").read_text()),
        read_metrics_csv(folder / "metrics.csv"),
        OmegaConf.to_container(OmegaConf.load(config)) if config.is_file() else {},
    )


def find_jobs(root: Path) -> tuple[list[Job], list[Path], dict[str, list[str]]]:
    """The finished runs under ``root``, the unfinished run folders, and the axes' value order.

    A ``medimg benchmark`` folder lists its runs and axes in ``benchmark.json``. Elsewhere a run
    is any folder below ``root`` with ``.hydra/overrides.yaml``; its axes are the override keys
    whose values differ between runs (keys a resume may change left out), and their order is the
    command line's when ``multirun.yaml`` says it.
    """
    record = root / "benchmark.json"
    if record.is_file():
        runs = json.loads(record.read_text())["runs"]
        folders = {root / r["folder"]: r["axes"] for r in runs}
        order: dict[str, list[str]] = {}
        for axes in folders.values():
            for key, value in axes.items():
                values = order.setdefault(key, [])
                if value not in values:
                    values.append(value)
    else:
        folders = {}
        for overrides in sorted(root.rglob(".hydra/overrides.yaml")):
            if (overrides.parent.parent / "config.yaml").is_file():  # a train run, not a benchmark
                items = OmegaConf.to_container(OmegaConf.load(overrides)) or []
                values = dict(str(item).lstrip("+~").split("=", 1) for item in items if "=" in str(item))
                folders[overrides.parent.parent] = {k: v for k, v in values.items() if not neutral(k)}
        keys = list(dict.fromkeys(k for axes in folders.values() for k in axes))
        varying = [k for k in keys if len({axes.get(k) for axes in folders.values()}) > 1 or k == "seed"]
        folders = {folder: {k: axes.get(k, "") for k in varying} for folder, axes in folders.items()}
        order = _sweep_order(root)
    finished = [folder for folder in folders if (folder / "summary.json").is_file()]
    if not finished:
        raise ConfigError(f"{root}: no finished runs (folders with summary.json and .hydra/overrides.yaml) below it")
    jobs = [load_job(folder, folders[folder]) for folder in finished]
    return jobs, [f for f in folders if f not in finished], order


def _sweep_order(folder: Path) -> dict[str, list[str]]:
    """Each swept key's values in command-line order, from a sweep's ``multirun.yaml``."""
    path = folder / "multirun.yaml"
    if not path.is_file():
        return {}
    order = {}
    for item in OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task", default=None) or []:
        key, _, value = str(item).lstrip("+~").partition("=")
        if "," in value and not value.startswith(("[", "{")):  # a sweep, not one list value
            order[key] = value.split(",")
    return order


def group(jobs: Sequence[Job], key: str, order: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[Job]]:
    """Runs by their value of ``key``, in ``order``'s order of values, then first seen."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.label(key), []).append(job)
    listed = list((order or {}).get(key, []))
    rank = {value: listed.index(value) if value in listed else len(listed) for value in groups}
    return dict(sorted(groups.items(), key=lambda item: rank[item[0]]))


def write_report(
    jobs: Sequence[Job],
    out: Path,
    settings: Mapping[str, Any] | None = None,
    title: str = "",
    order: Mapping[str, Sequence[str]] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, list[Table]]:
    """Write every report file of ``jobs`` into ``out`` and print the tables; returns them by panel."""
    settings = {**SETTINGS, **(settings or {})}
    every = settings["every"]
    if not isinstance(every, int) or every < 1:
        raise ConfigError(f"report.every={every!r} must be a whole number >= 1")
    columns = settings["columns"]
    keys = list(dict.fromkeys(k for job in jobs for k in job.axes))
    if columns not in keys and columns not in jobs[0].summary:
        valid = [k for k in keys if k != "seed"] + ["model", "data"]
        raise ConfigError(f"report.columns={columns} is not an axis of these runs; valid: {', '.join(valid)}")
    panel_keys = [k for k in keys if k not in (columns, "seed") and len({j.axes.get(k) for j in jobs}) > 1]
    panels: dict[str, list[Job]] = {"": list(jobs)}
    for key in panel_keys:
        panels = {
            f"{name}, {key}={value}".lstrip(", "): members
            for name, part in panels.items()
            for value, members in group(part, key, order).items()
        }
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[Table]] = {}
    images: dict[str, dict[str, Path]] = {}
    for name, members in panels.items():
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "all"
        groups = group(members, columns, order)
        found = [test_table(f"{slug}-test", columns, groups)]
        found.append(
            comparison_table(f"{slug}-paired", groups, settings["alpha"])
            if any(len(js) > 1 for js in groups.values())
            else interval_table(f"{slug}-bootstrap", groups, settings["bootstrap"])
        )
        found.append(
            published_table(
                f"{slug}-published", members, settings["published"], settings["tolerance"], settings.get("changed", [])
            )
        )
        images[name] = {}
        for metric in EPOCH_METRICS:
            if not any(job.value(metric.column, int(r["epoch"])) is not None for job in members for r in job.rows):
                continue
            found.append(epoch_table(f"{slug}-{metric.key}", metric, groups, epochs_shown(members, every)))
            path = out / "plots" / f"{slug}-{metric.key}.png"
            metric_plot(path, metric, groups, f"{metric_title(metric, members)}{': ' + name if name else ''}")
            images[name][found[-1].name] = path
        tables[name] = [t for t in found if t is not None]
    facts = [
        f"{len(jobs)} finished runs; columns: {columns}; panels: {', '.join(panel_keys) or 'none'}; "
        f"seeds per group: {_seed_counts(panels, columns, order)}",
        *protocol_lines(jobs),
        *_case_counts(panels),
        *notes,
    ]
    _write_tables(out, tables, title, facts)
    write_atomic(out / "results.csv", tidy_csv(jobs))
    write_atomic(out / "report.html", page(title, facts, tables, images))
    console = make_console()
    for name, found in tables.items():
        if name:
            console.rule(name)
        for table in found:
            console.print(render.rich(table))
    console.print(f"report: {out / 'report.html'} (tables.md, tables.tex, results.csv, plots/)")
    return tables


def _case_counts(panels: Mapping[str, Sequence[Job]]) -> list[str]:
    """``test cases per run: 105`` per panel, from the runs' ``test_predictions.csv``."""
    counts = {}
    for name, members in panels.items():
        found = {
            len(p.read_text().splitlines()) - 1 for j in members if (p := j.folder / "test_predictions.csv").is_file()
        }
        if found:
            counts[name] = ", ".join(map(str, sorted(found)))
    return [f"test cases per run{' (' + name + ')' if name else ''}: {n}" for name, n in counts.items()]


def _seed_counts(panels: Mapping[str, Sequence[Job]], columns: str, order: Any) -> str:
    counts = sorted({len(js) for members in panels.values() for js in group(members, columns, order).values()})
    return ", ".join(map(str, counts))


def _write_tables(out: Path, tables: Mapping[str, Sequence[Table]], title: str, facts: Sequence[str]) -> None:
    markdown = [f"# {title or out.name}", "", *(f"- {fact}" for fact in facts), ""]
    latex = [f"% {title or out.name}", *(f"% {fact}" for fact in facts), "% needs \\usepackage{booktabs}", ""]
    for name, found in tables.items():
        if name:
            markdown += [f"## {name}", ""]
            latex += [f"% ---- {name}"]
        for table in found:
            markdown += [render.markdown(table)]
            latex += [render.latex(table)]
    write_atomic(out / "tables.md", "\n".join(markdown))
    write_atomic(out / "tables.tex", "\n".join(latex))


def tidy_csv(jobs: Sequence[Job]) -> str:
    """One row per run x split x epoch x metric: ``run``, the axes, ``seed``, ``split`` (val, test
    or run for per-run sizes), ``epoch`` (the best epoch for test), ``metric``, ``value`` and its
    ``unit`` (``fraction`` for the quality metrics, which the tables show in percent)."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.axes if k != "seed"))
    rows: list[list[Any]] = []
    for job in jobs:
        head = [job.folder.name, *(job.axes.get(k, "") for k in keys), job.seed]
        for row in job.rows:
            for metric in EPOCH_METRICS:
                if row.get(metric.column) is not None:
                    value = repr(row[metric.column])
                    rows.append([*head, "val", int(row["epoch"]), metric.key, value, metric.unit])
        for metric in (*QUALITY, BY_KEY["seconds_per_image"], BY_KEY["loss"]):
            if job.test(metric.key) is not None:
                value = repr(job.test(metric.key))
                rows.append([*head, "test", job.summary.get("best_epoch"), metric.key, value, metric.unit])
        for metric in PER_RUN:
            if job.summary.get(metric.key) is not None:
                rows.append([*head, "run", "", metric.key, repr(job.summary[metric.key]), metric.unit])
    return csv_text(["run", *keys, "seed", "split", "epoch", "metric", "value", "unit"], rows)
