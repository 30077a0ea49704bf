"""Tracking: TensorBoard event files and an MLflow store, read back and compared with metrics.csv."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import compose_config
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medimg_cli.commands.train import train
from medimg_cli.results import read_metrics_csv


def _events(run):
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_holds_every_metric_per_epoch_and_sample_pictures(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("trainer.epochs=3", "tracking.images=3"), tmp_path)
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    events = _events(tmp_path)
    for column, tag in (("train_loss", "train/loss"), ("val_loss", "val/loss"), ("val_accuracy", "val/accuracy"),
                        ("val_dice", "val/dice"), ("epoch_seconds", "time/epoch_seconds")):  # fmt: skip
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2, 3], column
        assert [e.value for e in logged] == pytest.approx([r[column] for r in rows], rel=1e-6), column
    assert events.Scalars("test/dice")[0].value == pytest.approx(summary["test"]["dice"], rel=1e-6)
    pictures = events.Images("val_samples")
    assert [p.step for p in pictures] == [1, 2, 3]
    # two labelled rows (true and predicted masks) of 3 images, at least 512 px high
    assert pictures[0].height >= 512 and pictures[0].width > pictures[0].height
    assert "image 0: " in events.Tensors("val_samples/text_summary")[0].tensor_proto.string_val[0].decode()


def test_mlflow_records_params_and_metrics_and_a_resume_continues_its_run(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    base = ["data.num_samples=64", "data.image_size=32", "trainer.batch_size=16", "device=cpu", "tracking.mlflow=true"]
    run = tmp_path / "run"
    train(compose_config([*base, f"tracking.mlflow_uri={store}", "trainer.epochs=2"]), run)
    cfg = compose_config([*base, f"tracking.mlflow_uri={store}", "trainer.epochs=3", "trainer.resume=true"])
    summary = train(cfg, run, overrides=["trainer.epochs=3", "trainer.resume=true"])
    client = MlflowClient(store)
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    assert len(client.search_runs([client.get_experiment_by_name("medimg").experiment_id])) == 1
    logged = client.get_run(run_id)
    assert logged.data.params["model.name"] == "cnn" and logged.data.params["optim.lr"] == "0.001"
    rows = read_metrics_csv(run / "metrics.csv")
    history = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx([r["val_loss"] for r in rows])
    assert logged.data.metrics["test_accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert logged.info.status == "FINISHED"
    assert [e.step for e in _events(run).Scalars("val/loss")] == [1, 2, 3]  # the resume purged nothing twice


def test_tracking_can_be_switched_off(tiny_cfg, tmp_path):
    train(tiny_cfg("tracking.tensorboard=false"), tmp_path)
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "mlflow.json").exists()


def test_tensorboard_hparams_tab_holds_the_settings_and_test_metrics(tiny_cfg, tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    summary = train(tiny_cfg("optim.lr=0.003", "data.task=classification"), tmp_path)
    events = _events(tmp_path)
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    settings = session.session_start_info.hparams
    assert settings["optim.lr"].number_value == pytest.approx(0.003) and settings["model.name"].string_value == "cnn"
    assert settings["data.task"].string_value == "classification" and settings["seed"].number_value == 0
    logged = events.Scalars("hparams/test_accuracy")
    assert logged[0].value == pytest.approx(summary["test"]["accuracy"], rel=1e-6)


def wandb_records(path: Path):
    """The records of a W&B run file (``run-<id>.wandb``: a LevelDB log of protobuf ``Record``s
    in 32 KiB blocks after a 7-byte header), read here because wandb no longer ships a reader."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    position, chunks = header, []
    while position + header <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + header]) if left >= header else (0, 0, 0)
        if kind == 0:  # the zero padding at the end of a block
            position += left
            continue
        chunks.append(data[position + header : position + header + length])
        position += header + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def test_wandb_offline_holds_config_metrics_pictures_and_test_metrics_and_a_resume_continues(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    base = ["data.num_samples=64", "data.image_size=32", "trainer.batch_size=16", "device=cpu", "tracking.wandb=true"]
    run = tmp_path / "run"
    train(compose_config([*base, "trainer.epochs=2"]), run)
    first = json.loads((run / "wandb.json").read_text())["run_id"]
    resumed = [*base, "trainer.epochs=3", "trainer.resume=true"]
    summary = train(compose_config(resumed), run, overrides=resumed[-2:])
    assert json.loads((run / "wandb.json").read_text())["run_id"] == first
    files = sorted(run.glob(f"wandb/offline-run-*-{first}/run-{first}.wandb"))
    assert len(files) == 2  # one per session, the same W&B run
    records = [r for f in files for r in wandb_records(f)]

    def key(item) -> str:  # W&B keeps keys in nested_key: ["val/loss"], ["val/samples", "height"]
        return item.key or "/".join(item.nested_key)

    history = [
        (r.history.step.num, i) for r in records if r.WhichOneof("record_type") == "history" for i in r.history.item
    ]
    losses = {step: json.loads(i.value_json) for step, i in history if key(i) == "val/loss"}
    assert losses == pytest.approx({int(r["epoch"]): r["val_loss"] for r in read_metrics_csv(run / "metrics.csv")})
    picture = {i.nested_key[1]: json.loads(i.value_json) for _, i in history if i.nested_key[:1] == ["val/samples"]}
    assert picture["_type"] == "image-file" and picture["height"] >= 256
    updates = [i for r in records if r.WhichOneof("record_type") == "summary" for i in r.summary.update]
    summaries = {key(i): json.loads(i.value_json) for i in updates}
    assert summaries["test/accuracy"] == pytest.approx(summary["test"]["accuracy"])
    config = {
        i.key: json.loads(i.value_json)
        for r in records
        if r.WhichOneof("record_type") == "run"
        for i in r.run.config.update
    }
    assert config["optim"]["lr"] == 0.001 and config["model"]["name"] == "cnn"
