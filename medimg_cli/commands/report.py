"""``medimg report <folder>``: the per-epoch table of a run, or the mean +- sd table of a sweep.

medimg report runs/2026-11-21/10-00-00 --every 10        # a run: rewrites its table.md
medimg report runs/multirun/2026-11-21/10-00-00           # a sweep: summary.md and summary.csv
medimg report runs/multirun/... --by augment --out results/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medimg_cli.errors import ConfigError
from medimg_cli.hydra_app import print_error
from medimg_cli.results import (
    grid_markdown,
    grid_rich,
    make_console,
    markdown_table,
    read_metrics_csv,
    rich_table,
    run_title,
    write_atomic,
)
from medimg_cli.sweeps import read_jobs, records_csv, summarize, sweep_order, varying_keys

HELP = "print and write the per-epoch table of a run, or the mean +- sd table of a sweep folder"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medimg report", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("run", type=Path, help="a run folder, or a sweep folder (medimg train -m)")
    parser.add_argument("--every", type=int, default=None, help="row step (default: the run's trainer.table_every)")
    parser.add_argument(
        "--by", nargs="+", default=None, help="sweep: group by these override keys (default: all that vary but seed)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="sweep: folder for summary.md/csv (default: the sweep folder)"
    )
    args = parser.parse_args(argv)

    metrics_path = args.run / "metrics.csv"
    if not metrics_path.is_file():
        if args.run.is_dir() and any((p / ".hydra").is_dir() for p in args.run.iterdir()):
            try:
                return _sweep(args.run, args.by, args.out or args.run)
            except ConfigError as error:
                print_error("report", str(error))
                return 2
        print_error("report", f"{metrics_path} does not exist; pass a run or sweep folder written by medimg train")
        return 2
    rows = read_metrics_csv(metrics_path)
    summary_path = args.run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    every = args.every or _table_every(args.run)
    if every < 1:
        print_error("report", f"--every {every} must be >= 1")
        return 2
    title = run_title(summary) if summary else str(args.run)
    test, best = summary.get("test"), summary.get("best_epoch")
    make_console().print(rich_table(rows, every, test, best, title=title))
    write_atomic(args.run / "table.md", markdown_table(rows, every, test, best, title=title))
    return 0


def _sweep(folder: Path, by: list[str] | None, out: Path) -> int:
    """Print and write ``summary.md`` / ``summary.csv`` of a sweep folder."""
    jobs, unfinished = read_jobs(folder)
    by = by or varying_keys(jobs) or ["seed"]
    headers, body, records = summarize(jobs, by, sweep_order(folder))
    devices = sorted({job["summary"]["device"] for job in jobs})
    title = f"{len(jobs)} runs of {folder.name}: test metrics, mean ± sd over seeds"
    caption = f"device: {', '.join(devices)}" + (
        f"; {len(unfinished)} unfinished job(s) left out" if unfinished else ""
    )
    make_console().print(grid_rich(headers, body, title, caption))
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "summary.md", grid_markdown(headers, body, title, caption))
    write_atomic(out / "summary.csv", records_csv(records))
    return 0


def _table_every(run: Path) -> int:
    """``trainer.table_every`` from the run's ``config.yaml``, else 1."""
    from omegaconf import OmegaConf

    config = run / "config.yaml"
    if config.is_file():
        return int(OmegaConf.select(OmegaConf.load(config), "trainer.table_every", default=1))
    return 1
