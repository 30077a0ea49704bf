"""``medimg export``: ONNX (onnxruntime) and TorchScript files whose outputs match PyTorch's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, compose_config

from medimg_cli.commands import export as export_command
from medimg_cli.commands.train import train
from medimg_cli.trained import load_trained

SMALL = {"transformer": ["model.num_layers=2", "model.patch_size=8"], "unet": [], "cnn": [], "hybrid": []}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One multitask checkpoint (both outputs) per model, trained for one epoch."""
    found = {}
    for model, extra in SMALL.items():
        folder = tmp_path_factory.mktemp(model)
        train(compose_config([*TINY, f"model={model}", "trainer.epochs=1", *extra]), folder)
        found[model] = folder / "checkpoints" / "best.pt"
    return found


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("model", list(SMALL))
def test_exported_model_matches_pytorch_on_a_new_batch_size(checkpoints, tmp_path, model, fmt):
    out = tmp_path / f"model.{fmt}"
    cfg = compose_config([f"checkpoint={checkpoints[model]}", f"format={fmt}", f"out={out}"], name="export")
    description = export_command.export_cfg(cfg)
    assert description["outputs"] == {"class_logits": ["batch", 3], "seg_logits": ["batch", 2, 32, 32]}
    assert json.loads(out.with_name(out.name + ".json").read_text())["check"] == description["check"]
    # independently of the command's own check: the file on 3 images against the rebuilt model
    _, rebuilt, data, _ = load_trained(checkpoints[model], "cpu")
    images = data.split("test")["image"][-3:]
    with torch.no_grad():
        outputs = rebuilt.eval()(images)
    found = export_command.run_exported(out, fmt, images)
    for name, array in zip(("class_logits", "seg_logits"), found, strict=True):
        np.testing.assert_allclose(array, outputs[name].numpy(), atol=1e-4, rtol=1e-4)


def test_export_mistakes_get_one_clear_message(tmp_path, capsys):
    assert export_command.main([f"checkpoint={tmp_path / 'none.pt'}"]) == 2
    assert "checkpoint" in capsys.readouterr().err
    train(compose_config([*TINY, "trainer.epochs=1"]), tmp_path / "run")
    assert export_command.main([f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.pt'}", "format=tflite"]) == 2
    assert "unknown format 'tflite'. Valid: onnx, torchscript." in capsys.readouterr().err
