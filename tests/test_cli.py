"""The ``medimg`` command line end to end, in subprocesses, on tiny configs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RUN_FILES, TINY, run_cli

import medimg_cli
from medimg_cli.checkpoint import load_checkpoint
from medimg_cli.models import model_names
from medimg_cli.results import read_metrics_csv

MODEL_OPTIONS = sorted([*model_names(), "plugin"])  # conf/model/*.yaml


def assert_complete(run: Path, epochs: int) -> None:
    for name in (*RUN_FILES, ".hydra/config.yaml"):
        assert (run / name).is_file(), f"{run}/{name} missing"
    assert len(read_metrics_csv(run / "metrics.csv")) == epochs


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "eval", "report"):
        assert f"  {command} " in result.stdout


def test_unknown_command_exits_2_with_a_suggestion():
    result = run_cli("trian")
    assert result.returncode == 2
    assert "unknown command 'trian'" in result.stderr and "Did you mean 'train'" in result.stderr


def test_train_help_shows_groups_and_options():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    # the help lists each group's YAML options: the registered names, and plugin (an installed package's)
    assert f"model: {', '.join(MODEL_OPTIONS)}" in result.stdout
    recipes = sorted(path.stem for path in (Path(medimg_cli.__file__).parent / "conf" / "augment").glob("*.yaml"))
    assert f"augment: {', '.join(recipes)}" in result.stdout


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model=nope", f"unknown model 'nope'. Valid: {', '.join(MODEL_OPTIONS)}."),
        ("optim.lr=abc", "optim.lr='abc' must be a number, e.g. optim.lr=0.001"),
        ("optim.lrr=0.1", "Could not override 'optim.lrr'"),
        ("data.task=detection", "unknown data.task 'detection'. Valid: anomaly, classification, multitask"),
        ("device=tpu", "device='tpu' is not a device"),
        ("hydra/sweeper=optunx", "Did you mean 'optuna'? (optuna: pip install 'medimg[optuna]'"),  # brackets kept
    ],
)
def test_user_mistakes_give_one_short_message_and_exit_2(override, expected, tmp_path):
    result = run_cli("train", override, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def test_eval_without_checkpoint_says_what_to_pass():
    result = run_cli("eval")
    assert result.returncode == 2
    assert result.stderr.strip() == "medimg eval: error: checkpoint has no value; pass checkpoint=<value>"


def test_cfg_job_prints_the_composed_config_with_overrides():
    result = run_cli("train", "--cfg", "job", "model=unet", "+trainer.note=hello")
    assert result.returncode == 0
    assert "name: unet" in result.stdout and "note: hello" in result.stdout


@pytest.mark.slow
def test_train_eval_report_round_trip(tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", *TINY, f"hydra.run.dir={run}", "+trainer.note=kept")
    assert result.returncode == 0, result.stderr
    assert_complete(run, 2)
    assert "note: kept" in (run / "config.yaml").read_text()
    assert f"run folder: {run}" in result.stdout and "Dice %" in result.stdout

    result = run_cli("eval", f"checkpoint={run}/checkpoints/best.pt", "device=cpu")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((run / "eval" / "test" / "metrics.json").read_text())["metrics"]
    summary = json.loads((run / "summary.json").read_text())["test"]
    for key in ("accuracy", "f1", "auc", "dice", "iou"):
        assert evaluated[key]["value"] == pytest.approx(summary[key], abs=1e-6), key
    assert "95% CI" in result.stdout

    (run / "table.md").unlink()
    result = run_cli("report", str(run), "--every", "2")
    assert result.returncode == 0 and "| test |" in (run / "table.md").read_text()
    assert run_cli("report", str(tmp_path / "missing")).returncode == 2


@pytest.mark.slow
def test_multirun_sweep_writes_one_complete_folder_per_job(tmp_path):
    result = run_cli("train", "-m", "model=cnn,unet", *TINY, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    losses = []
    for job, model in ((0, "cnn"), (1, "unet")):
        assert_complete(tmp_path / str(job), 2)
        summary = json.loads((tmp_path / str(job) / "summary.json").read_text())
        assert summary["model"] == model
        losses.append(summary["best"]["val_loss"])
        # TensorBoard lists each job by its overrides
        name = ",".join(sorted([*TINY, f"model={model}"]))
        assert list((tmp_path / str(job) / "tensorboard" / name).glob("events.*")), name
    # the closing table: one row per job, the lower validation loss starred, and the report line
    rows = {m[0]: m for m in re.findall(r"│\s+(\d)(\*?) │\s+(\w+) │\s+\d+ │\s+([\d.]+) │", result.stdout)}
    assert sorted(rows) == ["0", "1"] and [rows[j][2] for j in "01"] == ["cnn", "unet"]
    assert [float(rows[j][3]) for j in "01"] == pytest.approx(losses, abs=1e-4)
    assert [rows[j][1] for j in "01"] == ["*" if loss == min(losses) else "" for loss in losses]
    assert f"medimg report {tmp_path}" in result.stdout


@pytest.mark.slow
def test_own_config_folder_on_the_search_path(tmp_path):
    own = tmp_path / "myconf" / "model"
    own.mkdir(parents=True)
    (own / "small_cnn.yaml").write_text("name: cnn\nchannels: [4, 8]\ndropout: 0.0\ndecoder_channels: 4\n")
    result = run_cli(
        "train", "--config-dir", str(tmp_path / "myconf"), "model=small_cnn", *TINY, f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert result.returncode == 0, result.stderr
    assert "channels:\n  - 4\n  - 8" in (tmp_path / "run" / "config.yaml").read_text()


def _start_training(run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medimg_cli",
            "train",
            *TINY,
            "data.num_samples=400",
            "trainer.epochs=6",
            f"hydra.run.dir={run}",
            *extra,
        ],
        stdout=subprocess.PIPE,  # logs and the table go to stdout; both are read at the end
        stderr=subprocess.STDOUT,
        # a test run started in the background inherits an ignored SIGINT; Ctrl-C needs the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        text=True,
    )


def _wait_for_rows(run: Path, rows: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = run / "metrics.csv"
        if metrics.exists() and len(metrics.read_text().splitlines()) > rows:
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    raise TimeoutError(f"{run} did not reach {rows} epochs")


@pytest.mark.slow
@pytest.mark.parametrize(("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_and_sigterm_exit_cleanly_with_last_checkpoint(tmp_path, stop, code):
    run = tmp_path / "run"
    process = _start_training(run)
    _wait_for_rows(run, 1, process)
    process.send_signal(stop)  # SIGTERM: SLURM preemption, timeout, docker stop
    output, _ = process.communicate(timeout=120)
    assert process.returncode == code, output
    assert "trainer.resume=true" in output and "Traceback" not in output, output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] >= 1


@pytest.mark.slow
def test_works_from_a_wheel_install(tmp_path):
    """The conf/ tree ships inside the package: a wheel (not editable) install composes configs."""
    root = Path(__file__).parents[1]
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(root)],
        check=True,
        capture_output=True,
    )
    wheel = next(wheel_dir.glob("medimg-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = "import medimg_cli, sys; print(medimg_cli.__file__); from medimg_cli.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "train", "--cfg", "job", "model=unet"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(target)) and "name: unet" in result.stdout


@pytest.mark.slow
def test_a_bad_job_in_a_sweep_is_reported_and_the_others_still_run(tmp_path):
    result = run_cli("train", "-m", "model=unet,cnn", *TINY, "data.image_size=16", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2
    assert "model 'unet' cannot run on images of shape (1, 16, 16)" in result.stderr
    assert_complete(tmp_path / "1", 2)  # the cnn job


def test_a_required_data_key_left_out_is_named(tmp_path):
    result = run_cli("train", "data=folder", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "data.root has no value; pass data.root=<value>" in result.stderr


def test_help_into_a_closed_pipe_is_not_a_traceback():
    """``medimg train --help | head -1``: the reader leaves early; Python would print a BrokenPipeError."""
    process = subprocess.Popen(
        [sys.executable, "-m", "medimg_cli", "train", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # before medimg writes anything: its first write meets a closed pipe
    stderr = process.stderr.read()
    assert process.wait(timeout=120) in (0, 141) and "Traceback" not in stderr, stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_terminal_shows_the_last_epochs_metrics_while_the_next_one_trains(tmp_path):
    run, session = tmp_path / "run", f"medimg-test-{os.getpid()}-{time.monotonic_ns()}"
    train = f"{sys.executable} -m medimg_cli train data.num_samples=400 trainer.epochs=30 trainer.table_every=100"
    command = f"{train} device=cpu hydra.run.dir={run}; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "40", command], check=True)
    live = []  # progress lines of epochs 2-29 that carry the epoch before's numbers
    try:
        deadline = time.monotonic() + 300
        while not live and time.monotonic() < deadline and not (run / "summary.json").is_file():
            capture = ["tmux", "capture-pane", "-p", "-t", session]
            for line in subprocess.run(capture, capture_output=True, text=True).stdout.splitlines():
                epoch = re.search(r"epoch (\d+)/30", line)
                if epoch and 1 < int(epoch.group(1)) < 30 and "ETA" in line:
                    live.append(line)
            time.sleep(0.2)
    finally:  # stops the training too
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    assert live, "no progress line with the last epoch's numbers was seen during training"
    assert re.search(r"loss \d\.\d{4}  val_loss \d\.\d{4} \(best \d\.\d{4} @ \d+\)  ETA \dm\d\ds", live[-1]), live[-1]


@pytest.mark.parametrize("argv", [["train", "--help"], ["augment", "preview", "--help"], ["eval", "split=val", "-h"]])
def test_a_command_s_help_does_not_import_torch(argv):
    # what makes `medimg train --help` take seconds is importing torch and MONAI; its help is the config
    code = f"import sys\nfrom medimg_cli.cli import main\ntry: main({argv!r})\nfinally: print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Usage: medimg" in result.stdout, result.stdout[-500:] + result.stderr[-500:]
    assert result.stdout.splitlines()[-1] == "False"
