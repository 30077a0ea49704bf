"""The fusion table of the fusion experiment, from its runs' summary.json files and best.pt.

    python experiments/fusion/summarise.py runs/benchmark/fusion_phantom > results/fusion.md

One row per grid entry (the benchmark's ``model`` axis): the test split's
accuracy and AUC as mean +- sd over the seeds, a paired t-test of the AUC against early fusion
(seeds paired), and for the fused models the AUC with each modality blanked (set to 0, as
``medimg eval`` does for ``missing_modality.csv``): how much each relies on either modality.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medimg_cli.evaluation.modalities import missing_modality
from medimg_cli.reporting import find_jobs, group
from medimg_cli.reporting.stats import mean_sd, paired_t_test
from medimg_cli.trained import load_trained


def runs(folder: Path) -> dict[str, list[Path]]:
    """Grid entry -> its run folders, in seed order (``benchmark.json``'s ``model`` axis)."""
    jobs, _, order = find_jobs(folder)
    return {name: [job.folder for job in sorted(group_jobs, key=lambda job: job.seed)]
            for name, group_jobs in group(jobs, "model", order).items()}  # fmt: skip


def without_each(run: Path) -> dict[str, float]:
    """The test AUC with each modality blanked (two-modality runs only)."""
    payload, model, data, speed = load_trained(run / "checkpoints" / "best.pt", "cpu")
    if data.info.modalities < 2:
        return {}
    scratch = run / "missing_modality"
    scratch.mkdir(exist_ok=True)
    drops = missing_modality(scratch, model, data.test, data.info, speed, 256)
    return {name: drops["all"]["auc"] - drop["auc"] for name, drop in drops.items() if name != "all"}


def shown(values: list[float]) -> str:
    mean, sd = mean_sd([100 * v for v in values])
    return "" if mean != mean else f"{mean:.1f}" if sd is None else f"{mean:.1f} +- {sd:.1f}"


def main(folder: Path) -> None:
    grid = runs(folder)
    if "early" not in grid:
        raise SystemExit(f"{folder}: no finished early-fusion runs")
    tests = {name: [json.loads((r / "summary.json").read_text())["test"] for r in rs] for name, rs in grid.items()}
    early = [t["auc"] for t in tests["early"]]
    print(f"Test split, mean +- sd over {len(early)} seeds (%); p: paired t-test of the AUC against early fusion.")
    print("Without: the AUC with that modality blanked at test time.\n")
    print("| model | accuracy % | AUC % | p (AUC) | AUC without modality 1 % | AUC without modality 2 % |")
    print("|---|---|---|---|---|---|")
    for name, runs_of in grid.items():
        auc = [t["auc"] for t in tests[name]]
        p = "" if name == "early" else f"{paired_t_test(auc, early).p:.2g}"
        missing = [without_each(run) for run in runs_of]
        cells = [shown([m[k] for m in missing]) if missing[0] else "" for k in ("modality_1", "modality_2")]
        print(
            f"| {name} | {shown([t['accuracy'] for t in tests[name]])} | {shown(auc)} | {p} | "
            + " | ".join(cells)
            + " |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
