"""Tables of the federated_sites experiment from its run folders' summary.json files.

    python experiments/federated_sites/summarise.py runs/benchmark/federated_sites experiments/federated_sites/results

Per dataset, one row per method (FedAvg, FedProx, centralised, each site alone) and, over the
seeds, mean +- sd of the pooled test split's accuracy and AUC and of the per-site test accuracy
(mean over sites and the worst site; a local model counts on its own site), then paired t-tests
of each method against FedAvg (seeds paired; n = 3, so only large gaps can show). Writes
``summary.md``, ``runs.csv`` (one row per method, seed and metric) and each dataset's seed-0
tables (``<dataset>_<strategy>_seed0.md``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from medimg_cli.reporting.stats import mean_sd, paired_t_test

COLUMNS = {
    "pooled_accuracy": "pooled acc %",
    "pooled_auc": "pooled AUC %",
    "site_accuracy": "mean site acc %",
    "worst_site_accuracy": "worst site acc %",
}


def scores(pooled: list[dict], per_site: list[float]) -> dict[str, float]:
    """A method's numbers in one seed: the mean over its models on the pooled test split, and its
    accuracy on each site's test split."""
    return {
        "pooled_accuracy": sum(p["accuracy"] for p in pooled) / len(pooled),
        "pooled_auc": sum(p["auc"] for p in pooled) / len(pooled),
        "site_accuracy": sum(per_site) / len(per_site),
        "worst_site_accuracy": min(per_site),
    }


def methods(folder: Path, seed: int) -> dict[str, dict[str, float]]:
    """Every method's scores in one seed of one dataset."""
    fedavg = json.loads((folder / f"fedavg_seed{seed}" / "summary.json").read_text())
    fedprox = json.loads((folder / f"fedprox_seed{seed}" / "summary.json").read_text())
    sites = list(fedavg["federated"]["sites"])
    found = {}
    for name, summary in (("FedAvg", fedavg), ("FedProx", fedprox)):
        tests = summary["federated"]["site_test"]
        found[name] = scores([summary["test"]], [tests[s]["accuracy"] for s in sites])
    comparison = fedavg["federated"]["comparison"]
    central = comparison["centralised"]
    found["centralised"] = scores([central["pooled"]], [central[s]["accuracy"] for s in sites])
    local = [comparison[f"local {s}"] for s in sites]
    own = [model[site]["accuracy"] for model, site in zip(local, sites, strict=True)]  # each on its own site
    found["each site alone"] = scores([m["pooled"] for m in local], own)
    return found


def dataset_table(name: str, folder: Path, seeds: list[int]) -> tuple[list[str], list[str]]:
    """The Markdown lines of one dataset's table and its rows of ``runs.csv``."""
    per_seed = {seed: methods(folder, seed) for seed in seeds}
    names = list(per_seed[seeds[0]])
    lines = [f"**{name}** ({len(seeds)} seeds: mean ± sd)", "", "| method | " + " | ".join(COLUMNS.values()) + " |"]
    lines.append("|---|" + "---:|" * len(COLUMNS))
    csv_rows = []
    for method in names:
        cells = []
        for key in COLUMNS:
            values = [per_seed[s][method][key] for s in seeds]
            mean, sd = mean_sd(values)
            cells.append(f"{100 * mean:.1f} ± {100 * (sd or 0):.1f}")
            csv_rows += [f"{name},{method},{s},{key},{v:.6f}" for s, v in zip(seeds, values, strict=True)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Paired t-tests against FedAvg (difference in points, 95% CI, p):", ""]
    for method in names[1:]:
        tests = []
        for key in ("pooled_accuracy", "worst_site_accuracy"):
            test = paired_t_test([per_seed[s][method][key] for s in seeds], [per_seed[s]["FedAvg"][key] for s in seeds])
            interval = test.not_applicable or f"[{100 * test.low:+.1f}, {100 * test.high:+.1f}], p = {test.p:.2g}"
            tests.append(f"{COLUMNS[key]} {100 * test.mean:+.1f} ({interval})")
        lines.append(f"- {method}: " + "; ".join(tests))
    return lines, csv_rows


def main(bench: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines, rows = [], ["dataset,method,seed,metric,value"]
    for folder in sorted(p for p in bench.iterdir() if p.is_dir()):
        seeds = sorted(int(p.name.rsplit("seed", 1)[1]) for p in folder.glob("fedavg_seed*"))
        table, csv_rows = dataset_table(folder.name, folder, seeds)
        lines += [*table, ""]
        rows += csv_rows
        for strategy in ("fedavg", "fedprox"):
            shutil.copy(folder / f"{strategy}_seed0" / "table.md", out / f"{folder.name}_{strategy}_seed0.md")
    (out / "summary.md").write_text("\n".join(lines))
    (out / "runs.csv").write_text("\n".join(rows) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
