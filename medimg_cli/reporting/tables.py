"""The report's tables, as data: built from runs, rendered by ``render``.

- ``epoch_table``: the papers' layout (Gomathi and Roopa Chandrika, Tables 4-7): rows = epochs, columns = the
  values of one axis (models), cells = mean ± sd over seeds of the validation metric at that
  epoch, then a ``test`` row: the best checkpoint of each run on the test split.
- ``test_table``: one row per column value: n, size, test metrics, training time.
- ``comparison_table``: paired t-tests across seeds of the best column against each other
  column, per test metric, Holm-corrected; ``interval_table``: with one seed, bootstrap 95%
  CIs over test cases.
- ``published_table``: our mean ± sd beside published numbers (MedMNIST v2).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medimg_cli.metrics import BY_KEY, Metric, of_kind, quality_metrics
from medimg_cli.reporting.stats import bootstrap_ci, holm, mean_sd, paired_t_test
from medimg_cli.tables import run_headers

QUALITY = of_kind("quality")
TIMING = (BY_KEY["seconds_per_image"], BY_KEY["epoch_seconds"], BY_KEY["train_images_per_second"])
EPOCH_METRICS = QUALITY + TIMING + of_kind("loss")  # what the report tabulates and plots per epoch
PER_RUN = (  # facts of a whole run from summary.json, not per-epoch numbers
    Metric("parameters", "parameters", "parameters", "parameters", "run", style="{:,.0f}", higher=None, unit="count"),
    Metric(
        "flops_per_image", "flops_per_image", "GFLOPs/image", "GFLOPs/image", "run", 1e-9, "{:.3g}", None, unit="FLOPs"
    ),
    Metric(
        "peak_memory_mib", "peak_memory_mib", "peak MiB", "peak MiB", "run", style="{:,.0f}", higher=None, unit="MiB"
    ),
    Metric("wall_seconds", "wall_seconds", "train min", "train min", "run", 1 / 60, "{:.1f}", None, unit="s"),
)


@dataclass
class Table:
    """Text cells with the best cell of each row (or column) marked.

    Attributes:
        name: file-safe identifier (plots and anchors use it).
        bold: ``(row, column)`` positions of best cells.
        section: index of the first row after a rule (the ``test`` row), or ``None``.
    """

    name: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    bold: set[tuple[int, int]] = field(default_factory=set)
    section: int | None = None


Groups = Mapping[str, Sequence[Any]]  # column value -> its runs (reporting.Job)


def cell(metric: Metric, values: Sequence[float | None], count: int | None = None) -> tuple[str, float]:
    """``"85.3 ± 0.6"`` (``"(n=2)"`` appended when fewer than ``count`` values) and the mean."""
    mean, sd = mean_sd([v for v in values if v is not None])
    if math.isnan(mean):
        return "", math.nan
    text = metric.style.format(mean * metric.scale)
    if sd is not None:
        text += " ± " + metric.style.format(sd * metric.scale)
    present = sum(v is not None and not math.isnan(v) for v in values)
    if count is not None and present < count:
        text += f" (n={present})"
    return text, mean


def _mark_best(means: Sequence[float], higher: bool | None) -> list[int]:
    finite = [m for m in means if not math.isnan(m)]
    if higher is None or len(finite) < 2:
        return []
    best = max(finite) if higher else min(finite)
    return [i for i, m in enumerate(means) if m == best]


def metric_title(metric: Metric, jobs: Iterable[Any]) -> str:
    """``metric``'s title for these runs: which F1 they report (``F1 % (pneumonia)``, ``macro F1 %``),
    every one named when they differ."""
    if metric.key != "f1":
        return metric.title
    titles = sorted({run_headers(job.summary).get("f1", metric.title) for job in jobs})
    return titles[0] if len(titles) == 1 else f"{metric.title} ({'; '.join(titles)})"


def _header(value: str, jobs: Sequence[Any]) -> str:
    return f"{value} (n={len(jobs)})"


def epoch_table(name: str, metric: Metric, groups: Groups, epochs: Sequence[int]) -> Table:
    """Rows = ``epochs`` then ``test``; columns = groups; cells = mean ± sd over the group's runs."""
    every = [job for jobs in groups.values() for job in jobs]
    table = Table(name, metric_title(metric, every), ["epoch", *(_header(v, jobs) for v, jobs in groups.items())], [])
    for epoch in epochs:
        texts, means = [str(epoch)], []
        for jobs in groups.values():
            text, mean = cell(metric, [job.value(metric.column, epoch) for job in jobs], len(jobs))
            texts.append(text)
            means.append(mean)
        table.bold |= {(len(table.rows), 1 + i) for i in _mark_best(means, metric.higher)}
        table.rows.append(texts)
    if any(job.summary.get("test", {}).get(metric.key) is not None for jobs in groups.values() for job in jobs):
        texts, means = ["test"], []
        for jobs in groups.values():
            text, mean = cell(metric, [job.summary.get("test", {}).get(metric.key) for job in jobs], len(jobs))
            texts.append(text)
            means.append(mean)
        table.section = len(table.rows)
        table.bold |= {(len(table.rows), 1 + i) for i in _mark_best(means, metric.higher)}
        table.rows.append(texts)
    table.caption = (
        "Validation split at each epoch; test: each run's best checkpoint (by its monitor) on the test split. "
        "Mean ± sample sd over the n runs (seeds) of each column; bold: best mean of the row."
    )
    return table


def test_table(name: str, key: str, groups: Groups) -> Table:
    """One row per group: runs, size, every test metric present, training minutes."""
    every = [job for js in groups.values() for job in js]
    metrics = [m for m in QUALITY + TIMING[:1] if any(job.test(m.key) is not None for job in every)]
    sizes = [m for m in PER_RUN[:-1] if any(job.summary.get(m.key) is not None for job in every)]
    minutes = PER_RUN[-1]
    headers = [key, "runs", *(m.title for m in sizes), *(metric_title(m, every) for m in metrics), minutes.title]
    table = Table(name, "Test split, best checkpoints", headers, [])
    columns: list[list[float]] = []
    for value, jobs in groups.items():
        texts = [value, str(len(jobs))]
        means = []
        for metric in sizes:
            texts.append(cell(metric, [job.summary.get(metric.key) for job in jobs])[0].split(" ± ")[0])
        for metric in metrics:
            text, mean = cell(metric, [job.test(metric.key) for job in jobs], len(jobs))
            texts.append(text)
            means.append(mean)
        texts.append(cell(minutes, [job.summary.get(minutes.key) for job in jobs])[0].split(" ± ")[0])
        columns.append(means)
        table.rows.append(texts)
    offset = 2 + len(sizes)
    for index, metric in enumerate(metrics):
        for row in _mark_best([means[index] for means in columns], metric.higher):
            table.bold.add((row, offset + index))
    memory = {job.summary.get("peak_memory") for js in groups.values() for job in js} - {None}
    table.caption = (
        "Mean ± sample sd over the runs of each row; sizes and minutes are means. "
        + (f"Peak memory: {', '.join(sorted(memory))}. " if memory else "")
        + "Bold: best mean of the column."
    )
    return table


def comparison_table(name: str, groups: Groups, alpha: float) -> Table | None:
    """Paired t-tests across seeds: per test metric, the best group against each other group.

    Runs pair by seed (seeds in both groups); p-values are Holm-corrected over the comparisons
    of each metric. ``None`` when no two groups share two seeds.
    """
    metrics = [m for m in QUALITY if any(job.test(m.key) is not None for js in groups.values() for job in js)]
    headers = ["metric", "best", "vs", "n seeds", "difference", "95% CI", "p", "p (Holm)", f"p < {alpha:g}"]
    table = Table(name, "Paired comparisons across seeds (test split)", headers, [])
    for metric in metrics:
        seeds = {value: {job.seed: job.test(metric.key) for job in jobs} for value, jobs in groups.items()}
        means = {v: mean_sd(list(by_seed.values()))[0] for v, by_seed in seeds.items()}
        ranked = [v for v in means if not math.isnan(means[v])]
        if len(ranked) < 2:
            continue
        best = max(ranked, key=means.get) if metric.higher else min(ranked, key=means.get)
        tests = {}
        for other in ranked:
            shared = sorted(set(seeds[best]) & set(seeds[other]))
            if other != best and len(shared) >= 2:
                tests[other] = paired_t_test([seeds[best][s] for s in shared], [seeds[other][s] for s in shared])
        for (other, test), adjusted in zip(tests.items(), holm([t.p for t in tests.values()]), strict=True):
            row = [metric_title(metric, groups[best]), best, other, str(test.n), f"{test.mean * metric.scale:+.2f}"]
            if test.not_applicable:
                table.rows.append([*row, "n/a", f"n/a ({test.not_applicable})", "n/a", "n/a"])
                continue
            interval = f"[{test.low * metric.scale:+.2f}, {test.high * metric.scale:+.2f}]"
            table.rows.append([*row, interval, f"{test.p:.3g}", f"{adjusted:.3g}", "yes" if adjusted < alpha else "no"])
    if not table.rows:
        return None
    table.caption = (
        "Best: the group with the best mean test metric; difference = best - other (points), paired by seed "
        "(same split and initial state); two-sided paired t-test, 95% CI from the t distribution; p-values "
        "Holm-corrected over the comparisons of each metric. Few seeds give wide intervals: 'no' is not "
        "evidence of equality."
    )
    return table


def interval_table(name: str, groups: Groups, resamples: int) -> Table | None:
    """With one run per group: each test metric with a bootstrap 95% CI over the test cases."""
    headers = ["group", "metric", "test value", "95% CI", "n cases", "resamples"]
    table = Table(name, "Bootstrap 95% confidence intervals over test cases (one seed)", headers, [])
    for value, jobs in groups.items():
        cases = jobs[0].cases()
        if cases is None:
            continue
        count = len(next(iter(cases.values())))
        for metric, statistic in case_statistics(cases, jobs[0].summary).items():
            low, high, used = bootstrap_ci(statistic, count, resamples)
            point = jobs[0].test(metric.key)
            if point is None or math.isnan(low):
                continue
            s = metric.scale
            table.rows.append(
                [
                    value,
                    metric_title(metric, jobs),
                    f"{point * s:.1f}",
                    f"[{low * s:.1f}, {high * s:.1f}]",
                    str(count),
                    str(used),
                ]
            )
    if not table.rows:
        return None
    table.caption = (
        "Percentile bootstrap over the cases of the test split (test_predictions.csv of each run), "
        "resampled with replacement; resamples where a metric is undefined (one class) are left out."
    )
    return table


def case_statistics(
    cases: Mapping[str, np.ndarray], summary: Mapping[str, Any]
) -> dict[Metric, Callable[[np.ndarray], float]]:
    """Each test metric as a function of resampled case indices, computed as training computed it
    (F1 averaged as the run's ``summary.json`` says)."""
    tensors = {key: torch.from_numpy(values) for key, values in cases.items()}
    multilabel = "label" in tensors and tensors["label"].ndim == 2
    if "dice" in tensors:  # test_predictions.csv holds per-case means over the foreground classes
        tensors |= {key: tensors[key][:, None] for key in ("dice", "iou") if key in tensors}
    if "probs" in tensors:
        tensors["probs"] = tensors["probs"].float()

    average, positive = summary.get("f1_average") or "macro", (summary.get("positive_class") or {}).get("index")
    settings = (multilabel, average, positive)

    def statistic(indices: np.ndarray, key: str) -> float:
        return quality_metrics({name: values[indices] for name, values in tensors.items()}, *settings)[key]

    return {BY_KEY[key]: functools.partial(statistic, key=key) for key in quality_metrics(tensors, *settings)}


def published_table(
    name: str, jobs: Sequence[Any], published: Mapping, tolerance: float, changed: Sequence[str] = ()
) -> Table | None:
    """Our mean ± sd beside published test AUC and accuracy, per ``<model>@<size>`` cell of a dataset.

    A cell counts as reproduced when ``|our mean - published| <= tolerance`` for both metrics;
    ``changed`` (overrides that depart from the published protocol) is said on every row, since a
    "no" then says nothing about the paper.
    """
    cells: dict[tuple[str, str], list[Any]] = {}
    for job in jobs:
        dataset = job.config.get("data", {}).get("name")
        data = job.config.get("data", {})
        key = f"{job.summary['model']}@{data.get('upsample') or data.get('size')}"
        if key in published.get(dataset, {}):
            cells.setdefault((dataset, key), []).append(job)
    headers = [
        "dataset",
        "cell",
        "runs",
        "AUC % (ours)",
        "AUC % (paper)",
        "ACC % (ours)",
        "ACC % (paper)",
        "reproduced",
    ]
    table = Table(name, f"Against the published numbers (tolerance ±{100 * tolerance:.1f} points)", headers, [])
    for (dataset, key), members in cells.items():
        paper = published[dataset][key]
        texts, verdict = [dataset, key, str(len(members))], True
        for metric in ("auc", "accuracy"):
            text, mean = cell(BY_KEY[metric], [j.test(metric) for j in members])
            texts += [text, f"{100 * paper[metric]:.1f}"]
            verdict &= not math.isnan(mean) and abs(mean - paper[metric]) <= tolerance + 1e-12
        texts.append(("yes" if verdict else "no") + (f"; protocol changed: {', '.join(changed)}" if changed else ""))
        table.rows.append(texts)
    if not table.rows:
        return None
    table.caption = (
        "Published: MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023), test AUC/ACC, mean of >= 3 trials. "
        "Ours: mean ± sample sd over our runs of the cell. Reproduced: both means within the tolerance."
    )
    return table


def epochs_shown(jobs: Sequence[Any], every: int) -> list[int]:
    """Epochs that are multiples of ``every``, and the last epoch of the runs."""
    last = max((int(row["epoch"]) for job in jobs for row in job.rows), default=0)
    return [e for e in range(1, last + 1) if e % every == 0 or e == last]
