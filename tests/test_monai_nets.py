"""``model=monai model.net=<class>``: any network of monai.networks.nets trains, evaluates and
exports; a network that cannot do the task, or a name that is not one, is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, compose_config

from medimg_cli.cli import main
from medimg_cli.commands.eval import evaluate_checkpoint
from medimg_cli.commands.train import train
from medimg_cli.errors import ConfigError
from medimg_cli.models import create_model

ARGS = dict(spatial_dims=2, in_channels=1, num_classes=3, num_seg_classes=2, image_size=(32, 32))


@pytest.mark.parametrize(
    ("net", "task", "args"),
    [("SegResNet", "segmentation", "{init_filters: 8}"), ("DenseNet121", "classification", "{init_features: 8}")],
)
def test_a_monai_network_trains_evaluates_and_exports(tmp_path, net, task, args):
    overrides = [*TINY, "trainer.epochs=1", "model=monai", f"model.net={net}", f"model.args={args}"]
    overrides.append(f"data.task={task}")
    summary = train(compose_config(overrides), tmp_path)
    metric = "dice" if task == "segmentation" else "accuracy"
    checkpoint = tmp_path / "checkpoints" / "best.pt"
    assert evaluate_checkpoint(checkpoint, "test", "cpu")[metric] == pytest.approx(summary["test"][metric], abs=1e-6)
    assert main(["export", f"checkpoint={checkpoint}", "format=torchscript", "device=cpu"]) == 0
    described = json.loads((tmp_path / "export" / "model.pt.json").read_text())
    assert list(described["outputs"]) == ["seg_logits" if task == "segmentation" else "class_logits"]


def test_the_data_fill_monai_s_arguments():
    model = create_model("monai", **ARGS, task="segmentation", net="BasicUNet", args={"features": [4, 4, 8, 8, 16, 4]})
    assert model.net.final_conv.out_channels == 2 and model.net.conv_0.conv_0.conv.in_channels == 1
    assert model(torch.zeros(2, 1, 32, 32))["seg_logits"].shape == (2, 2, 32, 32)
    vit = {"patch_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2, "classification": True}
    model = create_model("monai", **ARGS, task="classification", net="ViT", args=vit)  # img_size and num_classes
    assert model(torch.zeros(2, 1, 32, 32))["class_logits"].shape == (2, 3)  # ViT returns (logits, hidden states)


@pytest.mark.parametrize(
    ("net", "task", "message"),
    [
        ("SegResNet", "classification", r"gives outputs of shape \(3, 32, 32\) where data.task=classification needs"),
        ("DenseNet121", "segmentation", r"outputs of shape \(2,\) where data.task=segmentation needs \(2, 32, 32\)"),
        ("Critic", "classification", "has no out_channels or num_classes argument"),
        ("SegResNett", "segmentation", "'SegResNett' is not a network of monai.networks.nets"),
        ("torch", "segmentation", "'torch' is not a network of monai.networks.nets"),
    ],
)
def test_a_network_that_cannot_do_the_task_is_refused_in_one_line(net, task, message):
    with pytest.raises(ConfigError, match=message):
        create_model("monai", **ARGS, task=task, net=net)


def test_multitask_and_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="model 'monai' cannot do data.task=multitask"):
        create_model("monai", **ARGS, task="multitask", net="SegResNet")
    with pytest.raises(ConfigError, match=r"model.net=SegResNet cannot be built from model.args=\{'filters': 4\}"):
        create_model("monai", **ARGS, task="segmentation", net="SegResNet", args={"filters": 4})
