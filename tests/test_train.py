"""``train(cfg)`` end to end, in process, on tiny configs: outputs, determinism, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import RUN_FILES, check_test_metrics

from medimg_cli.checkpoint import load_checkpoint
from medimg_cli.commands.eval import evaluate_checkpoint
from medimg_cli.commands.train import train
from medimg_cli.data import SUPERVISED, TASKS, DataInfo
from medimg_cli.errors import ConfigError
from medimg_cli.evaluation.anomalous import DECIDED
from medimg_cli.metrics import COLUMNS, METRICS, of_kind, task_metrics
from medimg_cli.results import read_cases_csv, read_metrics_csv

TIMING = {m.column for m in of_kind("timing")}
TASK_COLUMNS = {task: {m.column for m in task_metrics(DataInfo(task, 2, 1, 3, 2, ()))} for task in TASKS}


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


RUNS = [(task, model) for task in SUPERVISED for model in ("cnn", "unet")] + [("anomaly", "autoencoder")]


@pytest.mark.parametrize(("task", "model"), RUNS)
def test_run_folder_is_complete_for_every_task(tiny_cfg, tmp_path, task, model):
    summary = train(tiny_cfg(f"data.task={task}", f"model={model}"), tmp_path)
    for name in RUN_FILES:
        assert (tmp_path / name).is_file(), name
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    filled = {k for k, v in rows[0].items() if v is not None}
    assert filled == {"epoch", "train_loss", "val_loss"} | TASK_COLUMNS[task] | TIMING
    assert list(rows[0]) == list(COLUMNS)
    saved = json.loads((tmp_path / "summary.json").read_text())
    losses = [r["val_loss"] for r in rows]
    assert saved["best_epoch"] == losses.index(min(losses)) + 1 and saved["task"] == task
    evaluated = {m.key for m in METRICS if m.evaluated and (m.tasks is None or m.column in TASK_COLUMNS[task])}
    decided = {"threshold", *DECIDED} if task == "anomaly" else set()  # at the val split's threshold
    assert set(saved["test"]) == evaluated | decided
    check_test_metrics(tmp_path, saved["test"])
    assert torch.__version__.startswith(saved["versions"]["torch"])
    assert summary["data_fingerprint"] == saved["data_fingerprint"]
    table = (tmp_path / "table.md").read_text()
    assert "| test |" in table and ("Dice %" in table) == (task in ("segmentation", "multitask"))


def test_live_progress_bar_on_a_terminal(tiny_cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich treats the output as a terminal
    monkeypatch.setenv("COLUMNS", "160")
    train(tiny_cfg(), tmp_path)
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "test" in out


def test_binary_classification_and_3d_runs(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("data.task=classification", "data.binary=true", "trainer.epochs=1"), tmp_path / "binary")
    check_test_metrics(tmp_path / "binary", summary["test"])
    checkpoint = load_checkpoint(tmp_path / "binary" / "checkpoints" / "best.pt")
    assert checkpoint["model"]["args"]["num_classes"] == 2
    summary = train(
        tiny_cfg("data.spatial_dims=3", "data.num_samples=24", "trainer.epochs=1", "trainer.batch_size=8"),
        tmp_path / "3d",
    )
    check_test_metrics(tmp_path / "3d", summary["test"])


def test_a_model_that_cannot_run_on_the_images_says_so(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"model 'unet' cannot run on images of shape \(1, 16, 16\)"):
        train(tiny_cfg("model=unet", "data.image_size=16"), tmp_path)


def test_same_seed_same_metrics_other_seed_other_metrics(tiny_cfg, tmp_path):
    train(tiny_cfg("seed=1"), tmp_path / "a")
    train(tiny_cfg("seed=1"), tmp_path / "b")
    train(tiny_cfg("seed=2", "augment=flip"), tmp_path / "c")
    a, b, c = (without_timing(read_metrics_csv(tmp_path / x / "metrics.csv")) for x in "abc")
    assert a == b
    assert a != c


def test_deterministic_mode_changes_nothing_on_cpu(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.deterministic=true"), tmp_path / "a")
    assert torch.are_deterministic_algorithms_enabled()
    train(tiny_cfg(), tmp_path / "b")
    assert not torch.are_deterministic_algorithms_enabled()
    a, b = (without_timing(read_metrics_csv(tmp_path / x / "metrics.csv")) for x in "ab")
    assert a == b


def test_pinned_loss_of_a_tiny_deterministic_run(tiny_cfg, tmp_path):
    """Guards the whole chain (phantom, split, init, batches, loss) against silent changes."""
    train(tiny_cfg("data.task=classification", "trainer.epochs=1"), tmp_path)
    row = read_metrics_csv(tmp_path / "metrics.csv")[0]
    # pinned from a run on the development machine (x86_64 CPU, torch 2.15, MONAI 1.6)
    assert row["train_loss"] == pytest.approx(1.100848, abs=1e-4)


def test_eval_of_best_checkpoint_equals_summary(tiny_cfg, tmp_path):
    summary = train(tiny_cfg(), tmp_path)
    metrics = evaluate_checkpoint(tmp_path / "checkpoints" / "best.pt", "test", "cpu")
    for key, value in summary["test"].items():
        if key != "seconds_per_image":
            assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_checkpoint_knows_its_model(tiny_cfg, tmp_path):
    train(tiny_cfg("model=unet"), tmp_path)
    payload = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert payload["model"]["name"] == "unet" and payload["model"]["args"]["task"] == "multitask"
    assert {"optimizer", "rng", "history", "best", "config"} <= set(payload)


def test_multistep_schedule_lowers_the_rate_and_resumes_with_it(tiny_cfg, tmp_path):
    schedule = ("scheduler=multistep", "scheduler.milestones=[1,3]", "scheduler.gamma=0.5")
    train(tiny_cfg(*schedule, "trainer.epochs=2"), tmp_path / "part")
    last = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001 * 0.5)  # after epoch 1
    train(tiny_cfg(*schedule, "trainer.epochs=4"), tmp_path / "full")
    resumed = ("trainer.epochs=4", "trainer.resume=true")
    train(tiny_cfg(*schedule, *resumed), tmp_path / "part", overrides=list(resumed))
    last = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001 * 0.25)  # and after epoch 3
    full = without_timing(read_metrics_csv(tmp_path / "full" / "metrics.csv"))
    assert without_timing(read_metrics_csv(tmp_path / "part" / "metrics.csv")) == full


def test_test_predictions_hold_one_row_per_case_that_average_to_the_test_metrics(tiny_cfg, tmp_path):
    summary = train(tiny_cfg(), tmp_path)
    cases = read_cases_csv(tmp_path / "test_predictions.csv")
    assert cases["probs"].shape == (len(cases["label"]), 3)
    assert np.allclose(cases["probs"].sum(axis=1), 1, atol=1e-5)
    assert (cases["probs"].argmax(axis=1) == cases["label"]).mean() == pytest.approx(summary["test"]["accuracy"])
    assert cases["dice"].mean() == pytest.approx(summary["test"]["dice"], abs=1e-6)
    assert cases["iou"].mean() == pytest.approx(summary["test"]["iou"], abs=1e-6)
    header = (tmp_path / "test_predictions.csv").read_text().splitlines()[0]
    assert header == "case,label,prediction,p_0,p_1,p_2,dice,iou"  # positions only, no identifiers
    assert summary["peak_memory"] == "process RSS" and summary["peak_memory_mib"] > 100


def test_resume_continues_to_the_same_metrics(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=4"), tmp_path / "full")
    train(tiny_cfg("trainer.epochs=2"), tmp_path / "part")
    train(
        tiny_cfg("trainer.epochs=4", "trainer.resume=true"),
        tmp_path / "part",
        overrides=["trainer.epochs=4", "trainer.resume=true"],
    )
    full = without_timing(read_metrics_csv(tmp_path / "full" / "metrics.csv"))
    assert without_timing(read_metrics_csv(tmp_path / "part" / "metrics.csv")) == full


def test_resume_from_a_run_folder_path_writes_into_that_folder(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=1"), tmp_path / "run")
    resume = f"trainer.resume={tmp_path / 'run' / 'checkpoints' / 'last.pt'}"
    summary = train(
        tiny_cfg(resume, "trainer.epochs=2"), tmp_path / "elsewhere", overrides=[resume, "trainer.epochs=2"]
    )
    assert summary["run_dir"] == str(tmp_path / "run")
    assert len(read_metrics_csv(tmp_path / "run" / "metrics.csv")) == 2
    assert not (tmp_path / "elsewhere" / "metrics.csv").exists()


def test_resume_refuses_to_change_the_experiment(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=1"), tmp_path)
    with pytest.raises(ConfigError, match="model cannot change when resuming"):
        train(tiny_cfg("trainer.resume=true", "model=unet"), tmp_path, overrides=["trainer.resume=true", "model=unet"])
    # repeating the original command line plus trainer.resume=true is fine
    train(
        tiny_cfg("trainer.resume=true", "model=cnn", "trainer.epochs=2"),
        tmp_path,
        overrides=["trainer.resume=true", "model=cnn", "trainer.epochs=2"],
    )
    assert len(read_metrics_csv(tmp_path / "metrics.csv")) == 2


def test_a_finished_run_folder_is_not_overwritten(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=1"), tmp_path)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_cfg("trainer.epochs=1"), tmp_path)


def test_a_requeued_slurm_job_resumes_on_its_own(tiny_cfg, tmp_path, monkeypatch):
    """Preemption with requeue, or submitit's requeue at the time limit, runs the same command again."""
    train(tiny_cfg("trainer.epochs=1"), tmp_path)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    train(tiny_cfg("trainer.epochs=2"), tmp_path, overrides=["trainer.epochs=2"])
    assert [row["epoch"] for row in read_metrics_csv(tmp_path / "metrics.csv")] == [1, 2]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # a first start never resumes silently
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_cfg("trainer.epochs=3"), tmp_path)


def test_resume_without_checkpoint_says_where_it_looked(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="last.pt does not exist"):
        train(tiny_cfg("trainer.resume=true"), tmp_path)


def test_resumable_keys_include_whole_groups_but_not_look_alikes():
    from medimg_cli.resume import resumable

    assert resumable("trainer.epochs") and resumable("tracking.mlflow") and resumable("tracking")
    assert not resumable("trainer.epochsx") and not resumable("optim.lr") and not resumable("trackingx")


def test_a_time_budget_ends_training_after_the_epoch_that_crosses_it(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("trainer.epochs=50", "trainer.max_minutes=0.0001"), tmp_path)
    assert len(read_metrics_csv(tmp_path / "metrics.csv")) == 1  # 6 ms: over after the first epoch
    assert summary["ended_by"] == "trainer.max_minutes" and summary["epochs_trained"] == 1
    assert summary["best_epoch"] == 1 and summary["test"]["loss"] > 0  # best.pt was tested
    full = train(tiny_cfg(), tmp_path / "full")
    assert full["ended_by"] == "trainer.epochs" and full["epochs_trained"] == 2


def test_a_non_finite_loss_stops_the_run_with_exit_code_3_and_no_nan_row(tmp_path):
    from conftest import TINY, run_cli

    result = run_cli("train", *TINY, "optim.lr=1e12", "trainer.epochs=3", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 3, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "epoch 1, step" in message and "optim.lr=1000000000000.0" in message and "skip_batch" in message
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints" / "best.pt").exists()  # no epoch with a NaN loss is kept or starred
    assert not (tmp_path / "metrics.csv").exists() or not read_metrics_csv(tmp_path / "metrics.csv")


@pytest.mark.parametrize("skip", [False, True])
def test_non_finite_batches_are_counted_and_with_skip_batch_never_stepped(skip):
    from medimg_cli.augment import build_augment
    from medimg_cli.data.batches import TensorBatches
    from medimg_cli.loop import train_epoch
    from medimg_cli.speed import Speed

    info = DataInfo("classification", 2, 1, 2, 0, ("a", "b"), image_size=(8, 8))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def loss_fn(outputs, batch):  # step 2 of 3 gives NaN
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(outputs, batch["label"])
        return loss * float("nan") if len(calls) == 2 else loss

    tensors = {"image": torch.randn(12, 1, 8, 8), "label": torch.arange(12) % 2}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    speed = Speed.from_config({"precision": "fp32", "channels_last": False}, torch.device("cpu"), model, 2)
    augment = build_augment({"name": "none"}, info)
    stats = train_epoch(model, TensorBatches(tensors, 4, torch.device("cpu")), 1, loss_fn, optimizer, augment, speed,
                        speed.scaler(), skip_nonfinite=skip)  # fmt: skip
    # without skipping, step 2's NaN weights make step 3 NaN too
    assert stats["nonfinite_steps"] == (1 if skip else 2) and stats["first_nonfinite_step"] == 2
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    assert finite is skip  # stepping on a NaN loss poisons the weights; skipping it does not
    assert stats["train_samples"] == (8 if skip else 12) and any(
        not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)
    )


def test_a_run_folder_is_held_by_one_process_and_taken_over_when_it_dies(tmp_path):
    import subprocess
    import sys
    import time

    from medimg_cli.fileio import hold_folder, release

    holder = subprocess.Popen(
        [sys.executable, "-c", f"from medimg_cli.fileio import hold_folder; h = hold_folder(__import__('pathlib').Path("
         f"{str(tmp_path)!r})); print('held', flush=True); __import__('time').sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by another run \(process {holder.pid}\)"):
            hold_folder(tmp_path)
    finally:
        holder.kill()  # as kill -9 would: no clean-up runs
        holder.wait()
    time.sleep(0.1)
    handle = hold_folder(tmp_path)  # the dead process's lock is gone with it
    assert (tmp_path / ".lock").read_text().strip() == str(__import__("os").getpid())
    release(handle)


def test_a_second_train_into_a_busy_run_folder_exits_2_naming_the_holder(tiny_cfg, tmp_path):
    from medimg_cli.fileio import hold_folder, release

    handle = hold_folder(tmp_path)
    try:
        with pytest.raises(ConfigError, match="in use by another run"):
            train(tiny_cfg(), tmp_path)
        assert not (tmp_path / "metrics.csv").exists()
    finally:
        release(handle)
    train(tiny_cfg(), tmp_path)  # free again: the same process trains there
    assert (tmp_path / "metrics.csv").exists()


def test_half_written_files_of_a_killed_run_are_removed_at_the_next_start(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=1"), tmp_path)
    stale = [tmp_path / "checkpoints" / ".last.pt.k2j3h4.tmp", tmp_path / ".metrics.csv.x9y8.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")  # what SIGKILL mid-write leaves
    keep = tmp_path / "notes.tmp"
    keep.write_text("the user's own file")
    train(
        tiny_cfg("trainer.epochs=2", "trainer.resume=true"),
        tmp_path,
        overrides=["trainer.epochs=2", "trainer.resume=true"],
    )
    assert not any(p.exists() for p in stale) and keep.exists()
