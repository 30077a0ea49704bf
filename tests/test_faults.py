"""Faults: kill -9 at random moments and a full disk never corrupt a run, and the rerun ends exactly
where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TINY, run_cli
from test_benchmark import TINY_GRID, _quality

from medimg_cli.checkpoint import load_checkpoint
from medimg_cli.results import read_metrics_csv

TIMING = {"epoch_seconds", "train_images_per_second", "seconds_per_image"}
RUN = [*TINY, "data.num_samples=128", "trainer.epochs=3"]
GRID = ["experiment=seed_comparison", *TINY_GRID, "model=cnn", "seed=0,1", "trainer.epochs=2"]
TRIALS = {"train": 8, "benchmark": 2}  # stratified over the run; each CI run draws new moments


def _outcome(run: Path) -> tuple[list[dict], dict]:
    """What must not depend on interruptions: metrics.csv without timings, and the test metrics."""
    rows = [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics_csv(run / "metrics.csv")]
    test = json.loads((run / "summary.json").read_text())["test"]
    return rows, {k: v for k, v in test.items() if k not in TIMING}


def _kill_after(command: list[str], seconds: float, cwd: Path) -> None:
    """Start ``medimg COMMAND`` and SIGKILL it (and the runs it started) after ``seconds``."""
    env = {**os.environ, "COLUMNS": "200"}
    process = subprocess.Popen(
        [sys.executable, "-m", "medimg_cli", *command],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _train_trial(folder: Path, seconds: float) -> tuple[float, list[str]]:
    """Kill a training run after ``seconds``, check what it left, rerun it; returns its outcome."""
    run = folder / "run"
    _kill_after(["train", *RUN, f"hydra.run.dir={run}"], seconds, folder)
    for checkpoint in (run / "checkpoints").glob("*.pt"):
        load_checkpoint(checkpoint)  # every checkpoint a kill left behind loads
    if (run / "summary.json").exists():  # the kill came after the end
        return seconds, _outcome(run)
    resume = ["trainer.resume=true"] if (run / "checkpoints" / "last.pt").exists() else []
    result = run_cli("train", *RUN, f"hydra.run.dir={run}", *resume)
    assert result.returncode == 0, (seconds, result.stderr[-2000:])
    assert not list(run.rglob(".*.tmp")), seconds  # the killed writer's temporary files were removed
    return seconds, _outcome(run)


def _benchmark_trial(folder: Path, seconds: float) -> tuple[float, tuple]:
    _kill_after(["benchmark", *GRID], seconds, folder)
    result = run_cli("benchmark", *GRID, cwd=folder)
    assert result.returncode == 0, (seconds, result.stderr[-2000:])
    return seconds, _quality(folder / "runs" / "benchmark" / "seed_comparison")


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """10 kills, spread over the whole run (start-up, epochs, checkpoint writes, the test of best.pt,
    the benchmark grid's runs and report) at stratified random moments; the seed is in the message."""
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    start = time.monotonic()
    assert run_cli("train", *RUN, f"hydra.run.dir={tmp_path / 'full'}").returncode == 0
    train_seconds = time.monotonic() - start
    (tmp_path / "grid").mkdir()
    start = time.monotonic()
    assert run_cli("benchmark", *GRID, cwd=tmp_path / "grid").returncode == 0
    grid_seconds = time.monotonic() - start
    expected_run = _outcome(tmp_path / "full")
    expected_grid = _quality(tmp_path / "grid" / "runs" / "benchmark" / "seed_comparison")

    def moments(kind: str, total: float) -> list[float]:
        count = TRIALS[kind]
        return [total * (i + rng.random()) / count for i in range(count)]

    trials = [("train", s) for s in moments("train", train_seconds)]
    trials += [("benchmark", s) for s in moments("benchmark", grid_seconds)]

    def trial(index: int) -> tuple[float, object]:
        folder = tmp_path / f"trial{index}"
        folder.mkdir()
        kind, seconds = trials[index]
        return (_train_trial if kind == "train" else _benchmark_trial)(folder, seconds)

    with ThreadPoolExecutor(2) as pool:  # two at a time: the machine has two cores
        results = list(pool.map(trial, range(len(trials))))
    for (kind, _), (seconds, outcome) in zip(trials, results, strict=True):
        expected = expected_run if kind == "train" else expected_grid
        assert outcome == expected, f"{kind} killed after {seconds:.2f} s (random seed {seed})"


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]).returncode == 0


@pytest.mark.slow
def test_a_full_disk_stops_in_one_line_and_keeps_the_checkpoints(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "8m"):
        pytest.skip("a full disk is simulated with a small tmpfs, which needs permission to mount one")
    try:
        run, full = disk / "run", tmp_path / "full"
        assert run_cli("train", *RUN, "trainer.epochs=1", f"hydra.run.dir={run}").returncode == 0
        before = load_checkpoint(run / "checkpoints" / "last.pt")
        filler = disk / "filler"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(b"\0" * (free - 64 * 1024))  # 64 KiB left: less than one checkpoint
        result = run_cli("train", *RUN, f"hydra.run.dir={run}", "trainer.resume=true")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"{run}/checkpoints/" in lines[0] and "no space left on device" in lines[0]
        assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == before["epoch"] == 1
        filler.unlink()  # space again: the run resumes and ends as if the disk had never filled
        assert run_cli("train", *RUN, f"hydra.run.dir={run}", "trainer.resume=true").returncode == 0
        assert run_cli("train", *RUN, f"hydra.run.dir={full}").returncode == 0
        assert _outcome(run) == _outcome(full)
    finally:
        subprocess.run(["umount", str(disk)])
