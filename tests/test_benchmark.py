"""``medimg benchmark experiment=...``: grids of runs found by their config, skipped when finished,
resumed when killed, and reported; ``medimg report`` on a ``medimg train -m`` folder."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from hydra import initialize_config_module
from test_reporting import markdown_tables

from medimg_cli.benchmark import grid
from medimg_cli.benchmark.experiment import gpu_pool, split_arguments
from medimg_cli.errors import ConfigError
from medimg_cli.results import read_metrics_csv

# the seed_comparison grid on tiny phantoms (64 images) for a few epochs
TINY_GRID = ["data=phantom", "data.num_samples=64", "trainer.batch_size=16", "device=cpu"]


def benchmark(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("benchmark", "experiment=seed_comparison", *TINY_GRID, *args, cwd=cwd)


def said(result: subprocess.CompletedProcess) -> str:
    """Everything a command printed, with rich's line wrapping undone."""
    return " ".join((result.stdout + result.stderr).split())


def runs_of(folder: Path) -> dict[str, dict]:
    """The benchmark's runs from its benchmark.json: folder name -> axes."""
    record = json.loads((folder / "benchmark.json").read_text())
    return {run["folder"]: run["axes"] for run in record["runs"]}


def test_arguments_for_the_benchmark_config_and_for_the_runs_are_told_apart():
    argv = ["experiment=medmnist_v2", "data.name=pneumoniamnist", "data.root=/d", "benchmark.parallel=2", "seed=0,1"]
    own, runs = split_arguments([*argv, "--cfg", "job"])
    assert own == ["experiment=medmnist_v2", "data.name=pneumoniamnist", "benchmark.parallel=2", "--cfg", "job"]
    assert runs == ["data.root=/d", "seed=0,1"]  # medmnist_v2's config has data.name, not data.root
    own, runs = split_arguments(["experiment=seed_comparison", "data=phantom", "trainer.epochs=3", "report.every=1"])
    assert own == ["experiment=seed_comparison", "report.every=1"] and runs == ["data=phantom", "trainer.epochs=3"]


def test_grid_runs_are_found_by_their_resolved_config_not_their_folder(tmp_path):
    with initialize_config_module("medimg_cli.conf", version_base="1.3"):
        axes = {"model": ["cnn", "unet"], "data": {"a": ["data.image_size=32"], "b": ["data.image_size=48"]}}
        runs = grid.expand(["trainer.epochs=2"], axes, ["device=cpu"])
        assert [r.axes for r in runs] == [
            {"model": "cnn", "data": "a"},
            {"model": "cnn", "data": "b"},
            {"model": "unet", "data": "a"},
            {"model": "unet", "data": "b"},
        ]
        assert runs[1].overrides == ["trainer.epochs=2", "model=cnn", "data.image_size=48", "device=cpu"]
        assert runs[1].identity["data"]["image_size"] == 48 and runs[1].identity["trainer"]["epochs"] == 2
        assert "resume" not in runs[1].identity["trainer"]  # keys a resume may change do not count
        # a finished run under any folder name, an interrupted one, and a run of another config
        finished, interrupted = tmp_path / "renamed", tmp_path / "x"
        for folder, run in ((finished, runs[0]), (interrupted, runs[3])):
            (folder / "checkpoints").mkdir(parents=True)
            config = {**run.identity, "trainer": {**run.identity["trainer"], "resume": False}}
            (folder / "config.yaml").write_text(json.dumps(config))
            (folder / "checkpoints" / "last.pt").write_bytes(b"")
        (finished / "summary.json").write_text("{}")
        other = grid.expand(["trainer.epochs=3"], {"model": ["cnn"]})[0]
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "config.yaml").write_text(json.dumps(other.identity))
        grid.locate(runs, tmp_path)
        assert [r.state for r in runs] == ["finished", "new", "new", "interrupted"]
        assert runs[0].folder == finished and runs[3].folder == interrupted
        assert runs[1].folder.name.startswith("model-cnn_data-b-")
        assert grid.select(axes, "data", ["b"]) == {"b": ["data.image_size=48"]}
        with pytest.raises(ConfigError, match="unknown grid.data variant 'c'"):
            grid.select(axes, "data", ["c"])


@pytest.mark.slow
def test_seed_comparison_writes_every_format_with_numbers_from_the_runs(tmp_path):
    gpus = ["benchmark.gpus=[0,1]"]  # pinning only sets CUDA_VISIBLE_DEVICES; the runs are on the CPU here
    args = ["seed=0,1", "trainer.epochs=3", "report.every=2", "benchmark.parallel=2", *gpus]
    result = benchmark(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "runs" / "benchmark" / "seed_comparison"
    pinned = [(out / f / "train.out").read_text().splitlines()[0] for f in runs_of(out)]
    assert sorted(set(pinned)) == [f"medimg benchmark: CUDA_VISIBLE_DEVICES={g}" for g in (0, 1)]
    for name in ("tables.md", "tables.tex", "results.csv", "report.html", "plots/all-dice.png"):
        assert (out / name).is_file(), name
    runs = runs_of(out)
    assert len(runs) == 8 and {a["model"] for a in runs.values()} == {"cnn", "unet", "transformer", "hybrid"}
    tables = markdown_tables((out / "tables.md").read_text())
    models = ["cnn", "unet", "transformer", "hybrid"]
    for title, column, scale, style in (
        ("Dice %", "val_dice", 100, "{:.1f}"),
        ("Accuracy %", "val_accuracy", 100, "{:.1f}"),
        ("Epoch time, s", "epoch_seconds", 1, "{:.2f}"),
    ):
        table = tables[title]
        assert table[0] == ["epoch", *(f"{m} (n=2)" for m in models)]
        assert [row[0] for row in table[1:3]] == ["2", "3"]  # every 2nd epoch and the last
        for row in table[1:3]:
            for index, model in enumerate(models, start=1):
                values = [
                    scale
                    * next(r[column] for r in read_metrics_csv(out / f / "metrics.csv") if r["epoch"] == int(row[0]))
                    for f, axes in runs.items()
                    if axes["model"] == model
                ]
                expected = f"{style.format(statistics.fmean(values))} ± {style.format(statistics.stdev(values))}"
                assert row[index].strip("*") == expected, (title, row[0], model)
    assert "Paired comparisons across seeds (test split)" in tables
    text = (out / "tables.md").read_text()
    assert "overrides given to every run on the command line" in text
    # the experiment's description does not say 3 epochs: the title and the protocol block do
    assert "[protocol changed: " in text.splitlines()[0] and "trainer.epochs=3]" in text.splitlines()[0]
    assert "Protocol (as run): epochs 3; batch 16;" in text and "seed 0, 1" in text
    assert "command: medimg benchmark experiment=seed_comparison" in text
    assert r"\toprule" in (out / "tables.tex").read_text()
    # the same command again runs nothing and rewrites the same tables
    before = (out / "tables.md").read_text()
    again = benchmark(*args, cwd=tmp_path)  # the command line is in the report: the same one
    assert again.returncode == 0 and "8 finished, 0 to resume, 0 to start" in said(again)
    assert (out / "tables.md").read_text() == before


def _quality(out: Path) -> tuple[dict, list]:
    """The report's numbers that do not depend on timing."""
    tables = markdown_tables((out / "tables.md").read_text())
    keep = {t: rows for t, rows in tables.items() if t in ("Accuracy %", "F1 %", "AUC %", "Dice %", "IoU %")}
    with (out / "results.csv").open(newline="") as file:
        rows = [r for r in csv.DictReader(file) if not any(w in r["metric"] for w in ("second", "peak"))]
    return keep, sorted(tuple(r[k] for k in ("model", "seed", "split", "epoch", "metric", "value")) for r in rows)


@pytest.mark.slow
def test_a_killed_benchmark_resumes_and_reports_as_if_never_stopped(tmp_path):
    args = ["model=cnn", "seed=0,1,2", "trainer.epochs=12", "report.every=4"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    clean.mkdir()
    killed.mkdir()
    assert benchmark(*args, cwd=clean).returncode == 0
    out = killed / "runs" / "benchmark" / "seed_comparison"
    env = {**os.environ, "COLUMNS": "200"}
    command = [sys.executable, "-m", "medimg_cli", "benchmark", "experiment=seed_comparison", *TINY_GRID, *args]
    process = subprocess.Popen(
        command, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    second = None
    while time.monotonic() < deadline and process.poll() is None:  # kill once the second run has 1 epoch
        second = next(iter(out.glob("runs/*seed-1*/metrics.csv")), None)
        if second is not None and len(second.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the benchmark and its run, at once
    process.wait()
    assert second is not None, "the second run never started"
    first = next(out.glob("runs/*seed-0*"))
    stamp = (first / "summary.json").stat().st_mtime_ns
    epochs_done = len(read_metrics_csv(second))
    assert 1 <= epochs_done < 12 and not (second.parent / "summary.json").exists()
    killed_output = (second.parent / "train.out").read_text()

    result = benchmark(*args, cwd=killed)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 finished, 1 to resume, 1 to start" in said(result)
    assert (first / "summary.json").stat().st_mtime_ns == stamp  # the finished run was not run again
    log = (second.parent / "train.out").read_text()  # appended: the killed part's output is still there
    assert log.startswith(killed_output) and "resuming this run after an interruption" in log[len(killed_output) :]
    assert "resuming" in log
    assert _quality(out) == _quality(clean / "runs" / "benchmark" / "seed_comparison")


@pytest.mark.slow
def test_report_of_a_train_sweep_folder(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "train", "-m", "model=cnn,unet", "seed=0,1", "data.num_samples=64", "trainer.epochs=2",
        "trainer.batch_size=16", "device=cpu", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("report", str(sweep), "--every", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    tables = markdown_tables((sweep / "tables.md").read_text())
    assert tables["Dice %"][0] == ["epoch", "cnn (n=2)", "unet (n=2)"]
    test = tables["Test split, best checkpoints"]
    for row in test[1:]:
        summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
        dice = [100 * s["test"]["dice"] for s in summaries if s["model"] == row[0]]
        assert f"{statistics.fmean(dice):.1f} ± {statistics.stdev(dice):.1f}" in [c.strip("*") for c in row]
    assert (sweep / "report.html").is_file() and "Dice %" in result.stdout


def test_the_gpu_pool_fills_the_least_busy_gpu_first():
    assert grid.least_busy([0, 1, 2], []) == 0
    assert grid.least_busy([0, 1, 2], [0, 1]) == 2
    assert grid.least_busy([0, 1], [0, 1, 0]) == 1
    assert gpu_pool(None) == [] and gpu_pool([2, 3]) == [2, 3]
    with pytest.raises(ConfigError, match="must be null, all, or a list of GPU indices"):
        gpu_pool(["a"])


def test_benchmark_mistakes_get_one_line(tmp_path):
    result = run_cli("benchmark", "experiment=seed_comparisn", cwd=tmp_path)
    assert result.returncode == 2 and "Did you mean 'seed_comparison'" in result.stderr
    result = benchmark("data=ct", cwd=tmp_path)
    assert result.returncode == 2 and "unknown grid.data variant 'ct'" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3
