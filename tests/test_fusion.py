"""Multi-modal fusion: the phantom's modalities, early/late/attention fusion around the zoo's
models, modality dropout, evaluation with a modality missing, and a two-modality manifest."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import TINY, compose_config, run_cli, write_png
from omegaconf import OmegaConf

from medimg_cli.data import DataInfo, build_data
from medimg_cli.data.phantom import FAINT, VISIBLE, modality_views
from medimg_cli.errors import ConfigError
from medimg_cli.losses import TaskLoss
from medimg_cli.models import create_model
from medimg_cli.models.fusion import Fused, blank_modalities, random_keep
from medimg_cli.models.transfer import group_parameters


def _data(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_config([*TINY, *overrides]).data, resolve=True)


def test_phantom_modalities_show_each_case_s_lesions_in_some_modalities():
    data = build_data(_data("data.modalities=2"))
    image = data.train["image"]
    assert image.shape[1:] == (2, 32, 32) and data.info.modalities == 2 and data.info.in_channels == 2
    assert image.amin(dim=(2, 3)).max() == 0 and image.amax(dim=(2, 3)).min() == 1  # min-max per modality
    assert np.corrcoef(image[:, 0].flatten(), image[:, 1].flatten())[0, 1] > 0.8  # one anatomy
    assert torch.equal(build_data(_data("data.modalities=2")).train["image"], image)
    assert torch.equal(data.train["label"], build_data(_data()).train["label"])  # the same phantoms and split
    alone = build_data(_data("data.modalities=2", "data.keep_modalities=[2]"))
    assert alone.info.modalities == 1 and torch.equal(alone.train["image"][:, 0], image[:, 1])
    # a square lesion of contrast 0.3: each modality shows it at 0.3 or 0.3 x FAINT, independently
    healthy, lesions = np.full((400, 16, 16), 0.4), np.zeros((400, 16, 16))
    lesions[:, 5:11, 5:11] = 0.3
    views = modality_views(healthy + lesions, lesions, 2, seed=0, normalize="none")
    contrast = views[:, :, 6:10, 6:10].mean(axis=(2, 3)) - views[:, :, 12:, 12:].mean(axis=(2, 3))  # (400, 2)
    shown = np.abs(contrast - 0.3) < 0.1  # the noise of two 16-pixel means: sd about 0.02
    faint = np.abs(contrast - 0.3 * FAINT) < 0.1
    assert (shown | faint).all()  # one or the other (a blurred square's centre keeps its contrast)
    assert shown.mean(axis=0) == pytest.approx([VISIBLE, VISIBLE], abs=0.07)
    both = (shown[:, 0] & shown[:, 1]).mean()
    assert both == pytest.approx(VISIBLE**2, abs=0.07)  # independent across modalities


def _model(name: str, fusion: str, task: str = "multitask", dims: int = 2, **extra) -> torch.nn.Module:
    args = {"spatial_dims": dims, "in_channels": 2, "num_classes": 3, "num_seg_classes": 2, "task": task}
    args |= {"fusion": fusion, "modality_dropout": extra.pop("modality_dropout", 0.0), "modalities": 2}
    if name == "transformer":
        args |= {"image_size": (32,) * dims}
    if name == "hybrid":
        args |= {"image_size": (32,) * dims}
    return create_model(name, **args, **extra)


@pytest.mark.parametrize("name", ["cnn", "unet", "transformer", "hybrid"])
@pytest.mark.parametrize("fusion", ["late", "attention"])
def test_late_and_attention_fusion_run_an_encoder_per_modality_and_learn(name, fusion):
    torch.manual_seed(0)
    model = _model(name, fusion)
    assert isinstance(model, Fused) and len(model.branches) == 2
    single = _model(name, "early")  # one network on both channels
    assert sum(p.numel() for p in model.branches[0].parameters()) < sum(p.numel() for p in single.parameters())
    groups = group_parameters(model)  # raises unless every parameter is in exactly one group
    assert sum(len(p) for p in groups.values()) == len(list(model.parameters()))
    image = torch.rand(4, 2, 32, 32)
    batch = {"image": image, "label": torch.tensor([0, 1, 2, 1]), "mask": (image[:, :1] > 0.7).long()}
    out = model(image)
    assert out["class_logits"].shape == (4, 3) and out["seg_logits"].shape == (4, 2, 32, 32)
    loss = TaskLoss(DataInfo("multitask", 2, 2, 3, 2, ("a", "b", "c"), modalities=2))(out, batch)
    loss.backward()
    for branch in model.branches:  # both encoders get gradients
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())


def test_attention_weighs_the_modalities_features_by_a_softmax_of_their_scores():
    model = _model("cnn", "attention", task="classification")
    features = [torch.full((1, 64, 4, 4), 1.0), torch.full((1, 64, 4, 4), 3.0)]
    with torch.no_grad():
        model.score.weight.zero_()
        model.score.bias.zero_()
        assert torch.allclose(model._fuse_features(features), torch.full((1, 64, 4, 4), 2.0))  # equal weights: the mean
        model.score.weight.fill_(0.01)  # scores 0.64 and 1.92: softmax weights by hand
        low, high = np.exp(0.64), np.exp(1.92)
        expected = (1.0 * low + 3.0 * high) / (low + high)
        assert model._fuse_features(features)[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_modality_dropout_blanks_whole_modalities_in_training_only():
    image = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).reshape(2, 4, 3, 3) + 1  # 2 modalities of 2 channels
    blanked = blank_modalities(image, 2, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(blanked[0, :2], image[0, :2]) and (blanked[0, 2:] == 0).all()
    assert (blanked[1, :2] == 0).all() and torch.equal(blanked[1, 2:], image[1, 2:])
    torch.manual_seed(0)
    keep = random_keep(10_000, 2, 0.5, torch.device("cpu"))
    assert keep.sum(dim=1).min() == 1  # never both blanked
    assert keep.mean().item() == pytest.approx((2 * 0.5 + 0.25) / 2, abs=0.02)  # each kept half the time; +1 when none
    model = create_model("cnn", spatial_dims=2, in_channels=2, num_classes=3, num_seg_classes=2,
                         task="classification", fusion="early", modality_dropout=0.5, modalities=2)  # fmt: skip
    model.eval()
    x = torch.rand(3, 2, 32, 32)
    assert torch.equal(model(x)["class_logits"], model(x)["class_logits"])  # no dropout at evaluation


def test_fusion_refusals_name_the_key():
    with pytest.raises(ConfigError, match="model.fusion=late model.modality_dropout=0.0 need several modalities"):
        create_model("cnn", spatial_dims=2, in_channels=1, num_classes=3, num_seg_classes=2, task="classification",
                     fusion="late", modality_dropout=0.0)  # fmt: skip
    with pytest.raises(ConfigError, match="model.fusion"):
        _model("cnn", "middle")
    with pytest.raises(ConfigError, match=r"model.modality_dropout=1.5 must be a probability in \[0, 1\)"):
        _model("cnn", "late", modality_dropout=1.5)


def test_cli_late_fusion_on_the_phantom_and_eval_without_each_modality(tmp_path):
    run = tmp_path / "run"
    done = run_cli(
        "train", "data=phantom", "data.modalities=2", "model=cnn", "model.fusion=late", *TINY,
        f"hydra.run.dir={run}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fusion"] == {"fusion": "late", "modalities": 2, "modality_dropout": 0.0}
    done = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "eval.bootstrap=50", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "accuracy with each modality blanked, in points: modality_1" in " ".join(done.stdout.split())
    with (run / "eval" / "test" / "missing_modality.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert {r["blanked"] for r in rows} == {"modality_1", "modality_2"}
    assert {r["metric"] for r in rows} == {"accuracy", "f1", "auc", "dice", "iou"}
    for row in rows:
        assert float(row["drop"]) == pytest.approx(float(row["all"]) - float(row["without"]))
    accuracy = json.loads((run / "eval" / "test" / "metrics.json").read_text())["metrics"]["accuracy"]["value"]
    assert float(next(r["all"] for r in rows if r["metric"] == "accuracy")) == pytest.approx(accuracy)


def test_a_two_modality_manifest_trains_late_fusion_and_names_its_modalities(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        label = i % 2
        for modality in ("t1", "t2"):  # the finding shows in t2 only
            image = (rng.random((32, 32)) * 80).astype(np.uint8)
            if label and modality == "t2":
                image[8:16, 8:16] = 250
            write_png(tmp_path / modality / f"{i}.png", image)
        rows.append(f"t1/{i}.png,t2/{i}.png,{'lesion' if label else 'normal'}")
    (tmp_path / "manifest.csv").write_text("t1,t2,label\n" + "\n".join(rows) + "\n")
    overrides = [f"data.path={tmp_path / 'manifest.csv'}", "data.modalities=[t1,t2]", "data.image_size=32"]
    data = build_data(OmegaConf.to_container(compose_config(["data=manifest", *overrides]).data, resolve=True))
    assert data.info.modalities == 2 and data.info.modality_names == ("t1", "t2") and data.info.in_channels == 2
    assert data.meta is None or "t2" not in next(iter(data.meta.values()))  # image columns are not metadata
    run = tmp_path / "run"
    done = run_cli(
        "train", "data=manifest", *overrides, "model=cnn", "model.fusion=late", "data.task=classification",
        "trainer.epochs=2", "trainer.batch_size=8", "device=cpu", f"hydra.run.dir={run}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "eval.bootstrap=50", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    with (run / "eval" / "test" / "missing_modality.csv").open() as file:
        assert {r["blanked"] for r in csv.DictReader(file)} == {"t1", "t2"}
