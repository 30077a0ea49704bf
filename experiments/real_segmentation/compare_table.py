"""The comparison table of compare.sh: native patches against resized whole images per dataset.

    .venv/bin/python experiments/real_segmentation/compare_table.py RUNS OUT.md

RUNS holds ``<dataset>_<arm>_s<seed>/`` run folders, each with ``summary.json`` and
``eval/test/metrics.csv`` (medimg eval). One row per run, then the mean over seeds per arm when
there are several.
"""

import csv
import json
import statistics
import sys
from pathlib import Path

import yaml

from medimg_cli.reporting.stats import paired_t_test

ARMS = {"native": "native, patches", "resize": "resized whole images"}


def scores(run: Path) -> dict[str, str | float]:
    """Test Dice (with its CI), Dice per class and HD95 from medimg eval; epochs and minutes."""
    rows = {(r["metric"], r["class"]): r for r in csv.DictReader((run / "eval" / "test" / "metrics.csv").open())}
    summary = json.loads((run / "summary.json").read_text())
    classes = sorted(c for m, c in rows if m == "dice" and c != "all")
    dice = rows["dice", "all"]
    unit = json.loads((run / "eval" / "test" / "metrics.json").read_text()).get("distance_unit", "")
    size = yaml.safe_load((run / "config.yaml").read_text())["data"]["image_size"]
    return {
        "grid": "native grid" if size is None else f"resized grid ({size} per axis)",
        "unit": unit,
        "dice": float(dice["value"]),
        "ci": f"[{float(dice['low']):.3f}, {float(dice['high']):.3f}]",
        "per_class": " / ".join(f"{float(rows['dice', c]['value']):.3f}" for c in classes),
        "hd95": float(rows["hd95", "all"]["value"]) if ("hd95", "all") in rows else float("nan"),
        "epochs": summary["epochs_trained"],
        "minutes": summary["wall_seconds"] / 60,
    }


def seed_summary(dice: dict[tuple[str, str], dict[str, float]]) -> list[str]:
    """Per dataset: mean ± sd of test Dice over seeds per arm, and the paired difference (native
    minus resize over the seeds both have) with its 95% CI and p (medimg's paired t-test)."""
    lines = [
        "",
        "| dataset | seeds | native Dice | resize Dice | native - resize [95% CI] | p |",
        "|---|---:|---|---|---|---:|",
    ]
    for dataset in sorted({d for d, _ in dice}):
        native, resize = dice.get((dataset, "native"), {}), dice.get((dataset, "resize"), {})
        seeds = sorted(set(native) & set(resize))
        if len(seeds) < 2:
            continue
        a, b = [native[k] for k in seeds], [resize[k] for k in seeds]
        test = paired_t_test(a, b)
        lines.append(
            f"| {dataset} | {len(seeds)} | {statistics.mean(a):.3f} ± {statistics.stdev(a):.3f} | "
            f"{statistics.mean(b):.3f} ± {statistics.stdev(b):.3f} | {test.mean:+.3f} [{test.low:+.3f}, "
            f"{test.high:+.3f}] | {test.p:.3f} |"
        )
    return lines if len(lines) > 3 else []


def main() -> None:
    runs, out = Path(sys.argv[1]), Path(sys.argv[2])
    found = sorted(p for p in runs.iterdir() if (p / "eval" / "test" / "metrics.csv").is_file())
    if not found:
        raise SystemExit(f"no evaluated runs in {runs}")
    lines = [
        "| dataset | input | seed | epochs | minutes | test Dice [95% CI] | Dice per class | HD95 | scored on |",
        "|---|---|---:|---:|---:|---|---|---:|---|",
    ]
    means: dict[tuple[str, str], dict[str, float]] = {}
    for run in found:
        dataset, arm, seed = run.name.rsplit("_", 2)
        s = scores(run)
        means.setdefault((dataset, arm), {})[seed] = s["dice"]
        lines.append(
            f"| {dataset} | {ARMS[arm]} | {seed[1:]} | {s['epochs']} | {s['minutes']:.1f} | {s['dice']:.3f} {s['ci']} "
            f"| {s['per_class'] or '-'} | {s['hd95']:.2f} {s['unit']} | {s['grid']} |"
        )
    lines += seed_summary(means)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
