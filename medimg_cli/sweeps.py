"""Sweep summaries: the jobs of a ``medimg train -m`` folder grouped into mean +- sd rows.

A job is a sub-folder with ``summary.json`` and ``.hydra/overrides.yaml``. Jobs are grouped by
the overrides whose values differ between jobs, except ``seed`` (or by explicit keys), so
``augment=none,flip seed=0,1,2`` gives two rows of three runs each. Cells are the test
metrics of each job's best checkpoint, as mean +- sample standard deviation in percent, next
to the model's parameter count.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from medimg_cli.errors import ConfigError

METRICS = ("accuracy", "auc", "f1", "dice", "iou")  # test metrics shown, in this order, when present
HEADERS = {"accuracy": "acc %", "auc": "AUC %", "f1": "F1 %", "dice": "Dice %", "iou": "IoU %"}


def read_jobs(folder: Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """The finished jobs of a sweep folder (overrides, summary) and the unfinished job folders."""
    jobs, unfinished = [], []
    for job in sorted(p for p in folder.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()):
        if not (job / "summary.json").is_file():
            unfinished.append(job)
            continue
        overrides = OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        values = dict(item.lstrip("+~").split("=", 1) for item in overrides)
        jobs.append({"folder": job, "overrides": values, "summary": json.loads((job / "summary.json").read_text())})
    if not jobs:
        raise ConfigError(f"{folder}: no finished sweep jobs (sub-folders with summary.json and .hydra/)")
    return jobs, unfinished


def varying_keys(jobs: Sequence[dict[str, Any]]) -> list[str]:
    """Override keys whose value differs between jobs, except ``seed``, in command-line order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    return [k for k in keys if k != "seed" and len({job["overrides"].get(k) for job in jobs}) > 1]


def sweep_order(folder: Path) -> dict[str, list[str]]:
    """Each swept key's values in command-line order (``augment=none,flip`` -> ``[none, flip]``).

    Read from the sweep's ``multirun.yaml``; empty when it is absent. A folder that several
    sweeps wrote into keeps the last sweep's file.
    """
    path = folder / "multirun.yaml"
    if not path.is_file():
        return {}
    order = {}
    for item in OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task", default=None) or []:
        key, _, value = str(item).lstrip("+~").partition("=")
        if "," in value and not value.startswith(("[", "{")):  # a sweep, not one list value
            order[key] = value.split(",")
    return order


def summarize(
    jobs: Sequence[dict[str, Any]], by: Sequence[str], order: dict[str, list[str]] | None = None
) -> tuple[list[str], list[list[str]], list[dict]]:
    """Headers, Markdown cells and CSV records: one row per group of ``by`` values.

    Rows follow ``order`` (``sweep_order``: the command line's order of each key's values), then
    first-seen order for values it does not list.
    """
    order = order or {}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for job in jobs:
        groups.setdefault(tuple(job["overrides"].get(k, "") for k in by), []).append(job)

    def rank(key: tuple) -> tuple[int, ...]:
        listed = [order.get(k, []) for k in by]
        return tuple(values.index(v) if v in values else len(values) for values, v in zip(listed, key, strict=True))

    groups = dict(sorted(groups.items(), key=lambda item: rank(item[0])))  # stable: ties keep first-seen order
    metrics = [m for m in METRICS if any(job["summary"]["test"].get(m) is not None for job in jobs)]
    sized = all("parameters" in job["summary"] for job in jobs)  # runs written before sizes were recorded lack it
    headers = [*by, "runs", *(["parameters"] if sized else []), *(HEADERS[m] for m in metrics), "train min"]
    body, records = [], []
    for key, members in groups.items():
        record: dict[str, Any] = dict(zip(by, key, strict=True)) | {"runs": len(members)}
        cells = [*key, str(len(members))]
        if sized:  # equal within a group unless the grouping hides a size key
            sizes = sorted({job["summary"]["parameters"] for job in members})
            record["parameters"] = sizes[0] if len(sizes) == 1 else None
            cells.append(f"{sizes[0]:,}" if len(sizes) == 1 else f"{sizes[0]:,}-{sizes[-1]:,}")
        for metric in metrics:
            values = [100 * job["summary"]["test"][metric] for job in members]
            mean = statistics.fmean(values)
            sd = statistics.stdev(values) if len(values) > 1 else None  # undefined for one run
            record |= {f"{metric}_mean": mean, f"{metric}_sd": sd}
            cells.append(f"{mean:.1f} ± {sd:.1f}" if sd is not None else f"{mean:.1f}")
        minutes = statistics.fmean(job["summary"]["wall_seconds"] for job in members) / 60
        record["train_minutes"] = minutes
        body.append([*cells, f"{minutes:.1f}"])
        records.append(record)
    return headers, body, records


def records_csv(records: Sequence[dict[str, Any]]) -> str:
    """CSV text of ``summarize``'s records (numbers unrounded)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return text.getvalue()
