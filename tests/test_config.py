"""Every config option composes and builds; bad values give one clear ConfigError."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

import medimg_cli
from medimg_cli.augment import RECIPE_KEYS, TRANSFORMS, build_augment
from medimg_cli.config import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, check_numbers, resolve_device
from medimg_cli.data import SOURCES, DataInfo, source_modules
from medimg_cli.errors import ConfigError
from medimg_cli.losses import SEGMENTATION_LOSSES
from medimg_cli.models import create_model, model_names
from medimg_cli.registration_losses import REGISTRATION_LOSSES

CONF = Path(medimg_cli.__file__).parent / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "registry"),
    [
        ("model", model_names()),
        ("optim", OPTIMIZERS.names()),
        ("loss", sorted([*SEGMENTATION_LOSSES.names(), *REGISTRATION_LOSSES.names()])),
        ("data", None),
    ],
)
def test_yaml_stem_name_and_registry_key_agree(group, registry):
    if group == "data":
        for module in source_modules().values():
            importlib.import_module(f"medimg_cli.data.{module}")
        registry = SOURCES.names()
        assert sorted(source_modules()) == registry
    key = "source" if group == "data" else "name"  # data.name is the dataset (e.g. breastmnist)
    own = [o for o in options(group) if o != "plugin"]  # plugin.yaml: an installed package's, named on the command line
    for option in own:
        assert OmegaConf.load(CONF / group / f"{option}.yaml")[key] == option
    assert own == registry


@pytest.mark.parametrize("optim", options("optim"))
def test_every_optimizer_builds(optim):
    cfg = compose_config([f"optim={optim}"])
    opt = build_optimizer(OmegaConf.to_container(cfg.optim), [torch.nn.Parameter(torch.zeros(2))])
    assert opt.param_groups[0]["lr"] == cfg.optim.lr


@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_schedule_builds_and_names_its_file(scheduler):
    cfg = compose_config([f"scheduler={scheduler}"])
    assert cfg.scheduler.name == scheduler and (scheduler == "none") == (scheduler not in SCHEDULERS)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    schedule = build_scheduler(OmegaConf.to_container(cfg.scheduler), optimizer, epochs=100)
    if schedule is None:
        return
    for _ in range(80):
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] < 1.0  # multistep: after 50 and 75; cosine: from epoch 1
    with pytest.raises(ConfigError, match="is not an argument of"):
        build_scheduler({"name": scheduler, "gamm": 0.1}, optimizer, 10)


def test_every_augment_recipe_is_named_by_its_stem_and_holds_only_transforms():
    for option in options("augment"):
        recipe = OmegaConf.load(CONF / "augment" / f"{option}.yaml")
        assert recipe.name == option
        assert set(recipe) - set(RECIPE_KEYS) <= set(TRANSFORMS.names()), option


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=abc", "optim.lr='abc' must be a number"),
        ("optim.lr=0", "optim.lr=0 must be > 0"),
        ("trainer.epochs=1.5", "trainer.epochs=1.5 must be an integer"),
        ("trainer.batch_size=0", "trainer.batch_size=0 must be >= 1"),
        ("seed=true", "seed=True must be an integer"),
        ("data.binary=maybe", "data.binary='maybe' must be true or false"),
        ("scheduler=multistep scheduler.gamma=0", "scheduler.gamma=0 must be > 0"),
        ("tracking.images=-1", "tracking.images=-1 must be >= 0"),
        ("tracking.image_every=0", "tracking.image_every=0 must be >= 1"),
        ("trainer.batch_size=auto2", "trainer.batch_size='auto2' must be an integer"),
    ],
)
def test_bad_numbers_name_the_key_and_an_example(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        check_numbers(compose_config(override.split()))


def test_unknown_model_argument_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="model.chanels is not an argument of model 'cnn'.*Did you mean 'channels'"):
        create_model(
            "cnn", spatial_dims=2, in_channels=1, num_classes=2, num_seg_classes=2, task="classification", chanels=[4]
        )


def test_unknown_model_name_suggests_the_closest():
    valid = re.escape(", ".join(model_names()))
    with pytest.raises(ConfigError, match=f"unknown model 'unte'. Valid: {valid}. Did you mean 'unet'"):
        create_model("unte", task="classification")


@pytest.mark.parametrize("spec", ["tpu", "cuda:abc"])
def test_bad_devices_are_rejected(spec):
    with pytest.raises(ConfigError, match="device="):
        resolve_device(spec)


def test_auto_device_is_available():
    device = resolve_device("auto")
    assert torch.zeros(1, device=device).device.type == device.type


def test_unknown_optimizer_and_recipe_arguments_are_named():
    with pytest.raises(ConfigError, match="optim.momentum is not an argument of Adam"):
        build_optimizer({"name": "adam", "lr": 0.1, "momentum": 0.9}, [torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(
        ConfigError, match="augment.flip.prb is not an argument of transform 'flip'. Valid: prob, axes. Did you mean"
    ):
        build_augment({"name": "flip", "flip": {"prb": 0.5}}, DataInfo("classification", 2, 1, 2, 2, ("a", "b")))
