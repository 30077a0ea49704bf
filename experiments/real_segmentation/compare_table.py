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


def main() -> None:
    runs, out = Path(sys.argv[1]), Path(sys.argv[2])
    found = sorted(p for p in runs.iterdir() if (p / "eval" / "test" / "metrics.csv").is_file())
    if not found:
        raise SystemExit(f"no evaluated runs in {runs}")
    lines = [
        "| dataset | input | seed | epochs | minutes | test Dice [95% CI] | Dice per class | HD95 | scored on |",
        "|---|---|---:|---:|---:|---|---|---:|---|",
    ]
    means: dict[tuple[str, str], list[float]] = {}
    for run in found:
        dataset, arm, seed = run.name.rsplit("_", 2)
        s = scores(run)
        means.setdefault((dataset, arm), []).append(s["dice"])
        lines.append(
            f"| {dataset} | {ARMS[arm]} | {seed[1:]} | {s['epochs']} | {s['minutes']:.1f} | {s['dice']:.3f} {s['ci']} "
            f"| {s['per_class'] or '-'} | {s['hd95']:.2f} {s['unit']} | {s['grid']} |"
        )
    if any(len(v) > 1 for v in means.values()):
        lines += ["", "| dataset | input | seeds | mean test Dice |", "|---|---|---:|---:|"]
        lines += [f"| {d} | {ARMS[a]} | {len(v)} | {statistics.mean(v):.3f} |" for (d, a), v in sorted(means.items())]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
