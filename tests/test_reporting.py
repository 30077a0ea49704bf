"""Reports of many runs, on constructed run folders with known numbers: the tables' layout and
cells, LaTeX, tidy CSV, the statistics (against hand-computed answers), the published-number
comparison, and the HTML report as headless Chromium renders it."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from medimg_cli.commands.report import main as report
from medimg_cli.reporting import find_jobs, write_report
from medimg_cli.reporting.stats import bootstrap_ci, holm, paired_t_test
from medimg_cli.reporting.tables import published_table
from medimg_cli.results import write_metrics_csv


def fake_run(folder: Path, overrides: list[str], seed: int, model: str, accuracy: list[float], test: dict, **extra):
    """A finished run folder as ``medimg train`` writes it, with validation accuracy per epoch."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    config = extra.pop("config", {"model": {"name": model}, "seed": seed})
    (folder / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    rows = [
        {"epoch": e + 1, "val_accuracy": a, "val_loss": 1 - a, "epoch_seconds": 2.0 + seed, "seconds_per_image": 1e-3}
        for e, a in enumerate(accuracy)
    ]
    write_metrics_csv(folder / "metrics.csv", rows)
    summary = {"model": model, "data": "phantom", "task": "classification", "seed": seed, "test": test}
    summary |= {"best_epoch": len(rows), "wall_seconds": 120.0, "device": "cpu (test)", "parameters": 1000, **extra}
    (folder / "summary.json").write_text(json.dumps(summary))


# validation accuracy per epoch, then test accuracy, for 2 models x 3 seeds
CURVES = {
    "cnn": [([0.50, 0.60, 0.70, 0.80], 0.81), ([0.52, 0.64, 0.72, 0.84], 0.83), ([0.48, 0.62, 0.74, 0.82], 0.85)],
    "unet": [([0.40, 0.50, 0.60, 0.70], 0.71), ([0.42, 0.56, 0.62, 0.72], 0.70), ([0.44, 0.58, 0.66, 0.76], 0.78)],
}


@pytest.fixture
def sweep(tmp_path):
    """A Hydra multirun folder of 6 constructed runs, plus one unfinished."""
    for model, seeds in CURVES.items():
        for seed, (accuracy, test) in enumerate(seeds):
            folder = tmp_path / "sweep" / f"{model}{seed}"
            fake_run(folder, [f"model={model}", f"seed={seed}"], seed, model, accuracy, {"accuracy": test})
    (tmp_path / "sweep" / "broken" / ".hydra").mkdir(parents=True)
    (tmp_path / "sweep" / "broken" / ".hydra" / "overrides.yaml").write_text("- model=cnn\n- seed=9\n")
    (tmp_path / "sweep" / "broken" / "config.yaml").write_text("seed: 9\n")
    return tmp_path / "sweep"


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """``**title**`` -> rows of cells (header first) of every table in a tables.md."""
    found = {}
    for title, body in re.findall(r"\*\*(.+?)\*\*\n\n((?:\|.*\|\n)+)", text):
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in body.strip().splitlines()]
        found[title] = [rows[0], *rows[2:]]  # without the alignment line
    return found


def mean_sd_text(values: list[float], scale: float = 100) -> str:
    values = [v * scale for v in values]
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def test_report_of_a_sweep_lays_out_epochs_by_models_with_mean_and_sd(sweep):
    result = run_cli("report", str(sweep), "--every", "2")
    assert result.returncode == 0, result.stderr
    tables = markdown_tables((sweep / "tables.md").read_text())
    accuracy = tables["Accuracy %"]
    assert accuracy[0] == ["epoch", "cnn (n=3)", "unet (n=3)"]
    assert [row[0] for row in accuracy[1:]] == ["2", "4", "test"]  # every 2nd epoch, then test
    for row in accuracy[1:]:
        for column, model in enumerate(CURVES, start=1):
            if row[0] == "test":
                expected = mean_sd_text([test for _, test in CURVES[model]])
            else:
                expected = mean_sd_text([curve[int(row[0]) - 1] for curve, _ in CURVES[model]])
            assert row[column].strip("*") == expected
    assert accuracy[1][1] == "**62.0 ± 2.0**"  # the best mean of each row is bold
    test = tables["Test split, best checkpoints"]
    assert test[0][:3] == ["model", "runs", "parameters"] and test[1][:3] == ["cnn", "3", "1,000"]
    text = (sweep / "tables.md").read_text()
    assert "1 unfinished run(s) left out" in text and "seeds per group: 3" in text


def test_tidy_csv_has_one_row_per_run_epoch_and_metric(sweep):
    assert report([str(sweep)]) == 0
    with (sweep / "results.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["run", "model", "seed", "split", "epoch", "metric", "value", "unit"]
    val = [r for r in rows if r["split"] == "val" and r["metric"] == "accuracy"]
    assert len(val) == 6 * 4
    row = next(r for r in val if r["run"] == "unet1" and r["epoch"] == "2")
    assert float(row["value"]) == 0.56 and row["model"] == "unet" and row["seed"] == "1" and row["unit"] == "fraction"
    assert len([r for r in rows if r["split"] == "test"]) == 6
    assert {r["metric"] for r in rows if r["split"] == "run"} == {"parameters", "wall_seconds"}


def test_latex_tables_use_booktabs_and_bold_the_best_cell(sweep):
    assert report([str(sweep), "--every", "2"]) == 0
    tex = (sweep / "tables.tex").read_text()
    block = tex[tex.index(r"\caption{Accuracy \%") :]
    block = block[: block.index(r"\end{table}")]
    assert r"\toprule" in block and r"\bottomrule" in block and block.count(r"\midrule") == 2  # header, test row
    assert r"2 & \textbf{62.0 $\pm$ 2.0} & 54.7 $\pm$ 4.2 \\" in block


def test_paired_t_test_matches_the_hand_computed_answer():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641 with 2 degrees of freedom.
    # For 2 df the t distribution's CDF is 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - t / sqrt(2 + t^2),
    # and its 97.5% quantile is 0.95 / sqrt(2 * 0.975 * 0.025) = 4.30265.
    test = paired_t_test([3, 5, 7], [2, 3, 4])
    t = 2 / (1 / math.sqrt(3))
    assert test.n == 3 and test.mean == 2
    assert test.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
    assert (test.low, test.high) == pytest.approx((2 - half, 2 + half), rel=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "reason"),
    [([1, 2], [1, 2], "no variance"), ([2, 3], [1, 2], "no variance"), ([2], [1], "n < 2")],
    ids=["no difference at all", "the same difference every seed", "one pair"],
)
def test_a_paired_test_that_does_not_apply_says_why_instead_of_a_p_value(a, b, reason):
    test = paired_t_test(a, b)
    assert test.not_applicable == reason and test.mean == np.mean(np.subtract(a, b))
    assert math.isnan(test.p) and math.isnan(test.low) and math.isnan(test.high)
    adjusted = holm([0.01, test.p, 0.04])  # Holm corrects over the two real tests only
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


def test_holm_adjusts_step_down_and_keeps_the_order():
    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])
    assert holm([0.9, 0.9, 0.9]) == [1.0, 1.0, 1.0]


def test_bootstrap_ci_of_an_accuracy_matches_the_normal_approximation():
    correct = np.array([1] * 80 + [0] * 20)
    low, high, used = bootstrap_ci(lambda i: correct[i].mean(), 100, resamples=4000)
    half = 1.96 * math.sqrt(0.8 * 0.2 / 100)  # binomial standard error
    assert used == 4000
    assert low == pytest.approx(0.8 - half, abs=0.015) and high == pytest.approx(0.8 + half, abs=0.015)
    assert bootstrap_ci(lambda i: 0.5, 10, resamples=50)[:2] == (0.5, 0.5)
    undefined = bootstrap_ci(lambda i: math.nan if i[0] == 0 else 1.0, 5, resamples=500)
    assert 0 < undefined[2] < 500  # resamples where the metric is undefined are left out


def test_paired_comparison_in_the_report_is_holm_corrected(sweep, tmp_path):
    jobs, _, _ = find_jobs(sweep)
    # a third model with known differences to the best (cnn): 0.02, 0.03, 0.04 on seeds 0, 1, 2
    for seed, (curve, test) in enumerate(CURVES["cnn"]):
        fake_run(tmp_path / f"vit{seed}", ["model=vit"], seed, "vit", curve, {"accuracy": test - 0.02 - 0.01 * seed})
    jobs += find_jobs(tmp_path / "vit0")[0] + find_jobs(tmp_path / "vit1")[0] + find_jobs(tmp_path / "vit2")[0]
    for job in jobs:
        job.axes = {"model": job.summary["model"], "seed": str(job.seed)}
    tables = write_report(jobs, tmp_path / "report", {"columns": "model"})
    paired = next(t for t in tables[""] if t.title.startswith("Paired"))
    rows = {row[2]: row for row in paired.rows}
    assert set(rows) == {"unet", "vit"} and all(row[1] == "cnn" for row in rows.values())
    cnn = [test for _, test in CURVES["cnn"]]
    p_unet = paired_t_test(cnn, [test for _, test in CURVES["unet"]]).p
    p_vit = paired_t_test(cnn, [t - 0.02 - 0.01 * s for s, t in enumerate(cnn)]).p
    assert rows["vit"][3] == "3" and rows["vit"][4] == "+3.00"  # mean difference in points
    assert float(rows["unet"][6]) == pytest.approx(p_unet, rel=1e-2)
    assert [float(rows[m][7]) for m in ("unet", "vit")] == pytest.approx(holm([p_unet, p_vit]), rel=1e-2)


def test_one_seed_gets_bootstrap_intervals_from_the_test_cases(tmp_path):
    labels = [0] * 50 + [1] * 50
    probs = [0.2] * 40 + [0.7] * 10 + [0.9] * 45 + [0.4] * 5  # 85 of 100 right
    for model in ("cnn", "unet"):
        folder = tmp_path / "runs" / model
        fake_run(folder, [f"model={model}"], 0, model, [0.8, 0.85], {"accuracy": 0.85, "auc": 0.9})
        lines = ["case,label,prediction,p_0,p_1"]
        lines += [f"{i},{y},{int(p > 0.5)},{1 - p},{p}" for i, (y, p) in enumerate(zip(labels, probs, strict=True))]
        (folder / "test_predictions.csv").write_text("\n".join(lines) + "\n")
    jobs, _, _ = find_jobs(tmp_path / "runs")
    tables = write_report(jobs, tmp_path / "report", {"columns": "model", "bootstrap": 1000})
    intervals = next(t for t in tables[""] if t.title.startswith("Bootstrap"))
    row = next(r for r in intervals.rows if r[0] == "cnn" and r[1] == "Accuracy %")
    correct = np.array([int(p > 0.5) == y for y, p in zip(labels, probs, strict=True)], dtype=float)
    low, high, _ = bootstrap_ci(lambda i: correct[i].mean(), 100, 1000)
    assert row[2:] == ["85.0", f"[{100 * low:.1f}, {100 * high:.1f}]", "100", "1000"]


def test_published_numbers_are_marked_reproduced_within_the_tolerance(tmp_path):
    published = {"breastmnist": {"resnet18@28": {"auc": 0.901, "accuracy": 0.863}}}
    config = {"model": {"name": "resnet18"}, "data": {"name": "breastmnist", "size": 28, "upsample": None}}
    jobs = []
    for seed, (auc, acc) in enumerate([(0.89, 0.85), (0.91, 0.86)]):
        folder = tmp_path / f"r{seed}"
        fake_run(folder, [f"seed={seed}"], seed, "resnet18", [0.8], {"auc": auc, "accuracy": acc}, config=config)
        jobs += find_jobs(folder)[0]
    table = published_table("p", jobs, published, 0.02)
    assert table.rows == [["breastmnist", "resnet18@28", "2", "90.0 ± 1.4", "90.1", "85.5 ± 0.7", "86.3", "yes"]]
    assert published_table("p", jobs, published, 0.005).rows[0][-1] == "no"  # |85.5 - 86.3| > 0.5
    changed = published_table("p", jobs, published, 0.02, ["trainer.epochs"]).rows[0][-1]
    assert changed == "yes; protocol changed: trainer.epochs"


def test_report_of_a_folder_without_runs_says_so(tmp_path):
    result = run_cli("report", str(tmp_path))
    assert result.returncode == 2 and "no finished runs" in result.stderr


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_html_renders_in_headless_chromium_with_its_plots(sweep, tmp_path):
    assert report([str(sweep)]) == 0
    page = (sweep / "report.html").read_text()
    assert not re.search(r"(src|href)=\"https?:", page)  # self-contained: nothing to fetch
    without_images = tmp_path / "no_images.html"
    without_images.write_text(re.sub(r'<img src="data:image/png;base64,[^"]+"', '<img src=""', page))

    def render(path: Path, name: str) -> np.ndarray:
        shot = tmp_path / f"{name}.png"
        command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        subprocess.run(
            [*command, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()],
            capture_output=True,
            timeout=120,
            check=True,
        )
        return np.asarray(Image.open(shot).convert("L"), dtype=float)

    full, bare = render(sweep / "report.html", "full"), render(without_images, "bare")
    assert (full < 250).mean() > 0.02  # text, tables and plots drew something
    assert np.abs(full - bare).mean() > 1.0  # the embedded plots render
    dom = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (sweep / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert dom.count("<table") >= 4 and "cnn (n=3)" in dom and "Paired comparisons" in dom
