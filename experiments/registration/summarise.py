"""The before/after table of the registration experiment from its runs' summary.json files.

    python experiments/registration/summarise.py runs/benchmark/registration_phantom > results/registration.md

One row per grid model (the benchmark's ``model`` axis) and one for no
registration (the identity: the pairs as they are, ``summary.json``'s ``identity``; its field folds nothing
and stretches evenly, so its folding and Jacobian sd are 0), with the
test split's warped-label Dice, HD95 (pixels), landmark TRE (pixels), folding ratio and Jacobian determinant sd as mean
+- sd over the seeds, then a paired t-test of each model's Dice against the identity's (seeds
paired; the identity is the same every seed, so the test asks whether the gain is consistent).
"""

from __future__ import annotations

import sys
from pathlib import Path

from medimg_cli.reporting import find_jobs, group
from medimg_cli.reporting.stats import mean_sd, paired_t_test

COLUMNS = {
    "dice": ("Dice %", 100),
    "hd95": ("HD95 px", 1),
    "tre": ("TRE px", 1),
    "folding": ("folding %", 100),
    "jacobian_std": ("Jac sd", 1),
}


def runs(folder: Path) -> dict[str, list[dict]]:
    """Grid model name -> its runs' summaries, in seed order (``benchmark.json``'s axes)."""
    jobs, _, order = find_jobs(folder)
    return {name: [job.summary for job in sorted(group_jobs, key=lambda job: job.seed)]
            for name, group_jobs in group(jobs, "model", order).items()}  # fmt: skip


def shown(values: list[float], scale: float) -> str:
    mean, sd = mean_sd([v * scale for v in values])
    return f"{mean:.2f}" if sd is None else f"{mean:.2f} +- {sd:.2f}"


def main(folder: Path) -> None:
    grid = runs(folder)
    if not grid:
        raise SystemExit(f"{folder}: no finished runs")
    identity = next(iter(grid.values()))[0]["identity"]
    seeds = len(next(iter(grid.values())))
    print(f"Test split, mean +- sd over {seeds} seeds; p: paired t-test of the Dice against no registration.\n")
    print("| method | " + " | ".join(title for title, _ in COLUMNS.values()) + " | p (Dice) |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    cells = [f"{identity['dice'] * 100:.2f}", f"{identity['hd95']:.2f}", f"{identity['tre']:.2f}", "0", "0"]
    print("| no registration (identity) | " + " | ".join(cells) + " | |")
    for name, summaries in grid.items():
        tests = [s["test"] for s in summaries]
        cells = [shown([t[key] for t in tests], scale) for key, (_, scale) in COLUMNS.items()]
        p = paired_t_test([t["dice"] for t in tests], [identity["dice"]] * len(tests)).p
        print(f"| {name} | " + " | ".join(cells) + f" | {p:.2g} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
