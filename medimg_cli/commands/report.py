"""``medimg report <run folder>``: print the per-epoch table of a run and rewrite its ``table.md``.

medimg report runs/2026-11-21/10-00-00 --every 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medimg_cli.hydra_app import print_error
from medimg_cli.results import make_console, markdown_table, read_metrics_csv, rich_table, run_title, write_atomic

HELP = "print and write (table.md) the per-epoch table of a run folder"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medimg report", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("run", type=Path, help="a run folder written by medimg train")
    parser.add_argument("--every", type=int, default=None, help="row step (default: the run's trainer.table_every)")
    args = parser.parse_args(argv)

    metrics_path = args.run / "metrics.csv"
    if not metrics_path.is_file():
        print_error("report", f"{metrics_path} does not exist; pass a run folder written by medimg train")
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


def _table_every(run: Path) -> int:
    """``trainer.table_every`` from the run's ``config.yaml``, else 1."""
    from omegaconf import OmegaConf

    config = run / "config.yaml"
    if config.is_file():
        return int(OmegaConf.select(OmegaConf.load(config), "trainer.table_every", default=1))
    return 1
