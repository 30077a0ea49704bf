"""Hyper-parameter search through Hydra's Optuna sweeper: the jobs return the monitored value,
the study goes the monitor's way, continues from its storage, and the sweep's best is reported."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from conftest import TINY, run_cli
from omegaconf import OmegaConf

from medimg_cli.sweeps import _direction, optuna_direction

optuna = pytest.importorskip("optuna", reason="hydra/sweeper=optuna needs 'medimg[optuna]'")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="Hydra's Optuna sweeper is not installed (make)")

LR = "optim.lr=tag(log,interval(1e-4,1e-2))"


def _sweep(tmp_path: Path, folder: str, trials: int, *extra: str):
    return run_cli(
        "train", "-m", "hydra/sweeper=optuna", f"hydra.sweeper.n_trials={trials}", LR, *TINY,
        "trainer.epochs=1", "hydra.sweeper.sampler.seed=0", f"hydra.sweeper.storage=sqlite:///{tmp_path}/study.db",
        "hydra.sweeper.study_name=lr", f"hydra.sweep.dir={tmp_path / folder}", *extra,
    )  # fmt: skip


def _summaries(sweep: Path) -> list[dict]:
    return [json.loads((sweep / str(job) / "summary.json").read_text()) for job in range(len(list(sweep.glob("*/"))))]


def test_the_direction_follows_the_monitored_metric():
    assert _direction("val_loss") == "minimize"
    assert _direction("val_dice") == _direction("val_auc") == "maximize"
    argv = ["-m", "hydra/sweeper=optuna"]
    assert optuna_direction(argv)[-1] == "hydra.sweeper.direction='${medimg_direction:${trainer.monitor}}'"
    assert optuna_direction([*argv, "hydra.sweeper.direction=maximize"]) == [*argv, "hydra.sweeper.direction=maximize"]
    assert optuna_direction(["-m", "seed=0,1"]) == ["-m", "seed=0,1"]


@pytest.mark.slow
def test_optuna_sweep_optimises_the_monitor_resumes_and_reports_its_best(tmp_path):
    result = _sweep(tmp_path, "first", 3)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "first"
    summaries = _summaries(sweep)
    assert len(summaries) == 3
    lrs = [OmegaConf.load(sweep / str(job) / "config.yaml").optim.lr for job in range(3)]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 3

    # each trial's value is its run's best validation loss, and the study minimised it
    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{tmp_path}/study.db")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert [t.value for t in study.trials] == pytest.approx([s["best"]["val_loss"] for s in summaries])
    assert [t.params["optim.lr"] for t in study.trials] == pytest.approx(lrs)
    best = min(range(3), key=lambda job: summaries[job]["best"]["val_loss"])
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_params["optim.lr"] == pytest.approx(lrs[best])
    assert re.search(rf"│\s+{best}\* │", result.stdout)  # the closing table stars the best run
    assert f"medimg report {sweep}" in result.stdout

    # a second sweep on the same storage continues the study
    assert _sweep(tmp_path, "second", 1).returncode == 0
    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{tmp_path}/study.db")
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)

    # the report reads the sweep and names Optuna's best trial
    assert run_cli("report", str(sweep)).returncode == 0
    assert f"Optuna's best trial: optim.lr={results.best_params['optim.lr']}" in (sweep / "tables.md").read_text()

    # the same study cannot be pushed the other way: one line per trial, exit 2, nothing trained
    wrong = _sweep(tmp_path, "third", 1, "trainer.monitor=val_dice")
    assert wrong.returncode == 2
    assert "study 'lr'" in wrong.stderr and "needs maximize" in wrong.stderr
    assert not list((tmp_path / "third").rglob("summary.json"))


@pytest.mark.slow
def test_a_maximised_monitor_makes_a_maximising_study(tmp_path):
    result = _sweep(tmp_path, "dice", 2, "trainer.monitor=val_dice", "data.task=segmentation", "model=unet")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{tmp_path}/study.db")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    dice = [s["best"]["val_dice"] for s in _summaries(tmp_path / "dice")]
    assert [t.value for t in study.trials] == pytest.approx(dice) and not any(map(math.isnan, dice))

    wrong = _sweep(
        tmp_path, "wrong", 1, "trainer.monitor=val_dice", "data.task=segmentation", "model=unet",
        "hydra.sweeper.direction=minimize", "hydra.sweeper.study_name=new",
    )  # fmt: skip
    assert wrong.returncode == 2
    assert "hydra.sweeper.direction=minimize, but trainer.monitor=val_dice improves the other way" in wrong.stderr
