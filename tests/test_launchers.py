"""Hydra's submitit launcher: the SLURM preset composes, and the local executor runs a sweep."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from hydra import compose, initialize_config_module


def test_slurm_preset_composes_with_its_keys():
    with initialize_config_module(config_module="medimg_cli.conf", version_base="1.3"):
        cfg = compose(
            "train",
            ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node, launcher.mem_gb) == ("gpu", 30, 1, 32)


@pytest.mark.slow
def test_local_executor_runs_a_two_job_sweep_that_reports(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = ["data.num_samples=64", "trainer.epochs=1", "device=cpu", f"hydra.sweep.dir={sweep}"]
    result = run_cli("train", "-m", "hydra/launcher=local", "seed=0,1", *tiny)
    assert result.returncode == 0, result.stderr
    seeds = sorted(json.loads((sweep / job / "summary.json").read_text())["seed"] for job in ("0", "1"))
    assert seeds == [0, 1]
    assert list((sweep / ".submitit").rglob("*_log.out"))  # submitit's own bookkeeping, one log per job
    report = run_cli("report", str(sweep), "--columns", "seed")
    assert report.returncode == 0, report.stderr
    assert "seed" in (sweep / "tables.md").read_text()
