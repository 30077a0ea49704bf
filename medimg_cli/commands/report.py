"""``medimg report <folder>``: the per-epoch table of a run, or the comparison report of many.

    medimg report runs/2026-11-21/10-00-00 --every 10     # a run: rewrites its table.md
    medimg report runs/multirun/2026-11-21/10-00-00        # a sweep (medimg train -m): full report
    medimg report runs/benchmark/seed_comparison           # a benchmark folder: its report again
    medimg report runs/multirun/... --columns augment --out results/

The report of many runs is ``medimg_cli.reporting``'s: tables.md, tables.tex, results.csv,
plots/ and report.html, the same as ``medimg benchmark`` writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medimg_cli.errors import ConfigError
from medimg_cli.fileio import write_atomic
from medimg_cli.hydra_app import print_error
from medimg_cli.results import read_metrics_csv
from medimg_cli.tables import make_console, markdown_table, rich_table, run_headers, run_title

HELP = "print and write the per-epoch table of a run, or the tables, statistics and plots of a folder of runs"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medimg report", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("run", type=Path, help="a run folder, or a folder of runs (sweep, benchmark)")
    parser.add_argument(
        "--every", type=int, default=None, help="epoch row step (default: a run's trainer.table_every; runs: 10)"
    )
    parser.add_argument("--columns", default=None, help="runs: the axis whose values are the columns (model)")
    parser.add_argument("--out", type=Path, default=None, help="runs: folder for the report (default: the folder)")
    args = parser.parse_args(argv)

    metrics_path = args.run / "metrics.csv"
    if not metrics_path.is_file():
        if args.run.is_dir():
            try:
                return _many(args.run, args.columns, args.every, args.out or args.run)
            except ConfigError as error:
                print_error("report", str(error))
                return 2
        print_error("report", f"{args.run} is not a folder; pass a run folder or a folder of runs")
        return 2
    rows = read_metrics_csv(metrics_path)
    summary_path = args.run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    every = args.every or _table_every(args.run)
    if every < 1:
        print_error("report", f"--every {every} must be >= 1")
        return 2
    title, headers = (run_title(summary), run_headers(summary)) if summary else (str(args.run), None)
    test, best = summary.get("test"), summary.get("best_epoch")
    make_console().print(rich_table(rows, every, test, best, title=title, headers=headers))
    write_atomic(args.run / "table.md", markdown_table(rows, every, test, best, title=title, headers=headers))
    return 0


def _many(folder: Path, columns: str | None, every: int | None, out: Path) -> int:
    """Write the report of the finished runs below ``folder`` (a benchmark's settings when it is one)."""
    from medimg_cli.benchmark.experiment import override_note
    from medimg_cli.reporting import find_jobs, write_report  # numpy, scipy, matplotlib
    from medimg_cli.sweeps import optuna_note

    jobs, unfinished, order = find_jobs(folder)
    record = folder / "benchmark.json"
    saved = json.loads(record.read_text()) if record.is_file() else {}
    settings = dict(saved.get("report", {}))
    if columns is None and "columns" not in settings:
        keys = list(dict.fromkeys(k for job in jobs for k in job.axes if k != "seed"))
        columns = "model" if "model" in keys or not keys else keys[0]
    settings |= {k: v for k, v in (("columns", columns), ("every", every)) if v is not None}
    title = f"{saved['name']}: {saved['description']}" if saved else f"{len(jobs)} runs in {folder}"
    notes = [f"{len(unfinished)} unfinished run(s) left out"] if unfinished else []
    notes += override_note(saved.get("overrides", []))
    notes += optuna_note(folder)
    write_report(jobs, out, settings, title, order, notes)
    return 0


def _table_every(run: Path) -> int:
    """``trainer.table_every`` from the run's ``config.yaml``, else 1."""
    from omegaconf import OmegaConf

    config = run / "config.yaml"
    if config.is_file():
        return int(OmegaConf.select(OmegaConf.load(config), "trainer.table_every", default=1))
    return 1
