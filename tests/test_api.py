"""``import medimg``: train, evaluate and load a model from Python, as the commands do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import TINY

import medimg
from medimg_cli.trained import load_trained


def test_train_evaluate_and_load_model_agree_with_the_run(tmp_path):
    summary = medimg.train(overrides=[*TINY, "data.task=classification"], run_dir=tmp_path / "run")
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    document = medimg.evaluate(checkpoint, overrides=["eval.bootstrap=100", f"out={tmp_path / 'eval'}"])
    assert document["metrics"]["accuracy"]["value"] == pytest.approx(summary["test"]["accuracy"], abs=1e-6)
    assert (tmp_path / "eval" / "metrics.json").is_file()
    model, test = medimg.load_model(checkpoint), load_trained(checkpoint, "cpu").data.test
    with torch.no_grad():
        predicted = model(test["image"])["class_logits"].argmax(dim=1)
    assert (predicted == test["label"]).float().mean().item() == pytest.approx(summary["test"]["accuracy"])


def test_load_model_gives_a_plain_monai_network(tmp_path):
    overrides = [*TINY, "trainer.epochs=1", "data.task=segmentation", "model=monai", "model.net=BasicUNet"]
    summary = medimg.train(overrides=[*overrides, "model.args={features: [4, 4, 8, 8, 16, 4]}"], run_dir=tmp_path)
    network = medimg.load_model(tmp_path / "checkpoints" / "best.pt")
    assert type(network).__name__ == "BasicUNet"
    test = load_trained(tmp_path / "checkpoints" / "best.pt", "cpu").data.test
    with torch.no_grad():
        predicted = network(test["image"]).argmax(dim=1)  # logits, not a dict
    assert predicted.shape == test["mask"][:, 0].shape and summary["test"]["dice"] >= 0


def test_mistakes_raise_one_config_error():
    with pytest.raises(medimg.ConfigError, match="do not compose"):
        medimg.train(overrides=["optim.lrr=0.1"])
    with pytest.raises(medimg.ConfigError, match="unknown data.task 'detection'"):
        medimg.train(overrides=["data.task=detection"])


def test_the_readme_one_liner_runs(tmp_path):
    code = "import medimg; s = medimg.train(overrides=['trainer.epochs=1', 'data.num_samples=64']); print(s['test'])"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'accuracy':" in result.stdout.splitlines()[-1] and list(tmp_path.glob("runs/*/*/summary.json"))
