"""DDP with torchrun on CPU (gloo, 2 processes): one run folder, the single-process numbers, resume."""

from __future__ import annotations

import json

import pytest
from conftest import compose_config, run_cli

from medimg_cli.commands.eval import evaluate_checkpoint
from medimg_cli.commands.train import train
from medimg_cli.distributed import requested_devices
from medimg_cli.errors import ConfigError
from medimg_cli.results import read_metrics_csv

# layer norm and no dropout: nothing depends on how the global batch is split between processes
RUN = [
    "model=transformer", "model.num_layers=2", "model.patch_size=8", "model.dropout=0",
    "data.num_samples=64", "data.image_size=32", "trainer.batch_size=16", "device=cpu",
]  # fmt: skip
COMPARED = ("train_loss", "val_loss", "val_accuracy", "val_f1", "val_auc", "val_dice", "val_iou")


@pytest.mark.slow
def test_two_process_ddp_run_equals_the_single_process_run_and_resumes(tmp_path):
    single = tmp_path / "single"
    train(compose_config([*RUN, "trainer.epochs=3", "tracking.tensorboard=false"]), single)

    result = run_cli("train", "trainer.devices=2", *RUN, "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folders = [p for p in (tmp_path / "runs").glob("*/*") if p.is_dir()]
    assert len(folders) == 1, folders  # both ranks wrote into the folder rank 0 chose
    run = folders[0]
    assert len(read_metrics_csv(run / "metrics.csv")) == 2

    resume = ["trainer.epochs=3", f"hydra.run.dir={run}", "trainer.resume=true"]
    result = run_cli("train", "trainer.devices=2", *RUN, *resume)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed, reference = read_metrics_csv(run / "metrics.csv"), read_metrics_csv(single / "metrics.csv")
    assert [r["epoch"] for r in distributed] == [1, 2, 3]
    for ours, theirs in zip(distributed, reference, strict=True):
        for column in COMPARED:
            assert ours[column] == pytest.approx(theirs[column], abs=1e-4), (ours["epoch"], column)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    metrics = evaluate_checkpoint(run / "checkpoints" / "best.pt", "test", "cpu")  # medimg eval reads it
    for key in ("accuracy", "dice"):
        assert metrics[key] == pytest.approx(summary["test"][key], abs=1e-9)


def test_devices_on_the_command_line():
    assert requested_devices(["model=cnn", "trainer.devices=4"]) == 4 and requested_devices([]) == 1
    with pytest.raises(ConfigError, match="trainer.devices='two' must be a whole number"):
        requested_devices(["trainer.devices=two"])
