"""The MedMNIST source: official files from shared/data when present, generated files otherwise."""

from __future__ import annotations

import math
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from conftest import check_test_metrics, compose_config, run_cli
from sklearn.metrics import recall_score, roc_auc_score

from medimg_cli.commands import eval as eval_command
from medimg_cli.commands.train import train
from medimg_cli.data import build_data
from medimg_cli.data.medmnist_source import npz_path
from medimg_cli.errors import ConfigError
from medimg_cli.results import read_cases_csv

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
needs_shared = pytest.mark.skipif(
    not (SHARED / "breastmnist.npz").is_file(), reason=f"MedMNIST files not found in {SHARED}"
)


def medmnist_cfg(*overrides: str):
    return compose_config(["data=medmnist", "device=cpu", "trainer.table_every=1", *overrides])


def data_cfg(*overrides: str) -> dict:
    return dict(medmnist_cfg(*overrides).data)


@needs_shared
def test_breastmnist_official_splits_and_labels():
    splits = build_data(data_cfg("data.name=breastmnist", f"data.root={SHARED}", "data.download=false"))
    assert [len(splits.split(s)["image"]) for s in ("train", "val", "test")] == [546, 78, 156]
    assert splits.train["image"].shape[1:] == (1, 28, 28)
    assert 0.0 <= splits.train["image"].min() and splits.train["image"].max() <= 1.0
    assert set(splits.train["label"].unique().tolist()) == {0, 1}
    assert splits.info.class_names == ("malignant", "normal, benign") and splits.info.spatial_dims == 2


@needs_shared
def test_adrenalmnist3d_is_3d():
    splits = build_data(data_cfg("data.name=adrenalmnist3d", f"data.root={SHARED}", "data.download=false"))
    assert [len(splits.split(s)["image"]) for s in ("train", "val", "test")] == [1188, 98, 298]
    assert splits.train["image"].shape[1:] == (1, 28, 28, 28) and splits.info.spatial_dims == 3


@needs_shared
def test_train_breastmnist_and_adrenalmnist3d(tmp_path):
    common = (f"data.root={SHARED}", "data.download=false", "trainer.epochs=2")
    summary = train(medmnist_cfg("data.name=breastmnist", *common), tmp_path / "2d")
    assert summary["data"] == "breastmnist"
    check_test_metrics(tmp_path / "2d", summary["test"])
    summary = train(
        medmnist_cfg("data.name=adrenalmnist3d", *common, "model.channels=[4,8]", "model.decoder_channels=4"),
        tmp_path / "3d",
    )
    assert summary["task"] == "classification"
    check_test_metrics(tmp_path / "3d", summary["test"])


@pytest.mark.slow
@needs_shared
def test_cli_reports_test_auc_and_accuracy(tmp_path):
    result = run_cli(
        "train",
        "data=medmnist",
        "data.name=breastmnist",
        f"data.root={SHARED}",
        "model=cnn",
        "trainer.epochs=2",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    assert "AUC %" in result.stdout and "acc %" in result.stdout and "cnn on breastmnist" in result.stdout


def _write_fake(root: Path, name: str, labels_shape: tuple[int, ...], channels: int = 1) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 10), ("test", 10)):
        shape = (n, 28, 28) + ((3,) if channels == 3 else ())
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, *labels_shape[1:]), dtype=np.uint8)
    np.savez(root / f"{name}.npz", **arrays)


def test_multilabel_chestmnist_trains_with_per_label_metrics(tmp_path):
    _write_fake(tmp_path, "chestmnist", (1, 14))
    summary = train(
        medmnist_cfg("data.name=chestmnist", f"data.root={tmp_path}", "data.download=false", "trainer.epochs=1"),
        tmp_path / "run",
    )
    assert set(summary["test"]) == {"loss", "accuracy", "f1", "auc", "seconds_per_image"}
    # per-label AUC in summary.json against scikit-learn on the run's test_predictions.csv
    cases = read_cases_csv(tmp_path / "run" / "test_predictions.csv")
    labels, probs = cases["label"], cases["probs"]
    names = list(summary["per_label"])
    assert len(names) == 14 and summary["f1_average"] == "macro"
    for k, name in enumerate(names):
        if len(np.unique(labels[:, k])) == 2:
            assert summary["per_label"][name]["auc"] == pytest.approx(
                roc_auc_score(labels[:, k], probs[:, k]), abs=1e-6
            )
        else:
            assert math.isnan(summary["per_label"][name]["auc"] or math.nan)
    # medimg eval evaluates it: each label's metrics with CIs, their macro means
    cfg = compose_config(
        [f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.pt'}", "eval.bootstrap=50"], name="eval"
    )
    document = eval_command.evaluate_checkpoint_cfg(cfg)
    assert set(document["per_label"]) == set(names) and document["threshold"] == 0.5
    for k, name in enumerate(names):
        found = document["per_label"][name]
        if len(np.unique(labels[:, k])) == 2:
            assert found["auc"]["value"] == pytest.approx(roc_auc_score(labels[:, k], probs[:, k]), abs=1e-5)
        assert found["sensitivity"]["value"] == pytest.approx(
            recall_score(labels[:, k], probs[:, k] >= 0.5, zero_division=0)
        )
    assert document["metrics"]["auc"]["value"] == pytest.approx(summary["test"]["auc"], abs=1e-5)


def test_rgb_images_become_channels_first(tmp_path):
    _write_fake(tmp_path, "pathmnist", (1, 1), channels=3)
    splits = build_data(data_cfg("data.name=pathmnist", f"data.root={tmp_path}", "data.download=false"))
    assert splits.train["image"].shape[1:] == (3, 28, 28) and splits.info.num_classes == 9


def test_file_names_follow_the_official_release():
    assert npz_path("/d", "pathmnist", 28) == Path("/d/pathmnist.npz")
    assert npz_path("/d", "organmnist3d", 64) == Path("/d/organmnist3d_64.npz")
    with pytest.raises(ConfigError, match="unknown data.size '32'"):
        npz_path("/d", "pathmnist", 32)


def test_missing_file_offline_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=f"{tmp_path}/breastmnist.npz is missing; download https://"):
        build_data(data_cfg("data.name=breastmnist", f"data.root={tmp_path}", "data.download=false"))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    with pytest.raises(ConfigError, match="cannot be downloaded .*point data.root at a folder with breastmnist.npz"):
        build_data(data_cfg("data.name=breastmnist", f"data.root={tmp_path}"))


def test_bad_names_tasks_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(
        ConfigError, match="unknown MedMNIST dataset data.name 'breastmnst'.*Did you mean 'breastmnist'"
    ):
        build_data(data_cfg("data.name=breastmnst", f"data.root={tmp_path}"))
    with pytest.raises(ConfigError, match="use data.task=classification"):
        build_data(data_cfg("data.name=breastmnist", "data.task=segmentation", f"data.root={tmp_path}"))
    (tmp_path / "breastmnist.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="is not a readable MedMNIST .npz file"):
        build_data(data_cfg("data.name=breastmnist", f"data.root={tmp_path}", "data.download=false"))


@needs_shared
def test_grayscale_as_three_channels_for_imagenet_backbones():
    splits = build_data(data_cfg("data.name=breastmnist", f"data.root={SHARED}", "data.channels=3"))
    image = splits.train["image"]
    assert image.shape[1:] == (3, 28, 28) and splits.info.in_channels == 3
    assert torch.equal(image[:, 0], image[:, 2])


@needs_shared
def test_upsample_repeats_each_pixel_as_medmnist_v2_224_does():
    common = ("data.name=breastmnist", f"data.root={SHARED}", "data.download=false")
    small = build_data(data_cfg(*common))
    large = build_data(data_cfg(*common, "data.upsample=56"))
    assert large.train["image"].shape[1:] == (1, 56, 56) and large.info.image_size == (56, 56)
    # nearest neighbour at exactly 2x: every 2x2 block is one original pixel
    assert torch.equal(large.test["image"][:, :, ::2, ::2], small.test["image"])
    assert torch.equal(large.test["image"][:, :, 1::2, 1::2], small.test["image"])
    with pytest.raises(ConfigError, match="data.upsample=14 must be null or a size >= data.size"):
        build_data(data_cfg(*common, "data.upsample=14"))


@pytest.mark.parametrize(
    "labels, message",
    [(np.full((40, 1), 0.5), "labels must be whole numbers"), (np.full((40, 1), 5), "label 5 is outside 0..1")],
    ids=["fractional", "out_of_range"],
)
def test_labels_that_would_be_truncated_or_out_of_range_are_refused(tmp_path, labels, message):
    _write_fake(tmp_path, "breastmnist", (1, 1))
    arrays = dict(np.load(tmp_path / "breastmnist.npz"))
    np.savez(tmp_path / "breastmnist.npz", **(arrays | {"train_labels": labels}))
    with pytest.raises(ConfigError, match=f"breastmnist.npz: train_labels: {message}"):
        build_data(data_cfg("data.name=breastmnist", f"data.root={tmp_path}", "data.download=false"))


def test_nan_pixels_in_an_npz_are_refused(tmp_path):
    _write_fake(tmp_path, "breastmnist", (1, 1))
    arrays = dict(np.load(tmp_path / "breastmnist.npz"))
    images = arrays["val_images"].astype(np.float32)
    images[0, 3, 3] = np.nan
    np.savez(tmp_path / "breastmnist.npz", **(arrays | {"val_images": images}))
    with pytest.raises(ConfigError, match="breastmnist.npz: val_images has NaN or infinite pixels"):
        build_data(data_cfg("data.name=breastmnist", f"data.root={tmp_path}", "data.download=false"))
