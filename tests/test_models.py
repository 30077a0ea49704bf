"""The model zoo: every model in every task and dimensionality, transfer learning, sizes and FLOPs."""

from __future__ import annotations

import inspect
import json
import math
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import TINY, compose_config, training_losses

from medimg_cli.commands.eval import evaluate_checkpoint
from medimg_cli.commands.train import train
from medimg_cli.data import TASKS, DataInfo
from medimg_cli.errors import ConfigError
from medimg_cli.losses import TaskLoss
from medimg_cli.models import MODELS, create_model, model_names
from medimg_cli.models.transfer import forward_flops, freeze, group_parameters, load_pretrained

# Small versions of the bigger models, so that every case runs in a second or two on a CPU.
SMALL = {
    "cnn": {"channels": [8, 16]},
    "unet": {"features": [8, 8, 16, 16, 32, 8]},
    "attention_unet": {"channels": [8, 16, 32], "strides": [2, 2]},
    "transformer": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64, "patch_size": 8},
    "unetr": {"hidden_size": 32, "num_heads": 2, "mlp_dim": 64, "feature_size": 8},
    "swin_unetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4},
    "hybrid": {"channels": [8, 16, 32], "attention_layers": 1, "num_heads": 2},
    **{name: {"channels": [8, 16], "latent_size": 16} for name in ("autoencoder", "vae", "memae")},
    "denoising_autoencoder": {"channels": [8, 16], "latent_size": 16},
    "hybrid_autoencoder": {"channels": [8, 16], "hidden_size": 8, "num_heads": 2, "depth": 1},
    "padim": {"channels": [8, 16], "latent_size": 16, "features": 10},
}
DETECTORS = ("autoencoder", "vae", "memae", "denoising_autoencoder", "hybrid_autoencoder", "padim")
SIZE = {"swin_unetr": 64}  # swin_unetr needs 64 or more per side; 32 for everything else
BACKBONES = ("resnet18", "resnet50", "densenet121", "efficientnet_b0")


def build(name: str, task: str, dims: int, in_channels: int = 1, **overrides) -> tuple[torch.nn.Module, DataInfo]:
    size = (SIZE.get(name, 32),) * dims
    info = DataInfo(task, dims, in_channels, 3, 2, ("a", "b", "c"), image_size=size)
    args = dict(spatial_dims=dims, in_channels=in_channels, num_classes=3, num_seg_classes=2, task=task)
    if "image_size" in inspect.signature(MODELS.get(name)).parameters:
        args["image_size"] = size
    return create_model(name, **args, **{**SMALL.get(name, {}), **overrides}), info


def batch(info: DataInfo, n: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(n, info.in_channels, *info.image_size, generator=generator)
    mask = (image[:, :1] > 0.5).long()
    return {"image": image, "label": torch.tensor([0, 1, 2, 1][:n]), "mask": mask}


def test_every_model_has_a_yaml_and_the_zoo_is_complete():
    expected = {"cnn", "unet", "attention_unet", "unetr", "swin_unetr", "transformer", "hybrid", "dynunet", *BACKBONES}
    expected |= {*DETECTORS, *REGISTRATION, "monai"}
    assert set(model_names()) == expected


REGISTRATION = ("localnet", "voxelmorph", "globalnet")  # pairs in, fields out: tests/test_registration.py
# any MONAI network: tests/test_monai_nets.py
ZOO = [name for name in model_names() if name != "monai" and name not in REGISTRATION]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", ZOO)
def test_every_model_gives_the_right_shapes_and_learns(name, dims):
    torch.manual_seed(0)
    tasks = MODELS.get(name).TASKS
    for task in set(TASKS) - set(tasks):  # the segmentation-only dynunet, the anomaly detectors
        with pytest.raises(ConfigError, match=f"model '{name}' cannot do data.task={task}; it supports"):
            build(name, task, dims)
    for task in tasks:
        model, info = build(name, task, dims)
        out = model(batch(info, 2)["image"])
        expected = ({"class_logits"} if info.classifies else set()) | ({"seg_logits"} if info.segments else set())
        if info.detects:
            expected = {"anomaly_map", "anomaly_score", "sample_loss"}
            expected |= {"reconstruction"} if name != "padim" else set()
            assert out["anomaly_map"].shape == (2, 1, *info.image_size)
            assert out["anomaly_score"].shape == out["sample_loss"].shape == (2,)
        assert set(out) == expected, task
        if info.classifies:
            assert out["class_logits"].shape == (2, 3)
        if info.segments:
            assert out["seg_logits"].shape == (2, 2, *info.image_size)
        groups = group_parameters(model)  # raises unless every parameter is in exactly one group
        assert sum(len(p) for p in groups.values()) == len(list(model.parameters()))
    if getattr(MODELS.get(name), "FITTED", False):  # statistics, no optimisation: tests/test_anomaly.py
        return
    # a few optimisation steps on one multitask (or segmentation) batch lower the loss
    model, info = build(name, "multitask" if "multitask" in tasks else tasks[0], dims)
    losses = training_losses(model, TaskLoss(info), batch(info))
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "task"), [(name, task) for name in ZOO for task in TASKS if task in MODELS.get(name).TASKS]
)
def test_medimg_train_runs_every_model_and_task(name, task, tmp_path):
    size = SIZE.get(name, 32)
    small = [f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in SMALL.get(name, {}).items()]
    cfg = compose_config(
        [*TINY, "trainer.epochs=1", f"model={name}", f"data.task={task}", f"data.image_size={size}", *small]
    )
    summary = train(cfg, tmp_path)
    fitted = getattr(MODELS.get(name), "FITTED", False)  # padim fits statistics: nothing is trained
    assert summary["parameters"] >= summary["trainable_parameters"] > 0 or (fitted and summary["parameters"] > 0)
    assert summary["flops_per_image"] > 0
    assert (tmp_path / "model.md").is_file()
    # the checkpoint alone rebuilds the model (image_size and all) and reproduces the test metrics
    metrics = evaluate_checkpoint(tmp_path / "checkpoints" / "best.pt", "test", "cpu")
    for key in ("loss", "accuracy", "dice"):
        if key in summary["test"]:
            assert metrics[key] == pytest.approx(summary["test"][key], abs=1e-6), key


def test_flops_match_a_hand_count():
    model, _ = build("cnn", "classification", 2, channels=[4])
    # conv 1->4 and 4->4 (3x3, 32x32 outputs) and linear 4->3; a multiply-add is 2 FLOPs, biases not counted
    expected = 2 * (9 * 1 * 4 * 32 * 32 + 9 * 4 * 4 * 32 * 32 + 4 * 3)
    assert forward_flops(model, 1, (32, 32), torch.device("cpu")) == expected


def torchvision_file(tmp_path: Path, arch: str = "resnet18", name: str = "weights.pth") -> tuple[Path, dict]:
    torch.manual_seed(123)
    state = torchvision.models.get_model(arch, weights=None).state_dict()
    path = tmp_path / name
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("in_channels", [1, 2, 3])
def test_local_weights_land_in_the_backbone_tensor_by_tensor(tmp_path, in_channels):
    path, state = torchvision_file(tmp_path)
    model, _ = build("resnet18", "multitask", 2, in_channels=in_channels)
    loaded = load_pretrained(model, "resnet18", str(path), 2)
    own = model.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            assert f"backbone.{key}" not in loaded  # the ImageNet classifier is replaced by a new head
        elif key == "conv1.weight":
            if in_channels == 1:
                torch.testing.assert_close(own["backbone.conv1.weight"], value.sum(dim=1, keepdim=True))
            elif in_channels == 2:  # R, G filters scaled by 3/2
                torch.testing.assert_close(own["backbone.conv1.weight"], value[:, :2] * 1.5)
            else:
                torch.testing.assert_close(own["backbone.conv1.weight"], value)
        else:
            assert torch.equal(own[f"backbone.{key}"], value), key
    assert not any(k.startswith(("head.", "decoder.")) for k in loaded)


def test_grey_adaptation_gives_the_rgb_response_to_a_repeated_image(tmp_path):
    path, _ = torchvision_file(tmp_path)
    rgb = torchvision.models.resnet18()
    rgb.load_state_dict(torch.load(path, weights_only=True))
    grey, _ = build("resnet18", "classification", 2, in_channels=1)
    load_pretrained(grey, "resnet18", str(path), 2)
    image = torch.randn(2, 1, 32, 32)
    rgb.eval(), grey.eval()
    with torch.no_grad():
        expected = rgb.conv1(image.repeat(1, 3, 1, 1))
        torch.testing.assert_close(grey.backbone.conv1(image), expected, atol=1e-5, rtol=1e-5)


def test_imagenet_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    _, state = torchvision_file(tmp_path / "hub" / "checkpoints", name=Path(url).name)
    model, _ = build("resnet18", "classification", 2, in_channels=3)
    load_pretrained(model, "resnet18", "imagenet", 2)
    assert torch.equal(model.state_dict()["backbone.layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_offline_imagenet_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    model, _ = build("densenet121", "classification", 2)
    with pytest.raises(ConfigError, match=r"copy that file to .*hub/checkpoints/densenet121-a639ec97\.pth"):
        load_pretrained(model, "densenet121", "imagenet", 2)


@pytest.mark.parametrize(
    ("name", "dims", "spec", "message"),
    [
        ("cnn", 2, "imagenet", "has no ImageNet weights"),
        ("resnet18", 3, "imagenet", "ImageNet weights are 2D"),
        ("resnet18", 2, "/no/such/file.pth", "no such file"),
    ],
)
def test_bad_pretrained_values_are_one_clear_error(name, dims, spec, message):
    model, _ = build(name, "classification", dims)
    with pytest.raises(ConfigError, match=message):
        load_pretrained(model, name, spec, dims)


def test_a_pickled_object_is_refused_without_suggesting_weights_only_false(tmp_path):
    model, _ = build("cnn", "classification", 2)
    torch.save({"state_dict": model.state_dict(), "note": Path("x")}, tmp_path / "pickled.pth")  # not a plain tensor
    with pytest.raises(ConfigError, match="holds Python objects besides tensors") as error:
        load_pretrained(model, "cnn", str(tmp_path / "pickled.pth"), 2)
    assert "weights_only" not in str(error.value)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"cannot read it \(not a file torch.save wrote\)$"):
        load_pretrained(model, "cnn", str(tmp_path / "text.pth"), 2)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path, _ = torchvision_file(tmp_path)
    model, _ = build("cnn", "classification", 2)
    with pytest.raises(ConfigError, match="none of the .* tensors .* fit"):
        load_pretrained(model, "cnn", str(path), 2)


def test_a_file_that_fits_only_a_few_tensors_is_refused_below_the_threshold(tmp_path):
    model, _ = build("resnet18", "classification", 2)
    state = {k: v for k, v in list(model.state_dict().items())[:10]}  # the stem and a little more
    torch.save(state, tmp_path / "few.pth")
    total = len(model.state_dict())
    with pytest.raises(ConfigError, match=rf"only 10 of the model's {total} tensors fit .*pretrained_min_match=0.5"):
        load_pretrained(model, "resnet18", str(tmp_path / "few.pth"), 2)
    assert len(load_pretrained(model, "resnet18", str(tmp_path / "few.pth"), 2, min_match=0.05)) == 10


def test_frozen_groups_do_not_change_and_the_head_does(tmp_path):
    model, info = build("resnet18", "multitask", 2)
    frozen = freeze(model, "backbone_but_last")
    assert frozen == ["stem", "stage1", "stage2", "stage3"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    data = batch(info)
    loss = TaskLoss(info)(model(data["image"]), data)
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for key in before:
        group_frozen = any(key.startswith(f"backbone.{p}") for p in ("conv1", "bn1", "layer1", "layer2", "layer3"))
        if group_frozen:  # weights and batch-norm statistics alike
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["head.linear.weight"], after["head.linear.weight"])
    assert not torch.equal(before["backbone.layer4.0.conv1.weight"], after["backbone.layer4.0.conv1.weight"])
    assert not torch.equal(before["backbone.layer4.0.bn1.running_mean"], after["backbone.layer4.0.bn1.running_mean"])


@pytest.mark.parametrize(("spec", "message"), [("everything", "unknown model.freeze"), (["stem", "layer9"], "group")])
def test_bad_freeze_values_name_the_choices(spec, message):
    model, _ = build("resnet18", "classification", 2)
    with pytest.raises(ConfigError, match=message):
        freeze(model, spec)


def test_a_transfer_run_writes_the_table_2_summary(tmp_path):
    path, _ = torchvision_file(tmp_path)
    cfg = compose_config(
        [*TINY, "trainer.epochs=1", "model=resnet18", f"model.pretrained={path}", "model.freeze=backbone"]
    )
    summary = train(cfg, tmp_path / "run")
    rows = {row["group"]: row for row in summary["layers"]}
    assert [g for g, r in rows.items() if r["frozen"]] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert rows["stage2"]["pretrained"] == "yes" and rows["head"]["pretrained"] == "no"
    assert summary["trainable_parameters"] == rows["head"]["trained"] + rows["decoder"]["trained"]
    assert all(r["trained"] == 0 for r in rows.values() if r["frozen"])
    table = (tmp_path / "run" / "model.md").read_text()
    assert "| stage2 | yes | frozen |" in table
    assert "| head | no | trained from random init |" in table
    # the frozen backbone left training with the pretrained weights
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    state = torch.load(path, weights_only=True)
    assert torch.equal(best["state_dict"]["backbone.layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])


def test_freezing_everything_is_refused(tmp_path):
    groups = "[stage1,stage2,stage3,head,decoder]"
    cfg = compose_config([*TINY, f"model.freeze={groups}"])
    with pytest.raises(ConfigError, match="freezes every parameter"):
        train(cfg, tmp_path)


def test_swin_unetr_on_too_small_images_says_what_size_it_needs():
    with pytest.raises(ConfigError, match="at least 64"):
        create_model(
            "swin_unetr",
            spatial_dims=2,
            in_channels=1,
            num_classes=3,
            num_seg_classes=2,
            task="segmentation",
            image_size=(32, 32),
        )


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", BACKBONES)
def test_cifar_stem_keeps_more_resolution_for_28_pixel_images(name, dims):
    size = (28,) * dims  # MedMNIST
    args = dict(spatial_dims=dims, in_channels=1, num_classes=3, num_seg_classes=2, task="multitask", stem="cifar")
    if name == "efficientnet_b0" and dims == 3:
        with pytest.raises(ConfigError, match="stem=cifar is not available"):
            create_model(name, **args)
        return
    model = create_model(name, **args).eval()
    x = torch.randn(2, 1, *size)
    assert model(x)["seg_logits"].shape == (2, 2, *size)
    for paths in model.stages:
        for path in paths:
            x = model.backbone.get_submodule(path)(x)
    reduction = 16 if name == "efficientnet_b0" else 8  # the standard stems reduce by 32
    assert x.shape[2:] == (math.ceil(28 / reduction),) * dims or x.shape[2:] == (28 // reduction,) * dims
