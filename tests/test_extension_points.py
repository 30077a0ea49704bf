"""Extension points fail loudly: a transform that would never run, a data key the cache would
ignore, a module nobody imports, and the keys a resume may change versus those a benchmark ignores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

import medimg_cli
from medimg_cli.augment import TRANSFORMS, build_augment
from medimg_cli.augment.geometric import GeometricTransform, _eye
from medimg_cli.benchmark.grid import _without_ignored
from medimg_cli.data import DataInfo
from medimg_cli.data.cache import NOT_DECODING_KEYS, cache_key
from medimg_cli.errors import ConfigError
from medimg_cli.models.transfer import group_parameters
from medimg_cli.resume import NEUTRAL_KEYS, RESUMABLE_KEYS, neutral, resumable

CONF = Path(medimg_cli.__file__).parent / "conf"


def test_a_geometric_transform_without_a_place_in_the_stage_is_refused():
    class Shear(GeometricTransform):
        def draw(self, batch, shape, device):
            matrix = _eye(batch, len(shape), device)
            matrix[:, 0, 1] = 0.5
            return matrix, {"applied": torch.ones(batch, dtype=torch.bool)}

    TRANSFORMS.register("shear")(Shear)
    try:
        info = DataInfo("segmentation", 2, 1, 0, 2, ())
        with pytest.raises(TypeError, match="shear have no place in GeometricStage.ORDER"):
            build_augment({"name": "sheared", "shear": {"prob": 1.0}}, info)
    finally:
        TRANSFORMS._items.pop("shear")


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, 1]
    return f"{value}-changed"


@pytest.mark.parametrize("source", sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
def test_every_data_key_but_the_split_ones_changes_the_cache_key(source, tmp_path):
    cfg = OmegaConf.to_container(compose_config([f"data={source}"]).data)
    files = [tmp_path / "a.png"]
    files[0].write_bytes(b"x")
    key = cache_key(cfg, files)
    for name, value in cfg.items():
        changed = cache_key({**cfg, name: _changed(value)}, files)
        assert (changed == key) == (name in NOT_DECODING_KEYS), f"data.{name}"


def test_a_new_model_or_source_module_is_found_without_being_listed(tmp_path):
    """A copy of the package with one new model file and one new source file: both work by name."""
    package = tmp_path / "medimg_cli"
    shutil.copytree(Path(medimg_cli.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "models" / "tiny.py").write_text(
        "from torch import nn\nfrom medimg_cli.models import MODELS\n\n\n"
        "@MODELS.register('tiny')\nclass Tiny(nn.Module):\n    TASKS = ('classification',)\n\n"
        "    def __init__(self, task='classification'):\n        super().__init__()\n"
    )
    (package / "data" / "toy_source.py").write_text(
        "from medimg_cli.data import SOURCES\n\n\n@SOURCES.register('toy')\ndef toy(cfg):\n    return 'toy splits'\n"
    )
    script = (
        "from medimg_cli.models import create_model\nfrom medimg_cli.data import build_data\n"
        "print(type(create_model('tiny', task='classification')).__name__)\n"
        "try:\n    build_data({'source': 'toy', 'task': 'classification'})\n"
        "except AttributeError:\n    print('toy source called')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["Tiny", "toy", "source", "called"], result.stderr[-2000:]


PLUGIN = """
import math
import torch
from torch import nn
from medimg_cli.data import DataInfo, Splits


class TinyMLP(nn.Module):  # no layer_groups(): one group
    TASKS = ("classification",)

    def __init__(self, spatial_dims, in_channels, num_classes, num_seg_classes, task, image_size, hidden=16):
        super().__init__()
        width = in_channels * math.prod(image_size)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, image):
        return {"class_logits": self.body(image)}


def stripes(cfg):  # class 1: a bright row
    labels = torch.arange(90) % 2
    images = torch.rand(90, 1, 8, 8, generator=torch.Generator().manual_seed(cfg["seed"])) * 0.5
    images[labels == 1, 0, 3] += 1.0
    parts = {"train": slice(0, 60), "val": slice(60, 75), "test": slice(75, 90)}
    splits = {name: {"image": images[part], "label": labels[part]} for name, part in parts.items()}
    return Splits(**splits, info=DataInfo("classification", 2, 1, 2, 0, ("plain", "striped")), fingerprint="stripes")
"""


def test_an_installed_package_s_model_and_source_train_and_evaluate(tmp_path):
    (tmp_path / "medimg_plugin_demo").mkdir()
    (tmp_path / "medimg_plugin_demo" / "__init__.py").write_text(PLUGIN)
    info = tmp_path / "medimg_plugin_demo-0.1.dist-info"  # what pip install writes: the entry points
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medimg-plugin-demo\nVersion: 0.1\n")
    points = "[medimg.models]\ntiny_mlp = medimg_plugin_demo:TinyMLP\n\n"
    (info / "entry_points.txt").write_text(points + "[medimg.sources]\nstripes = medimg_plugin_demo:stripes\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = tmp_path / "run"
    train = ["model=plugin", "model.name=tiny_mlp", "+model.hidden=8", "data=plugin", "data.source=stripes"]
    train += ["data.name=stripes", "trainer.epochs=3", "device=cpu", f"hydra.run.dir={run}"]
    for argv in (["train", *train], ["eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "eval.bootstrap=50"]):
        result = subprocess.run([sys.executable, "-m", "medimg_cli", *argv], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "tiny_mlp" and summary["layers"][0]["group"] == "model"
    document = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert document["metrics"]["accuracy"]["value"] == pytest.approx(summary["test"]["accuracy"], abs=1e-6)


def test_a_parameter_in_no_layer_group_is_named_with_the_fix():
    class Forgetful(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)

        def layer_groups(self):
            return {"encoder": ["encoder"]}

    with pytest.raises(ConfigError, match=r"Forgetful.layer_groups\(\) puts parameter head.weight in no layer group"):
        group_parameters(Forgetful())
    del Forgetful.layer_groups  # without layer_groups() the model is one group
    assert list(group_parameters(Forgetful())) == ["model"]


def test_keys_a_benchmark_ignores_are_resumable_and_come_from_one_place():
    assert set(NEUTRAL_KEYS) < set(RESUMABLE_KEYS)
    assert all(resumable(k) and neutral(k) for k in NEUTRAL_KEYS)
    assert not neutral("trainer.epochs") and resumable("trainer.epochs") and neutral("tracking.mlflow")
    config = OmegaConf.to_container(compose_config(), resolve=True)
    kept = _without_ignored(config)
    assert "tracking" not in kept and "resume" not in kept["trainer"] and "table_every" not in kept["trainer"]
    assert kept["trainer"]["epochs"] == config["trainer"]["epochs"] and kept["device"] == config["device"]
